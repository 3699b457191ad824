"""The `prolora` command.

    prolora train [CONFIG] [--set key=value ...] [--steps N] [--seed S] [--run-dir DIR] [--resume RUN_DIR]
    prolora bench [CONFIG] [--set key=value ...] [--rounds N] [--steps N] [--out FILE]

With no CONFIG a command uses the built-in default (the tiny warm-started model on 3-digit addition). CONFIG is a
file path or the name of a packaged preset (grpo, dr_grpo, dapo, prorl: launch/configs/<name>.yaml). Errors the
user can fix (a bad config key, a missing file, a used run directory, an unknown reward) print one message naming
what is wrong, with no traceback, and exit with status 2.

Each subcommand is a pair of functions: `_<name>_args(parser)` declares its arguments and `_<name>(args)` runs
it; `COMMANDS` lists them. Heavy imports (ray, torch, vllm) happen inside the run functions, so argument and
config errors are reported in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from shared.config import ConfigError, load_config
from shared.errors import UserError

PRESETS_DIR = Path(__file__).parent / "configs"


def presets() -> list[str]:
    """Names of the packaged presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config(config: str | None) -> Path | None:
    """An existing file is used as is; otherwise a bare name picks the packaged preset of that name."""
    if config is None or Path(config).exists():
        return None if config is None else Path(config)
    preset = PRESETS_DIR / f"{config}.yaml"
    if Path(config).name == config and preset.is_file():
        return preset
    raise ConfigError(f"config {config!r} is neither a file nor a preset; presets: {', '.join(presets())}")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?",
        help=f"experiment file (YAML or TOML) or a preset name ({', '.join(presets())}); default: the built-in run",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field by its dotted name, e.g. --set train.lr=1e-3 (repeatable)",
    )


def _train_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument("--steps", type=int, help="shorthand for --set run.steps=N")
    parser.add_argument("--seed", type=int, help="shorthand for --set run.seed=S")
    parser.add_argument("--run-dir", help="shorthand for --set run.run_dir=DIR")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue RUN_DIR from its last good checkpoint (its config.yaml unless CONFIG is given)")


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for key, value in (("run.steps", args.steps), ("run.seed", args.seed), ("run.run_dir", args.run_dir)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.resume:
        overrides.append(f"run.run_dir={args.resume}")
    config_path = resolve_config(args.config) if args.config else args.resume and Path(args.resume, "config.yaml")
    config = load_config(config_path, overrides)

    from launch.driver import train
    from launch.runstate import RunStopped

    try:
        result = train(config, resume=bool(args.resume))
    except RunStopped as stop:
        print(f"prolora: {stop}", file=sys.stderr)
        return stop.exit_code
    first, last = result.first_eval, result.last_eval
    print(f"held-out pass@1: {first.pass_at_1:.3f} -> {last.pass_at_1:.3f} "
          f"({100 * (last.pass_at_1 - first.pass_at_1):+.1f} points); "
          f"pass@{last.k}: {first.pass_at_k:.3f} -> {last.pass_at_k:.3f}")
    print(f"run directory: {result.run_dir}")
    return 0


def _bench_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument("--rounds", type=int, default=5, help="timed generation rounds per engine")
    parser.add_argument("--steps", type=int, default=10, help="training steps for the hot-load share")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON figures")


def _bench(args: argparse.Namespace) -> int:
    from launch.bench import run_bench

    run_bench(load_config(resolve_config(args.config), args.overrides), Path(args.out), args.rounds, args.steps)
    return 0


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "train": ("run GRPO training", _train_args, _train),
    "bench": ("rollout throughput vs raw vLLM, and hot-load share of step time", _bench_args, _bench),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prolora", description="Prolonged GRPO on LoRA adapters.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except UserError as err:
        print(f"prolora: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
