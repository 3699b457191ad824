"""The memory plan of one GPU shared by a vLLM engine and the learner, as arithmetic on the two configs.

One GPU for everything is the common case of a single-GPU user: the engine takes `rollout.gpu_memory_utilization` of
the GPU (vLLM counts its weights, KV cache and activations inside that fraction), and the learner must fit in the
rest: base weights, LoRA weights with their gradients and AdamW moments (float32), the activations of one
micro-batch and the LM-head chunks of learner/logprobs.py. Nothing is loaded: the figures come from the model's
config.json, so a plan that cannot fit is refused before a run starts, naming the settings that shrink it.

Activations are an estimate of what a LLaMA-style decoder layer keeps for backward in LoRA training (frozen base
weights: a frozen linear needs no saved input, its LoRA branch does). Per token and layer, in the base dtype:
the two norms' inputs (2h), the normed inputs the LoRA branches read (2h), q, k, v and the attention output
((2 heads + 2 kv_heads) x head_dim), the MLP's gate, its activation, up and down's input (4 x intermediate). With
gradient checkpointing a layer keeps only its input (h) and one layer at a time is recomputed in full.

An engine's share holds its own copy of the weights; the rest is its KV cache and workspace (vLLM profiles the
workspace at start and gives the KV cache what is left). With vLLM sleep mode (rollout.sleep_level=1) the engines
offload their weights and free their KV cache while the learner trains, and the learner frees its activations before
they wake, so the plan is the larger of two phases instead of their sum.

With a quantized base (model.quantization) the learner's decoder linears take QUANT_BYTES per weight; the embeddings
and LM head stay in the base dtype (learner/quantized.py quantizes neither). The engines hold what
shared/served_base.py serves: int8's codes (decoder linears at one byte per weight, the rest in the base dtype) or
nf4's dequantized weights in the base dtype.

With a sharded base (train.shard_base) the learner holds the embeddings and LM head whole, 1/N of the decoder
layers' weights, and the whole weights of the layers FSDP has gathered at a moment (counted as two: the one running
and the one prefetched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from shared.config import Config, Quantization
from shared.errors import UserError
from shared.served_base import served_base

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGITS_TEMPORARIES = 4
"""(chunk, vocabulary) float32 tensors alive at once in the selective log-softmax (logits, its exp inside logsumexp,
the softmax, and their gradient in backward)."""
CUDA_OVERHEAD = GIB
"""CUDA context, cuBLAS workspaces and allocator fragmentation of the learner's process: a flat allowance."""

