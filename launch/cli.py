"""The `prolora` command.

    prolora train [CONFIG] [--set key=value ...] [--steps N] [--seed S] [--run-dir DIR]
    prolora bench [CONFIG] [--set key=value ...] [--rounds N] [--steps N] [--out FILE]

With no CONFIG it trains the built-in default (the tiny warm-started model on 3-digit addition). Errors the user
can fix (a bad config key, a missing file, a used run directory) print one line naming what is wrong, with no
traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from shared.config import load_config
from shared.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prolora", description="Prolonged GRPO on LoRA adapters.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run GRPO training")
    train.add_argument("config", nargs="?", help="experiment file (YAML or TOML); default: the built-in run")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field by its dotted name, e.g. --set train.lr=1e-3 (repeatable)")
    train.add_argument("--steps", type=int, help="shorthand for --set run.steps=N")
    train.add_argument("--seed", type=int, help="shorthand for --set run.seed=S")
    train.add_argument("--run-dir", help="shorthand for --set run.run_dir=DIR")
    bench = commands.add_parser("bench", help="measure rollout throughput vs raw vLLM and hot-load share")
    bench.add_argument("config", nargs="?", help="experiment file; default: the built-in run")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    bench.add_argument("--rounds", type=int, default=5, help="timed generation rounds per engine")
    bench.add_argument("--steps", type=int, default=10, help="training steps for the hot-load share")
    bench.add_argument("--out", default="bench.json", help="where to write the JSON figures")
    return parser


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from launch.bench import run_bench

    run_bench(load_config(args.config, args.overrides), Path(args.out), args.rounds, args.steps)
    return 0


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for key, value in (("run.steps", args.steps), ("run.seed", args.seed), ("run.run_dir", args.run_dir)):
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)

    from launch.driver import train  # heavy imports (ray, torch) only once the config is known to be valid

    result = train(config)
    first, last = result.first_eval, result.last_eval
    print(f"held-out pass@1: {first.pass_at_1:.3f} -> {last.pass_at_1:.3f} "
          f"({100 * (last.pass_at_1 - first.pass_at_1):+.1f} points); "
          f"pass@{last.k}: {first.pass_at_k:.3f} -> {last.pass_at_k:.3f}")
    print(f"run directory: {result.run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "bench":
            return _bench(args)
    except UserError as err:
        print(f"prolora: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
