"""The single-GPU memory plan's arithmetic: parameter and LoRA counts equal what transformers and peft build for the
same config, the rows add up, and a plan that does not fit is refused naming the settings to change."""

from __future__ import annotations

import pytest

from shared.errors import UserError
from shared.memplan import GIB, LOGITS_TEMPORARIES, ModelShape, check_plan, plan_single_gpu


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


def test_plan_rows_for_a_qwen_sized_model_on_one_gpu():
    # Qwen2.5-1.5B's shapes.
    shape = ModelShape(
        vocab=151936, hidden=1536, layers=28, heads=12, kv_heads=2, head_dim=128, intermediate=8960, tied=True
    )
    kwargs = dict(
        gpu_bytes=80 * GIB,
        dtype="bfloat16",
        lora_rank=32,
        gpu_memory_utilization=0.5,
        micro_batch_tokens=8192,
        logits_chunk_tokens=128,
    )
    plan = plan_single_gpu(shape, gradient_checkpointing=False, **kwargs)
    rows = dict(plan.rows)
    assert len(rows) == 6 and plan.total() == sum(rows.values())
    assert rows["engine (rollout.gpu_memory_utilization x GPU)"] == 40 * GIB
    assert rows["learner base weights (bfloat16)"] == shape.params() * 2
    assert 1.4e9 < shape.params() < 1.6e9
    per_layer = 4 * 1536 + (2 * 12 + 2 * 2) * 128 + 4 * 8960
    assert rows["activations of one micro-batch (8192 tokens)"] == 8192 * 2 * 28 * per_layer
    assert rows["LM-head chunks (128 positions x 151936 vocabulary)"] == LOGITS_TEMPORARIES * 128 * 151936 * 4
    assert plan.fits()
    check_plan(plan)
    ckpt = plan_single_gpu(shape, gradient_checkpointing=True, **kwargs)
    assert dict(ckpt.rows)["activations of one micro-batch (8192 tokens)"] == 8192 * 2 * (28 * 1536 + per_layer)
    assert ckpt.total() < plan.total()


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
    for knob in ("rollout.gpu_memory_utilization", "train.micro_batch_tokens", "train.gradient_checkpointing"):
        assert knob in str(err.value)
    assert "memory plan" in str(err.value) and "GiB" in str(err.value)
