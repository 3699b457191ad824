"""The `prolora` command.

    prolora train [CONFIG] [--set key=value ...] [--steps N] [--seed S] [--run-dir DIR] [--resume RUN_DIR] [--verbose]
    prolora bench [CONFIG] [--set key=value ...] [--size default|large|real|learner] [--quick] [--rounds N] [--steps N]
                  [--out FILE]
    prolora submit [CONFIG] [--address URL] [--set ...] [--steps N] [--seed S] [--run-dir DIR] [--resume RUN_DIR]
    prolora jobs [--address URL]
    prolora logs JOB [--address URL] [--follow]
    prolora stop JOB [--address URL]
    prolora report RUN_DIR [--out DIR]
    prolora inspect RUN_DIR [--adapter NAME ...] [--out DIR] [--pick-top F]
    prolora eval (RUN_DIR | ADAPTER_DIR) [--k 1,8,64] [--n N] [--split heldout] [--prompts P] [--set ...]
    prolora score [CONFIG] [--set key=value ...] --input FILE.jsonl [--reward NAME[=WEIGHT][,...]]
    prolora doctor --gpu [--sleep] [--quantization int8|nf4]

The cluster commands take the dashboard address from --address or RAY_ADDRESS; the Ray auth token comes from the
environment or the token file (see launch/cluster.py), never from the command line.

With no CONFIG a command uses the built-in default (the tiny warm-started model on 3-digit addition). CONFIG is a
file path or the name of a packaged preset (grpo, dr_grpo, dapo, prorl, translate, korean_qa, one_gpu,
translate_ko_en: launch/configs/<name>.yaml).
Errors the user can fix (a bad config key, a missing file, a used run directory, an unknown reward) print one message
naming what is wrong, with no traceback, and exit with status 2.

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
        "config",
        nargs="?",
        help=f"experiment file (YAML or TOML) or a preset name ({', '.join(presets())}); default: the built-in run",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by its dotted name, e.g. --set train.lr=1e-3 (repeatable)",
    )


def _train_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument("--steps", type=int, help="shorthand for --set run.steps=N")
    parser.add_argument("--seed", type=int, help="shorthand for --set run.seed=S")
    parser.add_argument("--run-dir", help="shorthand for --set run.run_dir=DIR")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="shorthand for --set log.verbose=true: print vLLM, Ray and library logs too (else in RUN_DIR/logs/)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last good checkpoint (its config.yaml unless CONFIG is given)",
    )


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """--set overrides plus the --steps/--seed/--run-dir shorthands."""
    overrides = list(args.overrides)
    for key, value in (("run.steps", args.steps), ("run.seed", args.seed), ("run.run_dir", args.run_dir)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.resume:
        overrides.append(f"run.run_dir={args.resume}")
    if args.verbose:
        overrides.append("log.verbose=true")
    return overrides


def _train_config_path(args: argparse.Namespace) -> Path | None:
    """CONFIG as a file or preset name; with --resume and no CONFIG, the run's own config.yaml."""
    return resolve_config(args.config) if args.config else args.resume and Path(args.resume, "config.yaml")


def _train(args: argparse.Namespace) -> int:
    config = load_config(_train_config_path(args), _train_overrides(args))
    if not config.log.verbose:
        from launch.progress import quiet_libraries

        quiet_libraries()  # before transformers and datasets are imported

    from launch.checkpoint import RunStopped
    from launch.driver import train

    try:
        result = train(config, resume=bool(args.resume))
    except RunStopped as stop:
        print(f"prolora: {stop}", file=sys.stderr)
        return stop.exit_code
    first, last = result.first_eval, result.last_eval
    print(
        f"held-out pass@1: {first.pass_at_1:.3f} -> {last.pass_at_1:.3f} "
        f"({100 * (last.pass_at_1 - first.pass_at_1):+.1f} points); "
        f"pass@{last.k}: {first.pass_at_k:.3f} -> {last.pass_at_k:.3f}"
    )
    for name, value in last.task_metrics.items():
        before = first.task_metrics[name]
        print(f"held-out {name}: {before:.2f} -> {value:.2f} ({value - before:+.2f})")
    print(f"run directory: {result.run_dir.resolve()}")
    return 0


