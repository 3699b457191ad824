"""Does training only the subnetwork RL moves work as well as LoRA? Three runs at equal steps on the same task.

    python -m launch.tools.subnet_compare [CONFIG] --steps N [--pick-top 0.2] [--full-lr 2e-4] [--set k=v ...]
                                          [--out DIR]

1. `lora`: LoRA on all linear layers (the config's lora section as it is). It is also the pilot run.
2. `picked`: the modules `prolora inspect PILOT --pick-top F` picks from the pilot's last adapter (largest update
   relative to the weight), trained full rank (lora.mode=full).
3. `random`: as many randomly chosen linear modules as fill the same number of weights without exceeding it (seeded
   by run.seed), trained full rank.

Every run is the real `prolora train` (its own process, same seed, prompts and steps). Full-rank runs take
`--full-lr` (weights move per unit of learning rate far more than LoRA factors do). Prints, and writes to
OUT/subnet_compare.json: trainable parameters, mean reward over the last quarter of the steps, and held-out pass@1
before and after.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from launch.tools.inspect import BaseWeights, pick_top, run_inspect
from learner.update_map import ModuleUpdate
from shared.config import load_config
from shared.metrics import read_metrics


def lora_parameters(shapes: dict[str, tuple[int, int]], rank: int) -> int:
    """Trainable parameters of rank-`rank` LoRA on modules with these (out, in) weight shapes: r·(in + out) each."""
    return sum(rank * (o + i) for o, i in shapes.values())


def random_modules(rows: list[ModuleUpdate], budget: int, seed: int) -> list[str]:
    """Modules drawn in a seeded random order, each kept when it still fits in `budget` weights; in model order."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    chosen, used = set(), 0
    for row in order:
        if used + row.entries <= budget:
            chosen.add(row.name)
            used += row.entries
    return [r.name for r in rows if r.name in chosen]


def train(run_dir: Path, config: str | None, steps: int, overrides: list[str]) -> None:
    args = [sys.executable, "-m", "launch.cli", "train", *([config] if config else [])]
    args += ["--steps", str(steps), "--run-dir", str(run_dir), "--set", f"log.save_adapter_every={steps}"]
    for override in overrides:
        args += ["--set", override]
    print(f"[subnet_compare] {run_dir.name}: {' '.join(args[3:])}", flush=True)
    subprocess.run(args, check=True)


def summarise(run_dir: Path, trainable: int, modules: int) -> dict:
    records = read_metrics(run_dir / "metrics.jsonl")
    evals = [r for r in records if r.get("eval")]
    steps = [r for r in records if not r.get("eval")]
    tail = steps[-max(1, len(steps) // 4) :]
    return {
        "run_dir": str(run_dir),
        "modules": modules,
        "trainable": trainable,
        "reward_last_quarter": sum(r["reward_mean"] for r in tail) / len(tail),
        "pass@1_before": evals[0]["pass@1"],
        "pass@1_after": evals[-1]["pass@1"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pick-top", type=float, default=0.2)
    parser.add_argument("--full-lr", type=float, default=2e-4)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="runs/subnet_compare")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(args.config, args.overrides)

    train(out / "lora", args.config, args.steps, args.overrides)
    update_map = json.loads(run_inspect(out / "lora", None, out / "lora", args.pick_top).read_text())
    rows = [ModuleUpdate(**m) for m in update_map["checkpoints"][-1]["modules"]]
    from launch.rundir import resolve_model_path

    base = BaseWeights(Path(resolve_model_path(config.model.path)))
    shapes = {r.name: (r.entries // base[f"{r.name}.weight"].shape[1], base[f"{r.name}.weight"].shape[1]) for r in rows}
    picked = pick_top(rows, args.pick_top)
    size = sum(r.entries for r in rows if r.name in picked)
    arms = {"picked": picked, "random": random_modules(rows, size, config.run.seed)}
    results = {"lora": summarise(out / "lora", lora_parameters(shapes, config.lora.rank), len(rows))}
    for name, modules in arms.items():
        full = [
            *args.overrides,
            "lora.mode=full",
            f"lora.target_modules={json.dumps(modules)}",
            f"train.lr={args.full_lr}",
        ]
        train(out / name, args.config, args.steps, full)
        results[name] = summarise(out / name, sum(r.entries for r in rows if r.name in modules), len(modules))
        results[name]["target_modules"] = modules
    (out / "subnet_compare.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'arm':<8}{'modules':>8}{'trainable':>11}{'reward(last 1/4)':>18}{'pass@1 before':>15}{'after':>8}")
    for name, r in results.items():
        print(
            f"{name:<8}{r['modules']:>8}{r['trainable']:>11,}{r['reward_last_quarter']:>18.3f}"
            f"{r['pass@1_before']:>15.3f}{r['pass@1_after']:>8.3f}"
        )
    print(f"\n{out / 'subnet_compare.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
