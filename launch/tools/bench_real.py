"""`prolora bench --size real`: the adapter hot-load at the size users train, so `sync_share` is known there too.

The default bench measures a 1M-parameter model, where an adapter is a few hundred kilobytes and its hot-load is
nothing next to a step. Users train 1-2B models with rank 16-64 adapters on every linear layer: tens of megabytes
per version, exported, sent through Ray's object store, written and registered with every engine each step. This
builds a random-weight model with Qwen2.5-1.5B's shapes (bfloat16; only timing matters, so no warm start) and runs a
few real steps through the actors a run uses, one rollout worker and the learner:
generate a small batch, `Learner.train_step`, export the rank-32 all-linear adapter with its probe, publish it to
the worker (transfer, write, `add_lora`, probe decode). It prints and writes per-step figures and their means:
export ms, publish ms (of which the worker's write + add_lora), the adapter's bytes, generation and training
seconds, and sync_share = (export + publish) / step.

Engine and learner each hold the base weights, so the model must fit twice in host memory. When the machine's
available memory cannot hold that, the model keeps its widths and vocabulary but gets fewer layers, and the
output says so (the adapter then shrinks with the layers; the figures per layer are what scale).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.config import Config
from shared.records import Prompt, SamplingSpec, TrainBatch, TrainSample

QWEN25_1_5B: dict[str, Any] = {
    "vocab_size": 151_936,
    "hidden_size": 1536,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "intermediate_size": 8960,
    "tie_word_embeddings": True,
}
"""The shapes of Qwen2.5-1.5B (its config.json)."""
REAL_OVERRIDES = [
    "model.dtype=bfloat16",
    "model.max_model_len=128",
    "lora.rank=32",
    "lora.alpha=64",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=16",
    "rollout.kv_cache_gib=1",
    "rollout.num_workers=1",
    "algo.log_kl=false",
]
"""A small batch (16 completions of at most 16 tokens): generation and training on 2 CPU cores at this size take
seconds per token; the hot-load does not depend on the batch."""
HEADROOM_BYTES = 6 * 1024**3
"""Host memory left free beyond weights, KV cache and LoRA state: the engine's and the learner's runtime buffers
(each process holds more than its tensors), Ray, the driver and other processes."""


@dataclass(frozen=True)
class RealStep:
    """One measured step."""

    gen_s: float
    train_s: float
    export_ms: float
    """Learner: save the adapter to bytes and decode the probe (as every step of a run does)."""
    publish_ms: float
    """Driver: from the payload in the object store to every worker serving it and its probe checked."""
    load_ms: float
    """Inside publish: the worker writing the files and registering them with the engine (add_lora)."""
    adapter_bytes: int
    probe_max_diff: float | None

    @property
    def step_s(self) -> float:
        return self.gen_s + self.train_s + (self.export_ms + self.publish_ms) / 1e3


def layers_that_fit(available_bytes: int, kv_cache_bytes: int, shapes: dict[str, Any] = QWEN25_1_5B) -> int:
    """The most decoder layers (up to the real count) whose model fits twice (engine + learner, bfloat16) in
    `available_bytes`, beside the KV cache, the learner's LoRA state and HEADROOM_BYTES."""
    from shared.memplan import ModelShape

    full = ModelShape.from_hf_config(_Shapes(shapes))
    per_layer = sum(a * b for a, b in full.linears()) * 2
    embeddings = full.vocab * full.hidden * 2
    lora_state_per_layer = full.lora_params(32) // full.layers * 16
    budget = available_bytes - kv_cache_bytes - HEADROOM_BYTES - 2 * embeddings
    return max(1, min(full.layers, budget // (2 * per_layer + lora_state_per_layer)))


class _Shapes:
    """A config-like view of a shapes dict (ModelShape.from_hf_config reads attributes)."""

    def __init__(self, shapes: dict) -> None:
        self.__dict__.update(shapes)


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); the total from os.sysconf elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def real_model(cache: Path, layers: int) -> Path:
    """A random Qwen2 with Qwen2.5-1.5B's shapes and `layers` decoder layers, bfloat16, with the built-in
    byte-level BPE ChatML tokenizer (its ids are a subset of the 151,936-token vocabulary); built once under `cache`."""
    path = cache / f"real-qwen2.5-1.5b-shapes-{layers}l-chatml"
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from launch.basemodel import build_tokenizer, eos_ids, save_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        **{**QWEN25_1_5B, "num_hidden_layers": layers},
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        dtype="bfloat16",
    )
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]  # transformers types `to` oddly
    model.save_pretrained(tmp)
    GenerationConfig(eos_token_id=eos_ids(tokenizer)).save_pretrained(tmp)
    save_tokenizer(tokenizer, tmp)
    tmp.rename(path)
    return path


def _batch(groups, step: int) -> TrainBatch:
    """The generated completions as training samples, with alternating advantages (only the timing matters)."""
    samples = [
        TrainSample(g.prompt_token_ids, c.token_ids, c.logprobs, 1.0 if i % 2 else -1.0, c.adapter_version)
        for g in groups
        for i, c in enumerate(g.completions)
        if c.token_ids
    ]
    return TrainBatch(tuple(samples), step)


