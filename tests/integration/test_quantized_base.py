"""A quantized frozen base (model.quantization int8 / nf4) under the learner, on the tiny built-in model, in-process.

LoRA trains on it (completions with a positive advantage become more likely), its linear weights take a fraction of
the memory (measured from the tensors the model holds), and the base written for the engines (int8's codes, nf4's
dequantized values) computes what the learner computes: transformers + peft on that directory, with the learner's
exported adapter, gives the learner's logprobs; and through `prolora train`, vLLM serving that directory agrees with the
learner at start and at every probe.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from learner.learner import Learner
from learner.quantized import ensure_served_base, quantized_modules
from shared.config import load_config
from shared.records import AdapterPayload
from shared.served_base import served_base
from tests.integration.test_learner_algos import _batch
from tests.integration.test_report_eval_cli import _prolora

VARIED_REWARD = """
def varied(prompts, completions, **kwargs):
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]  # the built-in task's are messages
    return [sum(map(ord, t)) % 7 / 7 for t in texts]
"""
"""Differs between any two different completions (the briefly warm-started test model's are often all one digit
long, so a length reward would give a group no spread)."""

BYTES_PER_WEIGHT = {"int8": 1.0, "nf4": 0.5}
"""Storage per quantized weight, before scales."""


def _learner(model: Path, kind: str) -> Learner:
    c = load_config(overrides=["train.lr=0.005", "algo.is_cap=null", "train.num_threads=1"])
    return Learner(
        str(model), lora=c.lora, train=c.train, algo=c.algo, temperature=1.0, max_new_tokens=6, quantization=kind
    )


def _peft_logprobs(model_dir: str, payload: AdapterPayload, prompts, completions) -> list[list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in payload.files:
            (Path(tmp) / name).write_bytes(data)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp)
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions, strict=True):
            ids = torch.tensor([list(p) + list(c)])
            logp_T = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])
            out.append(logp_T[len(p) - 1 :, 0].tolist())
    return out


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_lora_trains_on_a_quantized_base_the_engines_can_serve(tiny_model, tmp_path, kind):
    plain, learner = _learner(tiny_model, "none"), _learner(tiny_model, kind)
    assert len(quantized_modules(learner.model)) == 7 * plain.model.config.num_hidden_layers
    full, small = plain.memory(), learner.memory()
    # float32 weights become 1 byte (int8) or half a byte (nf4) each, plus their scales; the output head stays float32.
    head = plain.model.get_output_embeddings().weight
    head_bytes = head.numel() * head.element_size()
    ratio = (small["linear_bytes"] - head_bytes) / (full["linear_bytes"] - head_bytes)
    assert BYTES_PER_WEIGHT[kind] / 4 < ratio < BYTES_PER_WEIGHT[kind] / 4 + 0.05
    assert full["base_bytes"] - small["base_bytes"] == full["linear_bytes"] - small["linear_bytes"]

    batch = _batch(tiny_model)
    prompts = [s.prompt_token_ids for s in batch.samples]
    completions = [s.completion_token_ids for s in batch.samples]
    before = learner.completion_logprobs(prompts, completions)
    for _ in range(3):
        learner.train_step(batch)
    after = learner.completion_logprobs(prompts, completions)
    gain = [sum(a) - sum(b) for a, b in zip(after, before, strict=True)]
    # The update follows the advantages: up for completions with a positive one, down for the others.
    assert sum(g * s.advantage for s, g in zip(batch.samples, gain, strict=True)) > 0.5
    assert max(g for s, g in zip(batch.samples, gain, strict=True) if s.advantage > 0) > 0

    payload = learner.export_adapter()
    holds = served_base(kind).holds  # int8: the learner's codes; nf4: their dequantized values
    served = ensure_served_base(str(tiny_model), kind, "float32", tmp_path, holds=holds)
    assert ensure_served_base(str(tiny_model), kind, "float32", tmp_path, holds=holds) == served  # written once
    engine_side = _peft_logprobs(served, payload, prompts, completions)
    for a, b in zip(after, engine_side, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    original = _peft_logprobs(str(tiny_model), payload, prompts, completions)  # the unquantized base is another model
    assert max(abs(x - y) for a, b in zip(after, original, strict=True) for x, y in zip(a, b, strict=True)) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["int8"])  # nf4's dequantized serving: the per-architecture test below
def test_a_short_run_on_a_quantized_base_serves_what_the_learner_trains(tiny_model, tmp_path, kind):
    """`prolora train` with model.quantization: the engines serve nf4's dequantized base or int8's own codes (vLLM's
    torchao method), written by each worker on its node, so at start they agree with the learner's quantized base,
    and every hot-loaded adapter passes the probe at the float32 tolerance."""
    home = tmp_path
    (home / "varied_reward.py").write_text(VARIED_REWARD)  # moves the adapter even when no answer is right
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(home), os.environ.get("PYTHONPATH", "")])}
    env["PROLORA_CACHE"] = str(home / "cache")  # the served base is written here, by the engine's worker
    sets = [
        f"model.path={tiny_model}",
        f"model.quantization={kind}",
        "eval.size=8",
        "rollout.prompts_per_step=4",
        "rewards.functions=[{name: exact_match}, {name: 'varied_reward:varied', weight: 0.1}]",
    ]
    run_dir = home / "r"
    proc = _prolora(
        "train", "--steps", "2", "--run-dir", str(run_dir), *(a for s in sets for a in ("--set", s)), env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["engine_base_gap"] < 1e-4
    assert records[0]["engine_quantization"] == served_base(kind).engine_quantization
    steps = [r for r in records if "reward_mean" in r]
    assert len(steps) == 2 and steps[1]["probe_max_diff"] < 1e-3 and steps[1]["grad_norm"] > 0


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama", "lfm2"])
def test_an_nf4_base_of_each_real_architecture_trains_and_is_served_as_the_learner_computes(
    real_models, arch, tmp_path
):
    """The hub architectures (BPE tokenizer with a ChatML template, two EOS ids; LFM2's convolution blocks): their
    linears are quantized, LoRA trains on top, and the served base with the exported adapter gives the learner's
    logprobs."""
    model = real_models[arch]
    learner = _learner(model, "nf4")
    assert quantized_modules(learner.model)
    batch = _batch(model)
    prompts = [s.prompt_token_ids for s in batch.samples]
    completions = [s.completion_token_ids for s in batch.samples]
    learner.train_step(batch)
    after = learner.completion_logprobs(prompts, completions)
    served = ensure_served_base(str(model), "nf4", "float32", tmp_path)
    for a, b in zip(after, _peft_logprobs(served, learner.export_adapter(), prompts, completions), strict=True):
        assert a == pytest.approx(b, abs=1e-4)