Phase = Literal["generate", "train", "both"]
KV_ROW = "engine KV cache + workspace"
QUANT_BYTES = {"int8": 1.0, "nf4": 0.5 + 4 / 64}
"""Bytes per quantized weight: int8 one byte (its per-row scales are left out); NF4 half a byte plus a float32 absmax
per block of 64 weights (bitsandbytes' default block, without double quantization)."""
ENGINE_ASLEEP = GIB // 2
"""What a sleeping engine keeps on the GPU: its CUDA context and (with CUDA graphs) their memory pool."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a LLaMA-style causal LM that memory depends on."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @classmethod
    def from_hf_config(cls, cfg: Any) -> ModelShape:
        heads = cfg.num_attention_heads
        return cls(
            vocab=cfg.vocab_size,
            hidden=cfg.hidden_size,
            layers=cfg.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            intermediate=cfg.intermediate_size,
            tied=bool(getattr(cfg, "tie_word_embeddings", False)),
        )

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) features of every linear layer of one decoder layer (q, k, v, o, gate, up, down)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def params(self, shard_ranks: int = 1) -> int:
        """Weights of the model (biases and norms left out: they are a rounding error); with `shard_ranks` > 1 what
        one rank of a sharded base holds at its peak (see the module docstring)."""
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        layer = sum(a * b for a, b in self.linears())
        if shard_ranks > 1:
            return embeddings + math.ceil(self.layers * layer / shard_ranks) + min(2, self.layers) * layer
        return embeddings + self.layers * layer

    def base_bytes(self, dtype_bytes: int, quantization: Quantization = "none", shard_ranks: int = 1) -> int:
        """The learner's frozen base weights in bytes: everything in the base dtype, or with `quantization` the
        decoder linears at QUANT_BYTES per weight and the embeddings and LM head in the base dtype."""
        if quantization == "none":
            return self.params(shard_ranks) * dtype_bytes
        layers = self.layers * sum(a * b for a, b in self.linears())
        return (self.params() - layers) * dtype_bytes + math.ceil(layers * QUANT_BYTES[quantization])

    def lora_params(self, rank: int) -> int:
        """LoRA A and B of every linear layer of every decoder layer (peft's all-linear: the LM head is left out)."""
        return self.layers * sum(rank * (a + b) for a, b in self.linears())

    def activation_bytes_per_token(self, dtype_bytes: int, gradient_checkpointing: bool) -> int:
        """What backward keeps per token of a micro-batch, all layers (see the module docstring)."""
        per_layer = 4 * self.hidden + (2 * self.heads + 2 * self.kv_heads) * self.head_dim + 4 * self.intermediate
        if gradient_checkpointing:
            return dtype_bytes * (self.layers * self.hidden + per_layer)
        return dtype_bytes * self.layers * per_layer


@dataclass(frozen=True)
class MemoryPlan:
    """What each part of a GPU shared by engines and the learner takes, against what the GPU has.

    Each row is resident while engines generate ("generate"), while the learner trains ("train"), or always
    ("both"). Without sleep mode everything is "both"; with it the engines' weights and KV cache leave the GPU
    while the learner trains, and the learner's activations are freed before they wake.
    """

    rows: tuple[tuple[str, int, Phase], ...]
    gpu_bytes: int
    kv_bytes_per_token: int = 0
    """KV-cache bytes per token of one engine (both K and V, all layers); 0 when no engine shares the GPU."""

    def total(self, phase: Phase = "both") -> int:
        """Bytes resident during `phase` ("both": the larger of the two phases)."""
        if phase == "both":
            return max(self.total("generate"), self.total("train"))
        return sum(b for _, b, when in self.rows if when in (phase, "both"))

    def fits(self) -> bool:
        return self.total() <= self.gpu_bytes

    def kv_cache_tokens(self) -> int:
        """Tokens one engine's KV cache holds by this plan (its share minus its weights)."""
        kv = next((b for name, b, _ in self.rows if name.startswith(KV_ROW)), 0)
        engines = sum(1 for name, _, _ in self.rows if name.startswith(KV_ROW)) or 1
        return kv // engines // self.kv_bytes_per_token if self.kv_bytes_per_token else 0

    def describe(self) -> str:
        phased = any(when != "both" for _, _, when in self.rows)
        lines = [f"  {name:<62} {b / GIB:8.2f} GiB" + (f"  ({when})" if phased else "") for name, b, when in self.rows]
        if phased:
            lines.append(f"  {'while engines generate':<62} {self.total('generate') / GIB:8.2f} GiB")
            lines.append(f"  {'while the learner trains (engines asleep)':<62} {self.total('train') / GIB:8.2f} GiB")
        lines.append(f"  {'peak':<62} {self.total() / GIB:8.2f} GiB of {self.gpu_bytes / GIB:.2f} GiB")
        if self.kv_bytes_per_token:
            lines.append(f"  KV cache: about {self.kv_cache_tokens():,} tokens per engine")
        return "memory plan (one GPU, engine + learner):\n" + "\n".join(lines)


def plan_single_gpu(
    shape: ModelShape,
    *,
    gpu_bytes: int,
    dtype: str,
    lora_rank: int,
    gpu_memory_utilization: float,
    micro_batch_tokens: int,
    logits_chunk_tokens: int,
    gradient_checkpointing: bool,
    engines: int = 1,
    sleep: bool = False,
    shard_ranks: int = 1,
    quantization: Quantization = "none",
) -> MemoryPlan:
    """The plan for `engines` engines (each taking `gpu_memory_utilization` of the GPU) and a learner on one GPU of
        `gpu_bytes`; with `sleep` the engines sleep (vLLM level 1) while the learner trains; with `shard_ranks` > 1 the
        learner is one rank of a base sharded over that many (train.shard_base); with `quantization` the learner's base
    is quantized (model.quantization)."""
    b = DTYPE_BYTES[dtype]
    engine_phase: Phase = "generate" if sleep else "both"
    train_phase: Phase = "train" if sleep else "both"
    served: Quantization = quantization if served_base(quantization).holds == "quantized" else "none"
    share, weights = int(gpu_memory_utilization * gpu_bytes), shape.base_bytes(b, served)
    engine_label = f"{dtype}, decoder linears {served}" if served != "none" else dtype
    engine_rows: list[tuple[str, int, Phase]] = []
    for i in range(engines):
        n = f" {i + 1}" if engines > 1 else ""
        engine_rows += [
            (f"engine{n} weights ({engine_label})", weights, engine_phase),
            (f"{KV_ROW}{n} (rest of its gpu_memory_utilization share)", max(0, share - weights), engine_phase),
        ]
        if sleep:
            engine_rows.append((f"engine{n} asleep (CUDA context, graphs)", ENGINE_ASLEEP, "train"))
    rows = (
        *engine_rows,
        (_base_row(dtype, quantization, shard_ranks), shape.base_bytes(b, quantization, shard_ranks), "both"),
        ("LoRA weights + gradients + AdamW moments (float32)", shape.lora_params(lora_rank) * 4 * 4, "both"),
        (
            f"activations of one micro-batch ({micro_batch_tokens} tokens)",
            micro_batch_tokens * shape.activation_bytes_per_token(b, gradient_checkpointing),
            train_phase,
        ),
        (
            f"LM-head chunks ({logits_chunk_tokens} positions x {shape.vocab} vocabulary)",
            LOGITS_TEMPORARIES * logits_chunk_tokens * shape.vocab * 4,
            train_phase,
        ),
        ("learner CUDA context and allocator slack", CUDA_OVERHEAD, "both"),
    )
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * b if engines else 0
    plan = MemoryPlan(rows, gpu_bytes, kv_per_token)
    if engines and share <= weights:
        raise UserError(
            f"{plan.describe()}\nrollout.gpu_memory_utilization={gpu_memory_utilization} gives each engine "
            f"{share / GIB:.2f} GiB, less than the model's weights ({weights / GIB:.2f} GiB) and leaves no KV cache: "
            f"raise rollout.gpu_memory_utilization (and lower train.num_gpus' share) or use model.dtype=bfloat16"
        )
    return plan


def _base_row(dtype: str, quantization: Quantization, shard_ranks: int) -> str:
    if quantization != "none":
        return f"learner base weights ({dtype}, decoder linears {quantization})"
    return f"learner base weights ({dtype}{f', layers sharded over {shard_ranks} ranks' if shard_ranks > 1 else ''})"


def engines_beside_learner(rollout_workers: int, rollout_gpus: float, learner_gpus: float) -> int:
    """How many engines may share the learner's GPU: with fractional asks on both sides, as many as fit in the
    rest of it (Ray packs fractional GPUs onto the same device); none when either side holds whole GPUs."""
    if not 0 < learner_gpus < 1 or not 0 < rollout_gpus < 1:
        return 0
    return min(rollout_workers, math.floor((1 - learner_gpus) / rollout_gpus + 1e-9))


def check_plan(plan: MemoryPlan, sleeping: bool = False) -> None:
    """Refuse a plan that does not fit, naming the settings that shrink it."""
    if plan.fits():
        return
    over = (plan.total() - plan.gpu_bytes) / GIB
    sleep_hint = "" if sleeping else "; or set rollout.sleep_level=1 (engines free the GPU while the learner trains)"
    raise UserError(
        f"{plan.describe()}\nthis run needs {over:.2f} GiB more than the GPU has. Lower rollout.gpu_memory_utilization "
        "(a smaller KV cache), train.micro_batch_tokens (smaller micro-batches, more of them), or "
        "train.logits_chunk_tokens; set train.gradient_checkpointing=true; use model.dtype=bfloat16; give engine and "
        f"learner a GPU each (rollout.num_gpus=1, train.num_gpus=1){sleep_hint}"
    )


def plan_for_config(config: Config, shape: ModelShape, gpu_bytes: int) -> MemoryPlan:
    """The plan of the learner's GPU (`gpu_bytes`) for this run: the learner and the engines Ray may put beside it."""
    r, t = config.rollout, config.train
    return plan_single_gpu(
        shape,
        gpu_bytes=gpu_bytes,
        dtype=config.model.dtype,
        lora_rank=config.lora.rank,
        gpu_memory_utilization=r.gpu_memory_utilization,
        micro_batch_tokens=t.micro_batch_tokens,
        logits_chunk_tokens=t.logits_chunk_tokens,
        gradient_checkpointing=t.gradient_checkpointing,
        engines=engines_beside_learner(r.num_workers, r.num_gpus, t.num_gpus),
        sleep=bool(r.sleep_level),
        shard_ranks=t.num_learners if t.shard_base else 1,
        quantization=config.model.quantization,
    )