def _bench_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument(
        "--size",
        choices=["default", "large", "real", "learner"],
        default="default",
        help="default: the built-in tiny model; large: a ~25M-parameter model, 128-token completions; real: the "
        "adapter hot-load at Qwen2.5-1.5B's shapes (random weights, rank-32 adapter; launch/tools/bench_real.py); "
        "learner: the learner's memory per token and tokens/s on 64 x 512 tokens with a 151,936-token vocabulary, "
        "beside TRL's GRPOTrainer on the same batch (launch/tools/bench_learner.py)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run for CI (4 prompts, 3 steps, 3 rounds)")
    parser.add_argument("--rounds", type=int, help="timed generation rounds per engine (default 5; quick 3)")
    parser.add_argument("--steps", type=int, help="training steps of each training row (default 10; quick 3)")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON figures")


def _bench(args: argparse.Namespace) -> int:
    from launch.tools.bench import QUICK_ROUNDS, QUICK_STEPS, bench_overrides, run_bench

    config_file = resolve_config(args.config)
    if args.size == "learner":
        from launch.tools.bench_learner import run as run_learner_bench

        run_learner_bench([64], 512, args.overrides, out=args.out)
        return 0
    if args.size == "real":
        from launch.tools.bench_real import REAL_OVERRIDES, run_real_bench

        config = load_config(config_file, [*REAL_OVERRIDES, *args.overrides])
        run_real_bench(config, Path(args.out), steps=args.steps or (1 if args.quick else 2))
        return 0
    task = load_config(config_file, args.overrides).task.name
    config = load_config(config_file, [*bench_overrides(args.size, args.quick, task), *args.overrides])
    steps = args.steps or (QUICK_STEPS if args.quick else 10)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else 5)
    run_bench(config, Path(args.out), size=args.size, steps=steps, rounds=rounds)
    return 0


def _address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")


def _submit_args(parser: argparse.ArgumentParser) -> None:
    _train_args(parser)
    _address_arg(parser)
    parser.add_argument(
        "--no-resource-check",
        action="store_true",
        help="submit even if the cluster lacks the resources now (autoscaling clusters)",
    )


def _submit(args: argparse.Namespace) -> int:
    overrides = _train_overrides(args)
    config_file = resolve_config(args.config)
    # A bad key fails here, before anything is uploaded. A run to --resume lives on the cluster, so its own
    # config.yaml is read there; here the overrides are checked against CONFIG (or the default).
    config = load_config(config_file, overrides)

    from launch.cluster import resolve_address, submit

    job_id = submit(
        config, config_file, overrides, args.address, resume=args.resume, check_resources=not args.no_resource_check
    )
    address = resolve_address(args.address)
    print(f"submitted job {job_id} to {address}")
    print(f"  follow it:  prolora logs {job_id} --follow --address {address}")
    print(f"  status:     prolora jobs --address {address}")
    print(f"  stop it:    prolora stop {job_id} --address {address}")
    if not (config.run.run_dir and Path(config.run.run_dir).is_absolute()):
        print(
            "  note: the run directory will be inside the job's working directory on the node that runs it (the "
            "log's last line names it), which Ray may clean up; pass --run-dir /absolute/path to keep it"
        )
    return 0


def _jobs_args(parser: argparse.ArgumentParser) -> None:
    _address_arg(parser)


def _jobs(args: argparse.Namespace) -> int:
    from launch.cluster import print_jobs

    print_jobs(args.address)
    return 0


def _logs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job id printed by `prolora submit`")
    _address_arg(parser)
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")


def _logs(args: argparse.Namespace) -> int:
    from launch.cluster import print_logs

    status = print_logs(args.address, args.job, args.follow)
    if args.follow:
        print(f"job {args.job}: {status}", file=sys.stderr)
        return 0 if status == "SUCCEEDED" else 1
    return 0


def _stop_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job id printed by `prolora submit`")
    _address_arg(parser)


def _stop(args: argparse.Namespace) -> int:
    from launch.cluster import stop

    print(f"job {args.job}: {stop(args.address, args.job)}")
    return 0


def _report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--out", help="where to write the plots and report.html (default: RUN_DIR/report)")


def _report(args: argparse.Namespace) -> int:
    from launch.tools.report import write_report

    page = write_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(f"report: {page}")
    return 0


