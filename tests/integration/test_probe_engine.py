"""The start-up numerics check and the served-adapter probe against a real vLLM engine and a real peft learner, on
the tiny random models of the architectures users train (tests/real_models.py).

Engine and learner run in this process (no Ray: the probe's logic is what is tested; the fleet's Ray plumbing is in
test_hotload.py). Per architecture: the base-model gap is small, a correctly served adapter passes, an engine
holding the previous version's weights fails as a stale adapter, and one serving a zero adapter (the base model)
fails as a missing adapter. LFM2 runs in the fast tier; the others are slow.
"""

from __future__ import annotations

import gc

import pytest
import torch

from learner.learner import Learner
from rollout.probe import StaleAdapterError, base_gap, check_probe
from rollout.worker import RolloutWorker
from shared.config import AlgoConfig, LoraConfig, TrainConfig
from shared.records import AdapterPayload

TOLERANCE = 0.02
"""Below the default rollout.probe_tolerance (0.05 for float32), which these random adapters' version-to-version
change would not always exceed on every architecture; the base gap measured here is far below either."""
SCALE = 0.1
"""Spread of the random LoRA A and B weights of a test version: an effect on logprobs well above TOLERANCE, while
the greedy tokens stay the base model's, so a base-model engine is compared on the same tokens."""
MESSAGES = [
    [{"role": "user", "content": "What is 12 + 35?"}],
    [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 3 + 11?"}],
]


@pytest.fixture(
    scope="module", params=["lfm2", *(pytest.param(a, marks=pytest.mark.slow) for a in ("qwen2", "qwen3", "llama"))]
)
def pair(request, real_models):
    from transformers import AutoTokenizer

    path = str(real_models[request.param])
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [tokenizer.apply_chat_template(m, add_generation_prompt=True)["input_ids"] for m in MESSAGES]
    learner = Learner(
        path, lora=LoraConfig(), train=TrainConfig(), algo=AlgoConfig(), temperature=1.0, max_new_tokens=8
    )
    worker = RolloutWorker(path, max_model_len=128, max_loras=4)
    yield request.param, learner, worker, prompts
    worker.shutdown()
    del worker
    gc.collect()


def _next_version(learner: Learner, seed: int) -> None:
    """A new adapter version with random A and B (a trained adapter starts with B = 0 and moves less per step)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in learner.model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * SCALE)
    learner.version += 1


def test_engine_numerics_on_the_base_model_are_small(pair):
    arch, learner, worker, prompts = pair
    probe = learner.base_probe(prompts, 4)
    gap = base_gap(probe, [worker.probe_base(probe)])
    print(f"{arch}: base-model gap {gap:.2e}")
    assert gap < 0.01, arch


def test_probe_passes_the_served_adapter_and_names_a_stale_or_missing_one(pair):
    arch, learner, worker, prompts = pair
    zero = learner.export_adapter()  # B = 0: the adapter changes nothing, as if none were served
    _next_version(learner, seed=1)
    first = learner.export_adapter(prompts, 4)
    diff = check_probe(first.probe, [worker.load_adapter(first, keep_versions=4)], TOLERANCE)
    print(f"{arch}: engine/learner gap under the same adapter {diff:.2e}")

    _next_version(learner, seed=2)
    second = learner.export_adapter(prompts, 4)
    stale = AdapterPayload(second.version, first.files, second.probe)  # the engine would hold the previous weights
    print(f"{arch}: learner's version-to-version change on the probe tokens {_change(first, second):.2e}")
    with pytest.raises(StaleAdapterError, match="stale or wrong adapter"):
        check_probe(second.probe, [worker.load_adapter(stale, keep_versions=4)], TOLERANCE)

    missing = AdapterPayload(second.version + 1, zero.files, second.probe)
    with pytest.raises(StaleAdapterError, match="match the base model without any adapter"):
        check_probe(second.probe, [worker.load_adapter(missing, keep_versions=4)], TOLERANCE)


def _change(first: AdapterPayload, second: AdapterPayload) -> float:
    assert first.probe is not None and second.probe is not None
    pairs = zip(first.probe.logprobs, second.probe.logprobs, strict=True)
    return max(abs(x - y) for a, b in pairs for x, y in zip(a, b, strict=True))
