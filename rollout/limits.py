"""What the engine cannot serve, checked from the model's config before any engine starts.

Two limits, each of which otherwise surfaces late or not at all:
- vLLM's CPU attention backend supports only some head sizes (the installed vLLM lists them); a model with another
  head size builds its engine and then fails at the first generate, after minutes of start-up.
- vLLM's LFM2 always ties the output head to the input embeddings and never reads `lm_head.weight`. An LFM2 saved
  with an untied head (`tie_word_embeddings: false`) is served as a different model: the engine's logprobs differ
  from the learner's on the base model itself, and the served-adapter probe then blames the adapter. The released
  LFM2 models are tied.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

from shared.errors import UserError

ALWAYS_TIED = ("lfm2", "lfm2_moe")
"""model_type values whose vLLM implementation ties lm_head to embed_tokens whatever the config says."""


def cpu_head_sizes() -> list[int]:
    """Head sizes the installed vLLM's CPU attention backend supports (imports vLLM)."""
    # vLLM prints platform notes on import; the driver only reads a list here, and its terminal stays prolora's.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import vllm  # noqa: F401  # the backend module imports cleanly only after vllm itself
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return list(CPUAttentionBackend.get_supported_head_sizes())


def head_size(hf_config: Any) -> int | None:
    """The attention head size of a transformers config; None for a model without attention heads."""
    text = getattr(hf_config, "get_text_config", lambda: hf_config)()
    explicit = getattr(text, "head_dim", None)
    if explicit:
        return int(explicit)
    heads = getattr(text, "num_attention_heads", None)
    return text.hidden_size // heads if heads else None


def limit_problems(model: str, hf_config: Any, cpu_sizes: Sequence[int] | None) -> list[str]:
    """What keeps the engine from serving `model` as the learner computes it (`cpu_sizes`: the CPU backend's head
    sizes when the engine runs on the CPU, None on a GPU)."""
    problems = []
    size = head_size(hf_config)
    if cpu_sizes is not None and size is not None and size not in cpu_sizes:
        problems.append(
            f"model {model} has attention head size {size}, which vLLM's CPU attention backend does not support "
            f"(it supports {', '.join(map(str, cpu_sizes))}): the engine would fail at its first generate. Use a "
            f"model with a supported head size, or run the engines on a GPU (rollout.num_gpus)"
        )
    model_type = getattr(hf_config, "model_type", "")
    if model_type in ALWAYS_TIED and not getattr(hf_config, "tie_word_embeddings", True):
        problems.append(
            f"model {model} is {model_type} with tie_word_embeddings=false, but vLLM's {model_type} always uses the "
            f"input embeddings as the output head and ignores lm_head.weight: the engine would sample from a "
            f"different model than the learner trains. Save the model with tied embeddings (as the released LFM2 "
            f"models are)"
        )
    return problems


def check_engine_limits(model_path: str, *, on_gpu: bool, trust_remote_code: bool = False) -> None:
    """Raise UserError naming the model and what the engine cannot serve about it (see the module docstring)."""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    problems = limit_problems(model_path, hf_config, None if on_gpu else cpu_head_sizes())
    if problems:
        raise UserError("; ".join(problems))
