"""`prolora bench`: rollout throughput through the rollout worker actor against raw `vllm.LLM.generate`, and
hot-load latency as a share of step time, measured in one process on the same model, prompts and sampling.

1. raw: a `vllm.LLM` built with exactly the rollout worker's engine arguments, in this process;
2. rollout: one RolloutWorker Ray actor, called the way the driver calls it (Ray round trip included);
3. train: a short real training run; `sync_share` = mean(sync_ms) / mean(step_s) over its steps.
Both engines generate with the base model (no adapter), after one warm-up round. Figures are printed and written
as JSON; nothing here asserts a target.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from shared.config import Config
from shared.metrics import read_metrics
from shared.records import SamplingSpec
from shared.tasks import get_task


def _raw_vllm(model_path: str, config: Config, prompts: list[str], sampling: SamplingSpec, rounds: int) -> float:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.rollout.kv_cache_gib))
    from vllm import LLM, SamplingParams

    from rollout.worker import engine_args

    llm = LLM(**engine_args(
        model_path, dtype=config.model.dtype, max_model_len=config.model.max_model_len,
        max_lora_rank=config.lora.rank, max_loras=config.rollout.max_loras,
        gpu_memory_utilization=config.rollout.gpu_memory_utilization, seed=config.run.seed,
    ))
    params = [
        SamplingParams(n=sampling.n, temperature=sampling.temperature, max_tokens=sampling.max_tokens,
                       seed=sampling.seed + i, logprobs=0)
        for i in range(len(prompts))
    ]
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    tokens, start = 0, time.perf_counter()
    for _ in range(rounds):
        outputs = llm.generate(prompts, params, use_tqdm=False)
        tokens += sum(len(c.token_ids) for o in outputs for c in o.outputs)
    elapsed = time.perf_counter() - start
    del llm
    gc.collect()
    return tokens / elapsed


def _rollout_actor(model_path: str, config: Config, prompts: list[str], sampling: SamplingSpec, rounds: int) -> float:
    import ray

    from launch.actors import start_ray, start_rollout_workers
    from launch.fleet import RolloutFleet

    start_ray(config)
    workers = start_rollout_workers(config.model_copy(update={"rollout": config.rollout.model_copy(
        update={"num_workers": 1})}), model_path)
    fleet = RolloutFleet(workers)
    fleet.generate(prompts, sampling)  # warm-up (and waits for the engine)
    tokens, start = 0, time.perf_counter()
    for _ in range(rounds):
        groups = fleet.generate(prompts, sampling)
        tokens += sum(len(c.token_ids) for g in groups for c in g.completions)
    elapsed = time.perf_counter() - start
    for w in workers:
        ray.kill(w)
    return tokens / elapsed


def _train_share(config: Config, steps: int) -> dict:
    from launch.driver import train

    with tempfile.TemporaryDirectory(prefix="prolora-bench-") as tmp:
        run_config = config.model_copy(update={
            "run": config.run.model_copy(update={"steps": steps, "run_dir": f"{tmp}/run"}),
            "eval": config.eval.model_copy(update={"size": 16, "every": 0}),
        })
        train(run_config)
        records = [r for r in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if not r.get("eval")]
    records = records[1:] or records  # the first step pays one-off warm-up costs
    mean = lambda key: sum(r[key] for r in records) / len(records)  # noqa: E731
    return {"step_s": mean("step_s"), "gen_s": mean("gen_s"), "train_s": mean("train_s"), "sync_ms": mean("sync_ms")}


def run_bench(config: Config, out: Path, rounds: int = 5, steps: int = 10) -> dict:
    """Measure and print the figures; write them as JSON to `out`."""
    from launch.rundir import resolve_model_path

    model_path = resolve_model_path(config.model.path)
    rows = get_task(config.task.name).train_rows(config.rollout.prompts_per_step, config.run.seed)
    prompts = [r["prompt"] for r in rows]
    r = config.rollout
    sampling = SamplingSpec(n=r.group_size, max_tokens=r.max_new_tokens, temperature=r.temperature, seed=1)
    raw = _raw_vllm(model_path, config, prompts, sampling, rounds)
    actor = _rollout_actor(model_path, config, prompts, sampling, rounds)
    share = _train_share(config, steps)
    result = {
        "raw_vllm_tok_s": raw,
        "rollout_tok_s": actor,
        "rollout_vs_vllm": actor / raw,
        **{f"train_{k}": v for k, v in share.items()},
        "sync_share": share["sync_ms"] / 1e3 / share["step_s"],
        "model_path": model_path,
        "prompts": len(prompts), "group_size": r.group_size, "max_new_tokens": r.max_new_tokens, "rounds": rounds,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"raw vllm.LLM.generate  {raw:10.0f} tok/s")
    print(f"rollout worker actor   {actor:10.0f} tok/s   rollout_vs_vllm = {result['rollout_vs_vllm']:.3f}")
    print(f"training step          {share['step_s'] * 1e3:10.1f} ms    hot-load {share['sync_ms']:.1f} ms   "
          f"sync_share = {result['sync_share']:.4f}")
    print(f"wrote {out}")
    return result