def _one_step(step: int, fleet, learner, prompts: list[Prompt], sampling: SamplingSpec, max_model_len: int) -> RealStep:
    import ray

    from rollout.probe import probe_prompts

    t0 = time.perf_counter()
    groups = fleet.generate(prompts, sampling)
    t1 = time.perf_counter()
    learner.train_step(_batch(groups, step))
    t2 = time.perf_counter()
    payload_ref = learner.export_adapter(*probe_prompts(groups, max_model_len))
    payload = ray.get(payload_ref)
    t3 = time.perf_counter()
    published = fleet.publish(payload_ref)
    return RealStep(
        gen_s=t1 - t0,
        train_s=t2 - t1,
        export_ms=(t3 - t2) * 1e3,
        publish_ms=published.publish_ms,
        load_ms=published.sync_ms,
        adapter_bytes=sum(len(b) for _, b in payload.files),
        probe_max_diff=published.probe_max_diff,
    )


def run_real_bench(config: Config, out: Path, steps: int) -> dict:
    """Build (or reuse) the real-size model, run `steps` measured steps after one warm-up step, print and write."""
    from launch.actors import start_learner, start_ray, start_rollout_workers
    from launch.basemodel import default_cache_dir
    from launch.tools.bench import machine
    from rollout.fleet import RolloutFleet
    from rollout.probe import PROBE_TOLERANCE
    from shared.chat import PromptRenderer
    from shared.memplan import ModelShape
    from shared.tasks import get_task

    load_before = os.getloadavg()[0]
    available = available_memory_bytes()
    layers = layers_that_fit(available, config.rollout.kv_cache_gib * 1024**3)
    start = time.perf_counter()
    model_path = real_model(default_cache_dir(), layers)
    build_s = time.perf_counter() - start
    shape = ModelShape.from_hf_config(_Shapes({**QWEN25_1_5B, "num_hidden_layers": layers}))
    start_ray(config)
    workers = start_rollout_workers(config, str(model_path))
    learner = start_learner(config, str(model_path))
    fleet = RolloutFleet(workers, probe_tolerance=config.rollout.probe_tolerance or PROBE_TOLERANCE["bfloat16"])
    r = config.rollout
    renderer = PromptRenderer.from_config(config, str(model_path))
    rows = get_task(config.task.name).train_rows(r.prompts_per_step, config.run.seed)
    prompts = [renderer.render(row["prompt"]) for row in rows]
    sampling = SamplingSpec(n=r.group_size, max_tokens=r.max_new_tokens, temperature=r.temperature, seed=1)
    measured = [
        _one_step(step, fleet, learner, prompts, sampling, config.model.max_model_len) for step in range(steps + 1)
    ]
    result = _summary(measured[1:], shape, layers, config)
    result.update(
        {"model_path": str(model_path), "model_build_s": build_s, "available_memory_gib": available / 1024**3}
    )
    result["machine"] = {**machine(), "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0]}
    out.write_text(json.dumps(result, indent=2))
    print(format_real(result))
    print(f"wrote {out}")
    return result


def _summary(steps: list[RealStep], shape, layers: int, config: Config) -> dict:
    def mean(key: str) -> float:
        return statistics.fmean(getattr(s, key) if key != "step_s" else s.step_s for s in steps)

    sync_s = (mean("export_ms") + mean("publish_ms")) / 1e3
    return {
        "layers": layers,
        "full_layers": QWEN25_1_5B["num_hidden_layers"],
        "model_params": shape.params(),
        "lora_params": shape.lora_params(config.lora.rank),
        "lora_rank": config.lora.rank,
        "completions": config.rollout.prompts_per_step * config.rollout.group_size,
        "max_new_tokens": config.rollout.max_new_tokens,
        "adapter_bytes": steps[-1].adapter_bytes,
        **{f"{k}_mean": mean(k) for k in ("gen_s", "train_s", "export_ms", "publish_ms", "load_ms", "step_s")},
        "sync_share": sync_s / mean("step_s"),
        "probe_max_diff": max((s.probe_max_diff or 0.0) for s in steps),
        "steps": [asdict(s) for s in steps],
    }


def format_real(result: dict) -> str:
    """The printed summary."""
    r, m = result, result["machine"]
    fewer = (
        ""
        if r["layers"] == r["full_layers"]
        else f"\nnote: {r['layers']} of {r['full_layers']} layers: the full model did not fit twice (engine + "
        f"learner) in this machine's {r['available_memory_gib']:.1f} GiB available memory"
    )
    return (
        f"prolora bench --size real: Qwen2.5-1.5B shapes, {r['layers']} layers, {r['model_params'] / 1e9:.2f}B "
        f"params (random, bfloat16); LoRA r{r['lora_rank']} all-linear, {r['lora_params'] / 1e6:.1f}M params, "
        f"{r['adapter_bytes'] / 1e6:.1f} MB per version{fewer}\n"
        f"{len(r['steps'])} steps of {r['completions']} completions x {r['max_new_tokens']} tokens max (means):\n"
        f"  generate            {r['gen_s_mean']:9.2f} s\n"
        f"  learner train_step  {r['train_s_mean']:9.2f} s\n"
        f"  export (+probe)     {r['export_ms_mean']:9.0f} ms\n"
        f"  publish             {r['publish_ms_mean']:9.0f} ms  (write + add_lora {r['load_ms_mean']:.0f} ms; "
        f"the rest: object-store transfer and probe decode)\n"
        f"  step                {r['step_s_mean']:9.2f} s\n"
        f"sync_share (export + publish) / step: {r['sync_share']:.3f}; probe max |diff| {r['probe_max_diff']:.4f}\n"
        f"{m['cpu']}, {m['cores']} cores, load {m['load_avg_1min_before']:.1f} -> {m['load_avg_1min_after']:.1f}"
    )
