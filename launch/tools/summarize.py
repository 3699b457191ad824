"""Summarise finished runs for side-by-side reading: run health per window of steps, evaluations, resets, prompts.

    python -m launch.tools.summarize RUN_DIR [RUN_DIR ...] [--window 100]

For each run: the mean of reward, entropy, KL, zero-std fraction, clip fractions and dropped fraction over each
window of steps, with the reference resets that fell in it; every held-out evaluation; and, from
prompt_history.jsonl, how per-prompt pass rates moved between a prompt's first and last visit (ProRL's view of
where RL expands what the model solves).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from shared.metrics import read_metrics

COLUMNS = ("reward_mean", "entropy", "kl", "zero_std_frac", "clip_frac_low", "clip_frac_high", "dropped_frac")


def _mean(values: list) -> float:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else float("nan")


def window_table(steps: list[dict], window: int) -> list[str]:
    lines = ["steps        " + " ".join(f"{c:>14}" for c in COLUMNS) + "  resets"]
    for start in range(0, len(steps), window):
        chunk = steps[start : start + window]
        resets = [f"{r['step']}:{r['ref_reset_cause']}" for r in chunk if r.get("ref_reset")]
        means = " ".join(f"{_mean([r.get(c) for r in chunk]):>14.4f}" for c in COLUMNS)
        lines.append(f"{chunk[0]['step']:>5}-{chunk[-1]['step']:<6} {means}  {' '.join(resets)}")
    return lines


def prompt_summary(path: Path) -> str:
    if not path.is_file():
        return "no prompt_history.jsonl"
    rates: dict[str, list[float]] = defaultdict(list)
    retired = 0
    for line in path.read_text().splitlines():
        visit = json.loads(line)
        retired += visit["retired"]
        if visit["samples"]:
            rates[visit["prompt"]].append(visit["passes"] / visit["samples"])
    again = [r for r in rates.values() if len(r) > 1]
    up = sum(r[-1] > r[0] for r in again)
    down = sum(r[-1] < r[0] for r in again)
    never = sum(r[0] == 0 for r in again)
    unlocked = sum(r[0] == 0 and r[-1] > 0 for r in again)
    return (
        f"{len(rates)} prompts visited, {len(again)} more than once: pass rate up on {up}, down on {down}; "
        f"{unlocked} of {never} first seen unsolved in every sample were later solved; {retired} retired"
    )


def summarize(run_dir: Path, window: int) -> str:
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if not r.get("eval")]
    evals = [r for r in records if r.get("eval")]
    lines = [f"== {run_dir} ({len(steps)} steps)", *window_table(steps, window), "held-out evaluations:"]
    for e in evals:
        rest = "  ".join(f"{k} {v:.3f}" for k, v in e.items() if k.startswith("pass@"))
        lines.append(f"  step {e['step']:>5}  {rest}")
    lines.append(prompt_summary(run_dir / "prompt_history.jsonl"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.tools.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--window", type=int, default=100, help="steps per row of the health table")
    args = parser.parse_args(argv)
    print("\n\n".join(summarize(d, args.window) for d in args.run_dirs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
