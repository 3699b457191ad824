"""Updates served as weights loaded in place (real Ray, vLLM and peft): a full-rank subnetwork and DoRA.

The learner runs as a Ray actor (its payload crosses the actor boundary); the engine is a RolloutWorker built in this
process, so the test can read its layers. After one update and a push:
- subnetwork (lora.mode=full): only the chosen tensors travel; the engine's greedy logprobs equal the learner's (the
  served-weights probe, float32, tolerance 2e-3 as for adapters); every layer that got no tensor computes bit for bit
  what it computed before, and every other parameter the engine holds is bit-identical;
- DoRA: the pushed tensors equal peft's own merge (merge_and_unload of the same adapter on a fresh base), the engine's
  fused layers compute with them, and the probe passes.
"""

from __future__ import annotations

import gc
import io

import pytest
import torch
from safetensors.torch import load

from launch.actors import start_learner
from rollout.probe import check_probe, probe_prompts
from rollout.worker import AdapterNotLoaded, RolloutWorker
from shared.config import load_config
from shared.records import SamplingSpec, TrainBatch, TrainSample, WeightsPayload

PROMPTS = ["123+456=", "907+15=", "38+444="]
TOL = 2e-3


@pytest.fixture
def engine(tiny_model):
    worker = RolloutWorker(str(tiny_model), max_model_len=64, kv_cache_gib=1)
    yield worker
    worker.shutdown()
    del worker
    gc.collect()


def _train_and_export(ray, learner, engine: RolloutWorker) -> WeightsPayload:
    """One update on the engine's own samples (alternating advantages), then the payload with a probe."""
    groups = engine.generate(PROMPTS, SamplingSpec(n=4, max_tokens=6, seed=3))
    samples = tuple(
        TrainSample(g.prompt_token_ids, c.token_ids, c.logprobs, 1.0 if i % 2 else -1.0, 0)
        for g in groups
        for i, c in enumerate(g.completions)
    )
    stats = learner.train_step(TrainBatch(samples, step=1))
    assert stats.optimizer_steps == 1
    payload = ray.get(learner.export_adapter(*probe_prompts(groups, 64)))
    assert isinstance(payload, WeightsPayload) and payload.version == 1
    return payload


def _layer_outputs(worker) -> dict[str, torch.Tensor]:
    """Every linear layer's output for one fixed input, computed by the engine's own kernel (runs in the engine)."""
    from vllm.lora.layers import BaseLayerWithLoRA

    out = {}
    for name, module in worker.model_runner.get_model().named_modules():
        if isinstance(module, BaseLayerWithLoRA) and ".layers." in name:
            layer = module.base_layer
            x = torch.randn(3, layer.input_size, generator=torch.Generator().manual_seed(7))
            out[name] = layer.quant_method.apply(layer, x)
    return out


def _parameters(worker) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in worker.model_runner.get_model().named_parameters() if p.numel()}


def test_subnetwork_push_changes_only_the_chosen_tensors(tiny_model, ray_session, engine):
    chosen = ["k_proj", "down_proj"]
    config = load_config(overrides=["lora.mode=full", f"lora.target_modules={chosen}", "lora.layers=[1, 2]"])
    learner = start_learner(config, str(tiny_model))
    before_out = engine._llm.collective_rpc(_layer_outputs)[0]
    before_params = engine._llm.collective_rpc(_parameters)[0]

    payload = _train_and_export(ray_session, learner, engine)
    expected = {f"model.layers.{i}.{m}.weight" for i in (1, 2) for m in ("self_attn.k_proj", "mlp.down_proj")}
    assert set(payload.names) == expected  # only the chosen tensors travelled
    report = engine.load_adapter(payload)
    assert check_probe(payload.probe, [report], TOL) <= TOL  # the engine computes what the learner does

    after_out = engine._llm.collective_rpc(_layer_outputs)[0]
    touched = {f"model.layers.{i}.{m}" for i in (1, 2) for m in ("self_attn.qkv_proj", "mlp.down_proj")}
    for name in before_out:
        same = torch.equal(before_out[name], after_out[name])
        assert same != (name in touched), f"{name}: changed={not same}, pushed={name in touched}"
    after_params = engine._llm.collective_rpc(_parameters)[0]
    assert before_params.keys() == after_params.keys()
    assert all(torch.equal(before_params[n], after_params[n]) for n in before_params)  # norms, embeddings, head

    groups = engine.generate(PROMPTS[:1], SamplingSpec(n=2, max_tokens=4, seed=1))
    assert {c.adapter_version for c in groups[0].completions} == {1}
    with pytest.raises(AdapterNotLoaded):
        engine.generate(PROMPTS[:1], SamplingSpec(n=1, max_tokens=2), version=0)  # the base is gone, loudly
    learner.kill()


def test_dora_push_serves_peft_merged_weights(tiny_model, ray_session, engine):
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    config = load_config(overrides=["lora.use_dora=true", "train.lr=0.02"])
    learner = start_learner(config, str(tiny_model))
    payload = _train_and_export(ray_session, learner, engine)
    state = torch.load(io.BytesIO(learner.state()), weights_only=False)

    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", use_dora=True, task_type="CAUSAL_LM"),
    )
    set_peft_model_state_dict(peft_model, state["adapter"])
    merged = peft_model.merge_and_unload().state_dict()
    pushed = load(payload.tensors)
    assert len(pushed) == 4 * 7  # q, k, v, o, gate, up, down in each of the 4 layers
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    for name, tensor in pushed.items():
        torch.testing.assert_close(tensor, merged[name], rtol=0, atol=1e-6)
        assert not torch.equal(tensor, base[name])  # the magnitude or direction moved

    report = engine.load_adapter(payload)
    assert check_probe(payload.probe, [report], TOL) <= TOL
    # The engine's fused qkv layer of layer 0 computes with W' (its three merged shards stacked).
    W_OI = torch.cat([merged[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"])
    out = engine._llm.collective_rpc(_layer_outputs)[0]["model.layers.0.self_attn.qkv_proj"]
    x = torch.randn(3, W_OI.shape[1], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, x @ W_OI.T, rtol=0, atol=1e-5)
    learner.kill()