def _inspect_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (config.yaml and adapters/)")
    parser.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        metavar="NAME",
        help="adapters/<NAME> to measure, in this order (repeatable); default: every step_* copy, then final",
    )
    parser.add_argument("--out", help="where to write update_map.json (default: RUN_DIR)")
    parser.add_argument(
        "--pick-top",
        type=float,
        metavar="F",
        help="also write OUT/subnetwork.yaml: the fraction F of modules with the largest relative update, to train "
        "full rank (lora.mode=full)",
    )


def _inspect(args: argparse.Namespace) -> int:
    from launch.tools.inspect import run_inspect

    run_inspect(Path(args.run_dir), args.adapters, Path(args.out) if args.out else None, args.pick_top)
    return 0


def _eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a run directory, or one adapter directory (adapter_config.json inside)")
    parser.add_argument("--k", default="1,8,64", help="comma-separated k values of pass@k (default 1,8,64)")
    parser.add_argument("--n", type=int, help="samples per prompt (>= the largest k; default: the largest k)")
    parser.add_argument("--split", default="heldout", choices=["heldout", "train"], help="which prompts")
    parser.add_argument("--prompts", type=int, help="number of prompts (default: eval.size of the config)")
    parser.add_argument(
        "--adapters",
        default="final",
        help="for a run directory: comma-separated adapters/<name> to compare, or 'all' "
        "(every saved step and final); default final",
    )
    parser.add_argument(
        "--out",
        help="where to write the JSON table (default: RUN_DIR/eval_<split>.json, or "
        "eval_<split>.json beside an adapter)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the run's config, e.g. --set eval.temperature=0.7 (repeatable)",
    )


def _eval(args: argparse.Namespace) -> int:
    from launch.progress import driver_output_to, log_dir, quiet_libraries
    from launch.tools.passk import EvalRequest, run_eval

    request = EvalRequest.from_args(
        args.target, args.k, args.n, args.split, args.prompts, args.adapters, args.out, args.overrides
    )
    if not request.config.log.verbose:
        quiet_libraries()
        print(f"engine and Ray logs: {log_dir(request.out.parent)}/ (--set log.verbose=true shows them)")
    with driver_output_to(request.out.parent, request.config.log.verbose):
        run_eval(request)
    return 0


def _score_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument("--input", required=True, help="JSONL file: prompt, completion and the columns rewards read")
    parser.add_argument(
        "--reward",
        help="rewards to apply, NAME[=WEIGHT][,NAME[=WEIGHT]...] (built-in or module:function); "
        "default: the config's rewards.functions",
    )


def _score(args: argparse.Namespace) -> int:
    from launch.tools.score import parse_reward_arg, score_file

    config = load_config(resolve_config(args.config), args.overrides)
    specs = parse_reward_arg(args.reward) if args.reward is not None else list(config.rewards.functions)
    score_file(config, specs, Path(args.input))
    return 0


def _doctor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpu",
        action="store_true",
        required=True,
        help="check the GPU path: a short real run on the built-in model with engine and learner on one GPU",
    )
    parser.add_argument("--sleep", action="store_true", help="with vLLM sleep mode (rollout.sleep_level=1)")
    parser.add_argument(
        "--quantization",
        choices=["none", "int8", "nf4"],
        default="none",
        help="with the learner's base quantized (model.quantization): bitsandbytes' and torchao's CUDA kernels, and "
        "the engine serving int8 as its codes (vLLM's torchao method)",
    )


def _doctor(args: argparse.Namespace) -> int:
    from launch.tools.doctor import doctor_gpu

    return doctor_gpu(sleep=args.sleep, quantization=args.quantization)


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "train": ("run GRPO training", _train_args, _train),
    "bench": ("raw vLLM, rollout workers, sync and async training and TRL on the same work", _bench_args, _bench),
    "submit": ("submit a training run to a Ray cluster as a job", _submit_args, _submit),
    "jobs": ("list the cluster's jobs", _jobs_args, _jobs),
    "logs": ("print (or follow) a job's logs", _logs_args, _logs),
    "stop": ("stop a job", _stop_args, _stop),
    "report": ("plots and an HTML page of a run's metrics", _report_args, _report),
    "inspect": ("where the run's LoRA updates move the base model, per layer and module", _inspect_args, _inspect),
    "eval": ("pass@k table of the base model and a run's adapters", _eval_args, _eval),
    "score": ("score a JSONL file of completions with rewards, one JSON line per row", _score_args, _score),
    "doctor": ("check that the GPU path works on this machine (a short real run)", _doctor_args, _doctor),
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
