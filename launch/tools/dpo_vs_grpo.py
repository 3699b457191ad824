"""`python -m launch.tools.dpo_vs_grpo`: DPO on base-model preference pairs against GRPO, same updates, same prompts.

The seed's claim is that DPO is the cheap offline alternative to RL. This measures it on the config's model and task:
1. `make_pairs` samples the base model on `--prompts` training prompts and keeps the prompts with both a right and a
   wrong answer, as (prompt, chosen, rejected, answer) rows (launch/tools/make_pairs.py);
2. two runs of `prolora train` on that one file, identical but for `algo.objective`: GRPO trains on its prompts and
   answers (rollouts scored by the rewards), DPO on its pairs. Same seed, same rows and `rollout.prompts_per_step`
   give both runs the same prompts in the same order; `--steps` updates each (one optimizer step per step unless the
   config sets train.epochs / train.minibatches, the same for both);
3. held-out pass@1 (greedy) and pass@k (eval.k, default 8) of both runs at every evaluation (eval.every), printed as
   one table and written to OUT/table.md with the command that made it.

    python -m launch.tools.dpo_vs_grpo [CONFIG] [--set key=value ...] --steps 20 --out runs/dpo_vs_grpo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

OBJECTIVES = ("grpo", "dpo")


def eval_curve(metrics: Path) -> dict[int, dict]:
    """step -> the evaluation record of that step, from a run's metrics.jsonl."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in records if r.get("eval")}


def table(curves: dict[str, dict[int, dict]], k: int) -> str:
    """Markdown table: one row per evaluated step, pass@1 and pass@k of each objective."""
    steps = sorted(set().union(*(c.keys() for c in curves.values())))
    head = "| step | " + " | ".join(f"{o.upper()} pass@1 | {o.upper()} pass@{k}" for o in curves) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(curves))]
    for step in steps:
        cells = []
        for curve in curves.values():
            r = curve.get(step)
            cells += [f"{r['pass@1']:.3f}", f"{r[f'pass@{k}']:.3f}"] if r else ["-", "-"]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def train_run(objective: str, config: str | None, overrides: list[str], steps: int, run_dir: Path) -> None:
    """One `prolora train` in its own process (its own Ray), stopping this tool if it fails."""
    sets = [*overrides, f"algo.objective={objective}"]
    cmd = [sys.executable, "-m", "launch.cli", "train", *([config] if config else []), "--steps", str(steps)]
    cmd += ["--run-dir", str(run_dir), *(a for s in sets for a in ("--set", s))]
    print(f"[dpo_vs_grpo] {objective}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, text=True)
    if proc.returncode:
        raise SystemExit(f"the {objective} run failed (exit {proc.returncode}); its logs are in {run_dir}/logs")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.tools.dpo_vs_grpo", description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", help="config file or preset (default: the built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=20, help="updates of each run")
    p.add_argument("--out", required=True, help="directory for pairs.jsonl, the two runs and table.md")
    p.add_argument("--prompts", type=int, default=256, help="training prompts sampled for pairs")
    p.add_argument("--samples", type=int, default=8, help="base-model samples per prompt")
    return p


def main(argv: list[str] | None = None) -> None:
    from launch.cli import resolve_config
    from launch.tools.make_pairs import make_pairs, write_pairs
    from shared.config import load_config

    args = parser().parse_args(argv)
    out = Path(args.out)
    config = load_config(resolve_config(args.config) if args.config else None, args.overrides)
    pairs, sampled = make_pairs(config, args.prompts, args.samples)
    if not pairs:
        raise SystemExit(f"no prompt of {sampled} had both a right and a wrong sample: nothing to compare on")
    write_pairs(pairs, out / "pairs.jsonl")
    print(f"[dpo_vs_grpo] {len(pairs)} pairs from {sampled} prompts: {out / 'pairs.jsonl'}", flush=True)
    overrides = [*args.overrides, f"task.train_file={(out / 'pairs.jsonl').resolve()}"]
    for objective in OBJECTIVES:
        train_run(objective, args.config, overrides, args.steps, out / objective)
    curves = {o: eval_curve(out / o / "metrics.jsonl") for o in OBJECTIVES}
    command = "python -m launch.tools.dpo_vs_grpo " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        f"{table(curves, config.eval.k)}\n\n{len(pairs)} pairs from {sampled} prompts x {args.samples} base-model "
        f"samples; {args.steps} updates each on the same prompts; held-out {config.eval.size} prompts, pass@"
        f"{config.eval.k} from {config.eval.n_samples} samples.\n\n    {command}\n"
    )
    print(text)
    (out / "table.md").write_text(text)


if __name__ == "__main__":
    main()
