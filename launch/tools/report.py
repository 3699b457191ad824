"""`prolora report RUN_DIR`: PNG plots of a run's metrics and one self-contained HTML page.

Reads only the run directory (metrics.jsonl, config.yaml, and eval_*.json tables written by `prolora eval`), so it
works on a finished run, a running one, or one copied off a cluster. Every plot is against the GRPO step and marks
the steps where the reference policy was reset (`ref_reset` in a step record; runs without resets have none).
Panels whose metrics a run does not have are left out rather than drawn empty. Long runs are noisy, so past
`SMOOTH_FROM` points each line is drawn faint with a moving average on top.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import UserError
from shared.metrics import read_metrics
from shared.step_record import json_keys

STEP_KEYS = json_keys()

SMOOTH_FROM = 50


@dataclass(frozen=True)
class Series:
    label: str
    steps: list[int]
    values: list[float]


@dataclass(frozen=True)
class Panel:
    name: str
    """File stem of the PNG."""
    title: str
    ylabel: str
    series: Callable[[list[dict], list[dict]], list[Series]]
    """(step records, eval records) -> the lines to draw."""
    fraction: bool = False
    """Values are fractions: the y axis starts at 0 and never goes past 1."""


def _key(records: list[dict], key: str, label: str | None = None) -> list[Series]:
    if not any(r.get(key) is not None for r in records):
        return []
    return [Series(label or key, [r["step"] for r in records], [_num(r.get(key)) for r in records])]


def _step_key(name: str) -> str:
    """A step-record key the report reads, checked against `StepRecord` so a renamed field fails loudly here."""
    if name not in STEP_KEYS:
        raise KeyError(f"{name!r} is not a step-record key (shared/step_record.py)")
    return name


def _steps(records: list[dict], key: str, label: str | None = None) -> list[Series]:
    return _key(records, _step_key(key), label)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _reward(steps: list[dict], _: list[dict]) -> list[Series]:
    components = sorted({k for r in steps for k in r if k.startswith("reward/")})
    # A lone reward of weight 1 equals the total; drawing it again would hide the total under it.
    same = [c for c in components if all(r.get(c) == r.get("reward_mean") for r in steps)]
    label = f"total (= {same[0].removeprefix('reward/')})" if len(components) == 1 and same else "total (weighted)"
    lines = _steps(steps, "reward_mean", label)
    return lines + [s for c in components if c not in same for s in _key(steps, c, c.removeprefix("reward/"))]


def _heldout(_: list[dict], evals: list[dict]) -> list[Series]:
    ks = sorted({k for r in evals for k in r if k.startswith("pass@")}, key=lambda k: int(k.removeprefix("pass@")))
    return [s for k in ks for s in _key(evals, k)]


def _throughput(steps: list[dict], _: list[dict]) -> list[Series]:
    tokens, gen_s, step_s = _step_key("gen_tokens"), _step_key("gen_s"), _step_key("step_s")
    if not steps or tokens not in steps[0]:
        return []
    xs = [r["step"] for r in steps]
    return [
        Series("rollout generation", xs, [r[tokens] / max(r[gen_s], 1e-9) for r in steps]),
        Series("whole step", xs, [r[tokens] / max(r[step_s], 1e-9) for r in steps]),
    ]


PANELS = [
    Panel("reward", "Reward and its components", "mean reward per completion", _reward),
    Panel("heldout", "Held-out pass@k", "pass@k", _heldout, fraction=True),
    Panel("kl", "KL(policy || reference)", "mean per-token KL", lambda s, _: _steps(s, "kl")),
    Panel("entropy", "Policy entropy", "mean per-token entropy (nats)", lambda s, _: _steps(s, "entropy")),
    Panel(
        "response_length",
        "Response length",
        "mean tokens per completion",
        lambda s, _: _steps(s, "response_len_mean", "mean length"),
    ),
    Panel("throughput", "Throughput", "generated tokens / s", _throughput),
    Panel(
        "hotload",
        "Adapter hot-load latency",
        "ms to load into every worker",
        lambda s, _: _steps(s, "sync_ms", "hot-load"),
    ),
]


def _moving_average(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else float("nan"))
    return out


def _draw(panel: Panel, lines: list[Series], resets: list[int], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=110)
    for i, line in enumerate(lines):
        color = f"C{i}"
        if len(line.values) >= SMOOTH_FROM:
            ax.plot(line.steps, line.values, color=color, alpha=0.25, linewidth=0.8)
            window = max(2, len(line.values) // 20)
            ax.plot(line.steps, _moving_average(line.values, window), color=color, label=f"{line.label} (avg)")
        else:
            marker = "o" if len(line.values) < 30 else None
            ax.plot(line.steps, line.values, color=color, label=line.label, marker=marker, markersize=3)
    for j, step in enumerate(resets):
        ax.axvline(step, color="0.4", linestyle="--", linewidth=1, label="reference reset" if j == 0 else None)
    if panel.fraction:
        top = max((v for line in lines for v in line.values if not math.isnan(v)), default=1.0)
        top = min(1.02, top * 1.15 + 0.01)
        ax.set_ylim(-0.02 * top, top)
    ax.set_title(panel.title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers, even on a 2-step run
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(records: list[dict], out_dir: Path) -> list[tuple[Panel, Path]]:
    """Draw every panel the records have data for into out_dir/<panel>.png."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    steps = [r for r in records if not r.get("eval")]
    evals = [r for r in records if r.get("eval")]
    resets = [r["step"] for r in steps if r.get("ref_reset")]
    written = []
    for panel in PANELS:
        lines = panel.series(steps, evals)
        if lines:
            path = out_dir / f"{panel.name}.png"
            _draw(panel, lines, resets, path)
            written.append((panel, path))
    return written


