"""The single-GPU memory plan's arithmetic: parameter and LoRA counts equal what transformers and peft build for the
same config, the rows add up, and a plan that does not fit is refused naming the settings to change."""

from __future__ import annotations

import math
from typing import Any

import pytest

from shared.config import load_config
from shared.errors import UserError
from shared.memplan import (
    GIB,
    LOGITS_TEMPORARIES,
    ModelShape,
    check_plan,
    engines_beside_learner,
    plan_for_config,
    plan_single_gpu,
)


def _tiny_config(tied: bool):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_and_lora_counts_match_transformers_and_peft(tied):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    cfg = _tiny_config(tied)
    shape = ModelShape.from_hf_config(cfg)
    model = LlamaForCausalLM(cfg)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert shape.params() == sum(p.numel() for p in model.parameters()) - norms
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert shape.lora_params(4) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


QWEN_1_5B = ModelShape(
    vocab=151936, hidden=1536, layers=28, heads=12, kv_heads=2, head_dim=128, intermediate=8960, tied=True
)
PLAN_ARGS: dict[str, Any] = dict(
    gpu_bytes=80 * GIB,
    dtype="bfloat16",
    lora_rank=32,
    gpu_memory_utilization=0.5,
    micro_batch_tokens=8192,
    logits_chunk_tokens=128,
)


def test_plan_rows_for_a_qwen_sized_model_on_one_gpu():
    shape = QWEN_1_5B
    plan = plan_single_gpu(shape, gradient_checkpointing=False, **PLAN_ARGS)
    rows = {name: b for name, b, _ in plan.rows}
    assert len(rows) == 7 and plan.total() == sum(rows.values())
    weights = shape.params() * 2
    assert 1.4e9 < shape.params() < 1.6e9
    assert rows["engine weights (bfloat16)"] == rows["learner base weights (bfloat16)"] == weights
    assert rows["engine KV cache + workspace (rest of its gpu_memory_utilization share)"] == 40 * GIB - weights
    per_layer = 4 * 1536 + (2 * 12 + 2 * 2) * 128 + 4 * 8960
    assert rows["activations of one micro-batch (8192 tokens)"] == 8192 * 2 * 28 * per_layer
    assert rows["LM-head chunks (128 positions x 151936 vocabulary)"] == LOGITS_TEMPORARIES * 128 * 151936 * 4
    assert plan.kv_cache_tokens() == (40 * GIB - weights) // (2 * 28 * 2 * 128 * 2)
    assert plan.fits()
    check_plan(plan)
    ckpt = plan_single_gpu(shape, gradient_checkpointing=True, **PLAN_ARGS)
    ckpt_rows = {name: b for name, b, _ in ckpt.rows}
    assert ckpt_rows["activations of one micro-batch (8192 tokens)"] == 8192 * 2 * (28 * 1536 + per_layer)
    assert ckpt.total() < plan.total()
    assert "memory plan" in plan.describe() and "KV cache: about" in plan.describe()


def test_with_sleep_mode_the_peak_is_the_larger_phase_not_the_sum():
    awake = plan_single_gpu(QWEN_1_5B, gradient_checkpointing=False, **PLAN_ARGS)
    asleep = plan_single_gpu(QWEN_1_5B, gradient_checkpointing=False, sleep=True, **PLAN_ARGS)
    rows = {name: (b, when) for name, b, when in asleep.rows}
    learner_always = sum(b for _, b, when in asleep.rows if when == "both")
    engine = 40 * GIB
    training = (
        rows["activations of one micro-batch (8192 tokens)"][0]
        + rows["LM-head chunks (128 positions x 151936 vocabulary)"][0]
    )
    assert asleep.total("generate") == learner_always + engine
    assert asleep.total("train") == learner_always + training + rows["engine asleep (CUDA context, graphs)"][0]
    assert asleep.total() == max(asleep.total("generate"), asleep.total("train")) < awake.total()
    assert "while the learner trains (engines asleep)" in asleep.describe()


def test_how_many_engines_share_the_learners_gpu():
    assert engines_beside_learner(1, 0.5, 0.5) == 1
    assert engines_beside_learner(3, 0.25, 0.25) == 3
    assert engines_beside_learner(4, 0.3, 0.4) == 2  # Ray may pack two 0.3 shares beside a 0.4 learner
    assert engines_beside_learner(2, 1.0, 0.5) == 0  # whole-GPU engines never share
    assert engines_beside_learner(2, 0.5, 1.0) == 0
    assert engines_beside_learner(2, 0.0, 0.5) == 0


