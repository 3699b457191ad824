"""learner/update_map.py against an independent computation: peft's own merge_and_unload on a tiny random Llama,
numpy norms and numpy SVDs of the full update matrix."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

from learner.update_map import (
    Checkpoint,
    DenseWeight,
    adapter_factors,
    effective_rank,
    lora_scale,
    map_checkpoints,
    overall,
    split_module_name,
    unchanged_entries,
)

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
    )
    return LlamaForCausalLM(config).eval()


def _adapted(base: LlamaForCausalLM, seed: int, *, rank: int = 4, alpha: float = 8.0, rslora: bool = False):
    """A peft model over a copy of `base` with random A and B, B scaled so that some but not all bf16 entries move."""
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False, use_rslora=rslora)
    model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.01)
    return model, config


def _numpy_delta(peft_model, module: str, scale: float) -> np.ndarray:
    weights = get_peft_model_state_dict(peft_model)
    A = weights[f"base_model.model.{module}.lora_A.weight"].double().numpy()
    B = weights[f"base_model.model.{module}.lora_B.weight"].double().numpy()
    return scale * B @ A


def _merged_bf16(peft_model) -> dict[str, torch.Tensor]:
    merged = copy.deepcopy(peft_model).merge_and_unload()
    return {k: v.to(torch.bfloat16) for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("rslora", [False, True])
def test_update_measures_match_peft_merge_and_numpy(rslora):
    base = _base()
    base_sd = base.state_dict()
    model, config = _adapted(base, seed=1, rslora=rslora)
    scale = config.lora_alpha / (math.sqrt(config.r) if rslora else config.r)
    assert lora_scale(config.lora_alpha, config.r, rslora) == pytest.approx(scale)

    factors = adapter_factors(get_peft_model_state_dict(model), config.lora_alpha, rslora)
    result = map_checkpoints(base_sd, [Checkpoint("a", factors)])
    rows = result.checkpoints["a"]
    assert len(rows) == 2 * len(TARGETS) and not result.unchanged

    merged = _merged_bf16(model)
    some_changed = False
    for row in rows:
        W = base_sd[f"{row.name}.weight"].double().numpy()
        delta = _numpy_delta(model, row.name, scale)
        assert row.relative_norm == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(W), rel=1e-6)
        sigma = np.linalg.svd(delta, compute_uv=False)
        p = sigma[sigma > 1e-12 * sigma.max()] / sigma.sum()
        assert row.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
        assert 1.0 < row.effective_rank <= config.r
        changed = merged[f"{row.name}.weight"] != base_sd[f"{row.name}.weight"].to(torch.bfloat16)
        assert row.bf16_changed == changed.double().mean().item()  # exactly peft's merge, cast to bf16
        some_changed |= 0.0 < row.bf16_changed < 1.0
        assert (row.layer, row.module) == split_module_name(row.name) and row.layer in (0, 1)
    assert some_changed


def test_unchanged_fraction_between_two_merged_checkpoints():
    base = _base()
    base_sd = base.state_dict()
    first, config = _adapted(base, seed=1)
    second, _ = _adapted(base, seed=2)
    checkpoints = [
        Checkpoint("base", {}),
        Checkpoint("first", adapter_factors(get_peft_model_state_dict(first), config.lora_alpha)),
        Checkpoint("second", adapter_factors(get_peft_model_state_dict(second), config.lora_alpha)),
    ]
    result = map_checkpoints(base_sd, checkpoints)
    base_bf16 = {k: v.to(torch.bfloat16) for k, v in base_sd.items()}
    merged_first, merged_second = _merged_bf16(first), _merged_bf16(second)
    pairs = [(base_bf16, merged_first), (merged_first, merged_second)]
    for unchanged, (before, after) in zip(result.unchanged, pairs, strict=True):
        same = entries = 0
        for module, fraction in unchanged.per_module.items():
            equal = before[f"{module}.weight"] == after[f"{module}.weight"]
            assert fraction == equal.double().mean().item()
            same, entries = same + int(equal.sum()), entries + equal.numel()
        assert (unchanged.unchanged_entries, unchanged.entries) == (same, entries)
        assert 0.0 < unchanged.fraction < 1.0
    # Any two checkpoints, not only consecutive ones: base against the second adapter.
    factors_second = checkpoints[2].factors
    for module, factors in factors_second.items():
        key = f"{module}.weight"
        expected = int((base_bf16[key] == merged_second[key]).sum())
        assert unchanged_entries(base_sd[key], None, factors) == expected
    # From the base, "unchanged" is exactly the complement of the changed fraction.
    rows_first = result.checkpoints["first"]
    assert result.unchanged[0].fraction == pytest.approx(1.0 - overall(rows_first)["bf16_changed"])


def test_zero_update_and_module_names():
    base = _base()
    model, config = _adapted(base, seed=1)
    weights = {k: (v * 0 if "lora_B" in k else v) for k, v in get_peft_model_state_dict(model).items()}
    rows = map_checkpoints(base.state_dict(), [Checkpoint("zero", adapter_factors(weights, 8.0))]).checkpoints["zero"]
    assert all(r.relative_norm == 0 and r.bf16_changed == 0 and r.effective_rank == 0 for r in rows)
    assert effective_rank(torch.tensor([2.0, 2.0, 0.0])) == pytest.approx(2.0)
    assert split_module_name("model.layers.12.mlp.down_proj") == (12, "mlp.down_proj")
    assert split_module_name("lm_head") == (None, "lm_head")


def test_trained_weights_are_measured_as_their_difference_from_the_base():
    """A weight-push checkpoint (lora.mode=full) holds W' itself: the update is W' - W, numpy's norms and SVD."""
    W = _base().state_dict()
    name = "model.layers.1.mlp.down_proj"
    torch.manual_seed(1)
    new_OI = W[f"{name}.weight"] + 1e-3 * torch.randn_like(W[f"{name}.weight"])
    result = map_checkpoints(W, [Checkpoint("base", {}), Checkpoint("full", {name: DenseWeight(new_OI)})])
    (row,) = result.checkpoints["full"]
    delta = new_OI.double().numpy() - W[f"{name}.weight"].double().numpy()
    sigma = np.linalg.svd(delta, compute_uv=False)
    p = sigma / sigma.sum()
    assert row.rank == min(delta.shape)
    assert row.relative_norm == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(W[f"{name}.weight"].numpy()))
    assert row.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    changed = (new_OI.bfloat16() != W[f"{name}.weight"].bfloat16()).double().mean().item()
    assert 0 < row.bf16_changed == changed < 1
    assert result.unchanged[0].fraction == pytest.approx(1 - changed)