def _summary_rows(records: list[dict]) -> list[tuple[str, str]]:
    steps = [r for r in records if not r.get("eval")]
    evals = [r for r in records if r.get("eval")]
    rows = [("steps", str(len(steps)))]
    if steps:
        rows.append(
            (
                "reward (first -> last step)",
                f"{_fmt(steps[0].get('reward_mean'))} -> {_fmt(steps[-1].get('reward_mean'))}",
            )
        )
        rows.append(("reference resets", str(sum(bool(r.get("ref_reset")) for r in steps))))
    for key in sorted({k for r in evals for k in r if k.startswith("pass@")}):
        rows.append(
            (f"held-out {key} (first -> last eval)", f"{_fmt(evals[0].get(key))} -> {_fmt(evals[-1].get(key))}")
        )
    return rows


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _eval_tables(run_dir: Path) -> str:
    parts = []
    for path in sorted(run_dir.glob("eval_*.json")):
        table = json.loads(path.read_text())
        ks = table["k"]
        head = "".join(f"<th>pass@{k}</th>" for k in ks)
        body = "".join(
            f"<tr><td>{html.escape(row['model'])}</td>"
            + "".join(f"<td>{row['pass_at_k'][str(k)]:.3f}</td>" for k in ks)
            + "</tr>"
            for row in table["rows"]
        )
        parts.append(
            f"<h3>{html.escape(path.name)} ({table['split']}, n={table['n']}, "
            f"{table['n_prompts']} prompts)</h3><table><tr><th>model</th>{head}</tr>{body}</table>"
        )
    return "\n".join(parts)


def write_html(run_dir: Path, records: list[dict], plots: list[tuple[Panel, Path]], path: Path) -> None:
    """One page, no external files: images inline as base64, the config as text."""
    summary = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _summary_rows(records))
    images = "\n".join(
        f'<h2>{html.escape(p.title)}</h2><img alt="{p.name}" '
        f'src="data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}">'
        for p, f in plots
    )
    config_path = run_dir / "config.yaml"
    config = config_path.read_text() if config_path.is_file() else "(no config.yaml)"
    evals = _eval_tables(run_dir)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>prolora report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
pre{{background:#f5f5f5;padding:1em;overflow:auto}}</style></head><body>
<h1>prolora report: {html.escape(run_dir.name)}</h1>
<p>{html.escape(str(run_dir))}</p>
<table>{summary}</table>
{("<h2>pass@k evaluations</h2>" + evals) if evals else ""}
{images}
<h2>Config</h2><pre>{html.escape(config)}</pre>
</body></html>
"""
    path.write_text(page, encoding="utf-8")


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write the plots and report.html for `run_dir` (default into run_dir/report); returns the HTML path."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    records = read_metrics(metrics)
    out_dir = out_dir or run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(records, out_dir)
    page = out_dir / "report.html"
    write_html(run_dir, records, plots, page)
    return page
