"""`prolora report RUN_DIR`: PNG plots of a run's metrics and one self-contained HTML page.

Reads the run directory (metrics.jsonl, config.yaml, and eval_*.json tables written by `prolora eval`), so it
works on a finished run, a running one, or one copied off a cluster. When the run saved adapters, a section shows
where they move the base model (`prolora inspect`'s measures, launch/tools/inspect.py) as heat maps: layer x module
for the last adapter, and module x saved adapter over the run; it needs the base model (config.yaml `model.path`)
and says so in the page when that is not found. Every plot is against the GRPO step and marks
the steps where the reference policy was reset (`ref_reset` in a step record; runs without resets have none).
Panels whose metrics a run does not have are left out rather than drawn empty. Long runs are noisy, so past
`SMOOTH_FROM` points each line is drawn faint with a moving average on top. When the reward-hacking watch fired
during the run, a section near the top shows when, with what evidence, and the completions it was paying for
(report_hacking.py).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from launch.tools import report_hacking
from shared.errors import UserError
from shared.metrics import read_metrics
from shared.records import is_saved_update
from shared.step_record import json_keys

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from launch.tools.inspect import Inspection
    from learner.update_map import ModuleUpdate

STEP_KEYS = json_keys()

SMOOTH_FROM = 50

MAX_ROW_LABELS = 80
"""Row labels of a module x adapter heat map; past this, the figure stops growing and labels are thinned."""


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


def _heatmap(ax: Axes, values: list[list[float]], rows: list[str], cols: list[str], title: str) -> None:
    import numpy as np

    image = ax.imshow(np.array(values, dtype=float), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _save(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _layer_heatmaps(rows: list[ModuleUpdate], last: str, path: Path) -> Path:
    """Layer x module heat maps of the last adapter's three measures."""
    import matplotlib.pyplot as plt

    from launch.tools.inspect import module_titles

    titles = module_titles(rows)
    layers = sorted({r.layer for r in rows}, key=lambda x: -1 if x is None else x)
    cells = {(r.layer, r.module): r for r in rows}
    fig, axes = plt.subplots(1, 3, figsize=(13, 1.5 + 0.3 * len(layers)), dpi=110)
    for ax, measure in zip(axes, ("relative_norm", "bf16_changed", "effective_rank"), strict=True):
        values = [[_cell(cells.get((layer, m)), measure) for m in titles] for layer in layers]
        labels = ["-" if x is None else str(x) for x in layers]
        _heatmap(ax, values, labels, list(titles.values()), f"{measure} ({last})")
        ax.set_ylabel("layer")
    return _save(fig, path)


def _cell(row: ModuleUpdate | None, measure: str) -> float:
    return float("nan") if row is None else getattr(row, measure)


def _step_heatmaps(inspection: Inspection, path: Path) -> Path:
    """Module x saved adapter heat maps (relative norm, bf16 changed): how the update grows over the run."""
    import matplotlib.pyplot as plt

    result = inspection.result
    names = [n for n, _, _ in inspection.adapters]
    cols = [n if v is None else str(v) for n, _, v in inspection.adapters]
    modules = list(dict.fromkeys(r.name for n in names for r in result.checkpoints[n]))
    by_name = {n: {r.name: r for r in result.checkpoints[n]} for n in names}
    # A large model has hundreds of modules: the figure stops growing and only every n-th row is labelled.
    every = max(1, len(modules) // MAX_ROW_LABELS)
    labels = [_module_label(m) if i % every == 0 else "" for i, m in enumerate(modules)]
    height = min(1.5 + 0.18 * len(modules), 1.5 + 0.18 * MAX_ROW_LABELS)
    fig, axes = plt.subplots(1, 2, figsize=(11, height), dpi=110)
    for ax, measure in zip(axes, ("relative_norm", "bf16_changed"), strict=True):
        values = [[_cell(by_name[n].get(m), measure) for n in names] for m in modules]
        _heatmap(ax, values, labels, cols, f"{measure} over the run")
        ax.set_xlabel("saved adapter (version)")
    return _save(fig, path)


def _module_label(name: str) -> str:
    from learner.update_map import split_module_name

    layer, module = split_module_name(name)
    return module if layer is None else f"L{layer} {module}"


def update_map_section(run_dir: Path, out_dir: Path) -> str:
    """The HTML of the update-map section ('' when the run saved no adapters)."""
    adapters = run_dir / "adapters"
    if not adapters.is_dir() or not any(is_saved_update(p) for p in adapters.iterdir()):
        return ""
    from launch.tools.inspect import MEASURES, inspect_run, summary_lines, to_json

    try:
        inspection = inspect_run(run_dir)
    except UserError as err:
        return f"<h2>Where the updates sit</h2><p>not drawn: {html.escape(str(err))}</p>"
    last = inspection.adapters[-1][0]
    images = [_layer_heatmaps(inspection.result.checkpoints[last], last, out_dir / "update_map_layers.png")]
    if len(inspection.adapters) > 1:
        images.append(_step_heatmaps(inspection, out_dir / "update_map_steps.png"))
    table = html.escape("\n".join(summary_lines(to_json(inspection))))
    measures = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in MEASURES.items())
    return (
        f"<h2>Where the updates sit</h2><p>Base model {html.escape(inspection.base_model)}; the full table: "
        f"<code>prolora inspect {html.escape(str(run_dir))}</code>.</p><ul>{measures}</ul>"
        + "".join(f'<img alt="{p.stem}" src="data:image/png;base64,{_b64(p)}">' for p in images)
        + f"<pre>{table}</pre>"
    )


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_html(
    run_dir: Path,
    records: list[dict],
    plots: list[tuple[Panel, Path]],
    path: Path,
    extra: str = "",
    hacking: str = "",
) -> None:
    """One page, no external files: images inline as base64, the config as text; `extra` is HTML put after the
    plots, `hacking` the reward-hacking section (report_hacking.py) put before them."""
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
{hacking}
{images}
{extra}
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
    hacking, _ = report_hacking.section(run_dir, records, out_dir / "hacking.png")
    page = out_dir / "report.html"
    write_html(run_dir, records, plots, page, update_map_section(run_dir, out_dir), hacking)
    return page
