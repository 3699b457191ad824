"""The reward-hacking section of `prolora report`: when each signature fired, its evidence, and completions.

Reads the `hacking/*` figures the run wrote into metrics.jsonl (shared/hacking.py computed them during the run)
and, for the first step at which each signature fired, the best-rewarded completions of that step from the rollouts
Parquet files: what the policy was being paid for at that moment is usually plain once it is read. A run written
before the watch existed has no `hacking/*` keys and gets no section.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from shared.hacking import SIGNATURES, HackingSignals, describe
from shared.step_record import HACKING_PREFIX

FIRED = HACKING_PREFIX + "fired"
EXAMPLES = 3
"""Completions shown per signature."""
EXAMPLE_CHARS = 400

SERIES = {
    "length_growth": "length growth",
    "reward_growth": "reward growth",
    "repetition_rise": "repetition rise",
    "entropy_ratio": "entropy / start",
    "heldout_delta": "held-out pass@1 change",
}
"""The evidence figures drawn in the plot, with their labels."""


def signals_of(record: dict) -> HackingSignals:
    values = {k.removeprefix(HACKING_PREFIX): v for k, v in record.items() if k.startswith(HACKING_PREFIX)}
    return HackingSignals(**{**values, "fired": tuple(values.get("fired") or ())})


def fired_steps(steps: list[dict]) -> dict[str, list[int]]:
    """{signature: the steps at which it held}, for the signatures that fired at least once."""
    out: dict[str, list[int]] = {}
    for record in steps:
        for name in record.get(FIRED) or ():
            out.setdefault(name, []).append(record["step"])
    return {name: out[name] for name in SIGNATURES if name in out}


def draw(steps: list[dict], fired: dict[str, list[int]], path: Path) -> None:
    """The evidence figures against the step, with a mark on the x axis at every step where a signature held."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=110)
    for i, (key, label) in enumerate(SERIES.items()):
        points = [(r["step"], r.get(HACKING_PREFIX + key)) for r in steps]
        points = [(s, v) for s, v in points if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), color=f"C{i}", label=label, marker="o" if len(points) < 30 else None)
    for j, (name, at) in enumerate(fired.items()):
        ax.plot(at, [0.0] * len(at), linestyle="none", marker="x", color=f"C{j + 5}", label=f"{name} fired")
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_title("Reward-hacking watch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("evidence (fractions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def examples(run_dir: Path, step: int) -> list[dict]:
    """The best-rewarded completions of `step` from its rollouts file (empty when the run kept none)."""
    path = run_dir / "rollouts" / f"step_{step:06d}.parquet"  # shared/metrics.py write_rollouts
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=["completion", "completion_token_ids", "reward"]).to_pylist()
    rows.sort(key=lambda r: -1e300 if r["reward"] is None else r["reward"], reverse=True)
    return rows[:EXAMPLES]


def section(run_dir: Path, records: list[dict], plot_path: Path) -> tuple[str, Path | None]:
    """The HTML of the section and the plot it drew (None when it drew none); empty for runs without the watch."""
    steps = [r for r in records if not r.get("eval") and "reward_mean" in r]
    if not any(FIRED in r for r in steps):
        return "", None
    fired = fired_steps(steps)
    if not fired:
        return f"<h2>Reward-hacking watch</h2><p>No signature fired in {len(steps)} steps.</p>", None
    draw(steps, fired, plot_path)
    by_step = {r["step"]: r for r in steps}
    rows, blocks = [], []
    for name, at in fired.items():
        evidence = describe(HackingSignals(**{**signals_of(by_step[at[0]]).__dict__, "fired": (name,)}))
        rows.append(
            f"<tr><td>{name}</td><td>{len(at)}</td><td>{at[0]}</td><td>{at[-1]}</td>"
            f"<td>{html.escape(evidence)}</td></tr>"
        )
        shown = "".join(
            f"<li>reward {_fmt(e['reward'])}, {len(e['completion_token_ids'])} tokens: "
            f"<code>{html.escape(e['completion'][:EXAMPLE_CHARS])}</code></li>"
            for e in examples(run_dir, at[0])
        )
        blocks.append(f"<h3>{name}: best-rewarded completions at step {at[0]}</h3><ul>{shown or '(no rollouts)'}</ul>")
    table = (
        "<table><tr><th>signature</th><th>steps</th><th>first</th><th>last</th><th>evidence at first</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    image = f'<img alt="hacking" src="data:image/png;base64,{base64.b64encode(plot_path.read_bytes()).decode()}">'
    return "<h2>Reward-hacking watch</h2>" + table + image + "".join(blocks), plot_path


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
