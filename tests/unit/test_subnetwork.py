"""Choosing a subnetwork (learner/subnetwork.py) and the fused layers a push completes (rollout/weights.py)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from learner.subnetwork import FullRank, chosen_modules, module_matches
from rollout.weights import _with_siblings
from shared.config import LoraConfig


def _tiny_llama() -> LlamaForCausalLM:
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=1, head_dim=32)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, num_key_value_heads=1, **sizes))


def test_module_matching_reads_target_modules_as_peft_does():
    name = "model.layers.3.self_attn.q_proj"
    assert module_matches(name, "all-linear", None) and module_matches(name, ["q_proj"], [3])
    assert module_matches(name, ["self_attn.q_proj"], None) and module_matches(name, [name], None)
    assert not module_matches(name, ["proj"], None)  # a suffix matches only at a dot
    assert not module_matches(name, ["q_proj"], [0, 2])
    assert module_matches(name, r".*\.3\..*q_proj", None) and not module_matches(name, r"q_proj", None)


def test_full_rank_trains_only_the_chosen_weights_and_keeps_a_reference():
    model = _tiny_llama()
    lora = LoraConfig(mode="full", target_modules=["k_proj", "down_proj"], layers=[1])
    assert chosen_modules(model, LoraConfig()) == [
        n for n, m in model.named_modules() if "layers" in n and m._get_name() == "Linear"
    ]
    full = FullRank(model, lora)
    assert full.names == ("model.layers.1.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(full.names) and full.parameter_count() == 32 * 32 + 32 * 64
    weight = full.params[full.names[0]]
    with torch.no_grad():
        weight.add_(1.0)
    with full.reference():
        assert torch.equal(weight, full.state()["reference"][full.names[0]])  # the base values, swapped in
    assert torch.equal(weight, full.tensors()[full.names[0]])  # and swapped back
    full.reset_reference()
    assert torch.equal(full.state()["reference"][full.names[0]], weight.detach())


def test_a_push_completes_the_fused_layers_it_touches():
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    pushed = dict.fromkeys(
        ["model.layers.1.self_attn.k_proj.weight", "model.layers.2.mlp.down_proj.weight"], torch.ones(1)
    )
    assert _with_siblings(pushed, packed) == sorted(
        [
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.1.self_attn.q_proj.weight",
            "model.layers.1.self_attn.v_proj.weight",
            "model.layers.2.mlp.down_proj.weight",
        ]
    )


def test_pick_top_takes_the_largest_relative_updates_in_model_order():
    from launch.tools.inspect import pick_top
    from learner.update_map import ModuleUpdate

    def row(name: str, rel: float) -> ModuleUpdate:
        return ModuleUpdate(name, 0, name, 100, 8, rel, 1.0, rel, 1.0, 0.0)

    rows = [row("a", 0.1), row("b", 0.5), row("c", 0.3), row("d", 0.05)]
    assert pick_top(rows, 0.5) == ["b", "c"] and pick_top(rows, 0.01) == ["b"] and pick_top(rows, 1.0) == list("abcd")


def test_lora_mode_adapts_the_same_modules_full_mode_trains():
    from learner.subnetwork import with_adapter

    for target in ("all-linear", ["k_proj", "mlp.down_proj"], r".*\.(q|v)_proj"):
        lora = LoraConfig(target_modules=target, layers=[0, 2])
        adapted = {
            n.split(".lora_A")[0].removeprefix("base_model.model.")
            for n, _ in with_adapter(_tiny_llama(), lora).named_parameters()
            if "lora_A" in n
        }
        assert adapted == set(chosen_modules(_tiny_llama(), lora)) and adapted
