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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.errors import UserError

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGITS_TEMPORARIES = 4
"""(chunk, vocabulary) float32 tensors alive at once in the selective log-softmax (logits, its exp inside logsumexp,
the softmax, and their gradient in backward)."""
CUDA_OVERHEAD = GIB
"""CUDA context, cuBLAS workspaces and allocator fragmentation of the learner's process: a flat allowance."""


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

    def params(self) -> int:
        """Weights of the model (biases and norms left out: they are a rounding error)."""
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * sum(a * b for a, b in self.linears())

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
    """What each part of a single-GPU run takes, against what the GPU has."""

    rows: tuple[tuple[str, int], ...]
    gpu_bytes: int

    def total(self) -> int:
        return sum(b for _, b in self.rows)

    def fits(self) -> bool:
        return self.total() <= self.gpu_bytes

    def describe(self) -> str:
        lines = [f"  {name:<52} {b / GIB:8.2f} GiB" for name, b in self.rows]
        lines.append(f"  {'total':<52} {self.total() / GIB:8.2f} GiB of {self.gpu_bytes / GIB:.2f} GiB")
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
) -> MemoryPlan:
    """The plan for an engine and a learner on one GPU of `gpu_bytes`."""
    b = DTYPE_BYTES[dtype]
    lora = shape.lora_params(lora_rank)
    rows = (
        ("engine (rollout.gpu_memory_utilization x GPU)", int(gpu_memory_utilization * gpu_bytes)),
        (f"learner base weights ({dtype})", shape.params() * b),
        ("LoRA weights + gradients + AdamW moments (float32)", lora * 4 * 4),
        (
            f"activations of one micro-batch ({micro_batch_tokens} tokens)",
            micro_batch_tokens * shape.activation_bytes_per_token(b, gradient_checkpointing),
        ),
        (
            f"LM-head chunks ({logits_chunk_tokens} positions x {shape.vocab} vocabulary)",
            LOGITS_TEMPORARIES * logits_chunk_tokens * shape.vocab * 4,
        ),
        ("CUDA context and allocator slack", CUDA_OVERHEAD),
    )
    return MemoryPlan(rows, gpu_bytes)


def check_plan(plan: MemoryPlan) -> None:
    """Refuse a plan that does not fit, naming the settings that shrink it."""
    if plan.fits():
        return
    over = (plan.total() - plan.gpu_bytes) / GIB
    raise UserError(
        f"{plan.describe()}\nthis run needs {over:.2f} GiB more than the GPU has. Lower rollout.gpu_memory_utilization "
        "(a smaller KV cache), train.micro_batch_tokens (smaller micro-batches, more of them), or "
        "train.logits_chunk_tokens; set train.gradient_checkpointing=true; or use model.dtype=bfloat16"
    )