def test_a_config_plans_the_engines_beside_its_learner():
    config = load_config(
        overrides=["rollout.num_gpus=0.4", "train.num_gpus=0.5", "rollout.gpu_memory_utilization=0.4",
                   "model.dtype=bfloat16", "lora.rank=32", "rollout.sleep_level=1"]
    )  # fmt: skip
    plan = plan_for_config(config, QWEN_1_5B, 80 * GIB)
    names = [name for name, _, _ in plan.rows]
    assert names.count("engine weights (bfloat16)") == 1 and "engine asleep (CUDA context, graphs)" in names
    assert dict((n, b) for n, b, _ in plan.rows)["LoRA weights + gradients + AdamW moments (float32)"] == (
        QWEN_1_5B.lora_params(32) * 16
    )


def test_a_sharded_base_plans_a_rank_with_its_share_of_the_layers_and_two_whole_ones():
    config = load_config(overrides=["train.num_gpus=1", "train.num_learners=4", "train.shard_base=true"])
    rows = {n: b for n, b, _ in plan_for_config(config, QWEN_1_5B, 80 * GIB).rows}
    layer = sum(a * b for a, b in QWEN_1_5B.linears())
    embeddings = QWEN_1_5B.vocab * QWEN_1_5B.hidden
    assert rows["learner base weights (float32, layers sharded over 4 ranks)"] == 4 * (
        embeddings + 28 * layer // 4 + 2 * layer
    )
    assert QWEN_1_5B.params(1) == embeddings + 28 * layer


@pytest.mark.parametrize(("quantization", "per_weight"), [("int8", 1.0), ("nf4", 0.5625)])
def test_a_quantized_base_plans_the_decoder_linears_quantized_and_the_rest_in_the_base_dtype(quantization, per_weight):
    rows = _rows(
        load_config(overrides=["train.num_gpus=1", "model.dtype=bfloat16", f"model.quantization={quantization}"])
    )
    linears = 28 * sum(a * b for a, b in QWEN_1_5B.linears())
    embeddings = QWEN_1_5B.vocab * QWEN_1_5B.hidden  # Qwen2.5-1.5B ties its LM head to the embeddings
    quantized = rows[f"learner base weights (bfloat16, decoder linears {quantization})"]
    assert quantized == 2 * embeddings + math.ceil(linears * per_weight)
    full = _rows(load_config(overrides=["train.num_gpus=1", "model.dtype=bfloat16"]))
    assert quantized < full["learner base weights (bfloat16)"] == 2 * (embeddings + linears)


def test_an_int8_engine_holds_its_codes_and_an_nf4_engine_full_weights():
    """shared/served_base.py: the engines serve int8's codes and nf4's dequantized values."""
    one_gpu = [
        "rollout.num_gpus=0.4",
        "train.num_gpus=0.5",
        "rollout.gpu_memory_utilization=0.4",
        "model.dtype=bfloat16",
    ]
    full = _rows(load_config(overrides=one_gpu))["engine weights (bfloat16)"]
    int8 = _rows(load_config(overrides=[*one_gpu, "model.quantization=int8"]))
    nf4 = _rows(load_config(overrides=[*one_gpu, "model.quantization=nf4"]))
    linears = 28 * sum(a * b for a, b in QWEN_1_5B.linears())
    assert int8["engine weights (bfloat16, decoder linears int8)"] == full - linears  # 2 bytes a weight become 1
    assert nf4["engine weights (bfloat16)"] == full


def _rows(config) -> dict[str, int]:
    return {n: b for n, b, _ in plan_for_config(config, QWEN_1_5B, 80 * GIB).rows}


def test_an_engine_share_smaller_than_its_weights_is_refused():
    with pytest.raises(UserError, match="rollout.gpu_memory_utilization=0.03 gives each engine"):
        plan_single_gpu(QWEN_1_5B, gradient_checkpointing=False, **{**PLAN_ARGS, "gpu_memory_utilization": 0.03})


def test_a_plan_that_does_not_fit_is_refused_naming_the_knobs():
    shape = ModelShape.from_hf_config(_tiny_config(tied=True))
    plan = plan_single_gpu(
        shape,
        gpu_bytes=2 * GIB,
        dtype="float32",
        lora_rank=8,
        gpu_memory_utilization=0.9,
        micro_batch_tokens=8192,
        logits_chunk_tokens=128,
        gradient_checkpointing=False,
    )
    assert not plan.fits()
    with pytest.raises(UserError) as err:
        check_plan(plan)
    for knob in (
        "rollout.gpu_memory_utilization",
        "train.micro_batch_tokens",
        "train.gradient_checkpointing",
        "model.dtype=bfloat16",
        "rollout.sleep_level=1",
    ):
        assert knob in str(err.value)
    assert "memory plan" in str(err.value) and "GiB" in str(err.value)
