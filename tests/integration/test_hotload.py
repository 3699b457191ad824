"""The engine really serves the adapter the learner just trained (real Ray, vLLM and peft).

After a learner update and a hot-load, the rollout worker's greedy tokens and their logprobs for fixed prompts must
match transformers + peft loading the same adapter files independently, and must differ from the previous
version. Tolerance: 2e-3 absolute on token logprobs (both sides run float32 on the CPU; the residue is kernel
summation order).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from launch.actors import start_learner, start_rollout_workers
from shared.config import load_config
from shared.records import SamplingSpec, TrainBatch, TrainSample

PROMPTS = ["123+456=", "907+15=", "38+444="]
GREEDY = SamplingSpec(n=1, max_tokens=6, temperature=0.0)
TOL = 2e-3


@pytest.fixture(scope="module")
def fleet(tiny_model, ray_session):
    config = load_config(overrides=["train.lr=0.05", "rollout.num_workers=2", "rollout.max_loras=3"])
    workers = start_rollout_workers(config, str(tiny_model))
    learner = start_learner(config, str(tiny_model))
    yield ray_session, workers, learner
    for actor in [*workers, learner]:
        ray_session.kill(actor)


def _peft_logprobs(model_dir: Path, adapter_files, prompt_ids, completion_ids) -> tuple[list[float], list[int]]:
    """Logprobs of completion_ids under base + adapter, loaded by plain transformers + peft, and the argmax token
    at every completion position (teacher-forced greedy decoding)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in adapter_files:
            (Path(tmp) / name).write_bytes(data)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tmp)
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    per_token = logp.gather(-1, targets[:, None])[:, 0]
    start = len(prompt_ids) - 1
    return per_token[start:].tolist(), logp.argmax(-1)[start:].tolist()


def _update(ray, learner, workers, advantage_sign: float):
    """One learner update on the workers' own samples, then hot-load the new adapter everywhere."""
    groups = ray.get(workers[0].generate.remote(PROMPTS, SamplingSpec(n=4, max_tokens=6, seed=3)))
    samples = tuple(
        TrainSample(g.prompt_token_ids, c.token_ids, c.logprobs, advantage_sign * (1.0 if i % 2 else -1.0), 0)
        for g in groups
        for i, c in enumerate(g.completions)
    )
    ray.get(learner.train_step.remote(TrainBatch(samples, step=1)))
    payload = ray.get(learner.export_adapter.remote())
    ray.get([w.load_adapter.remote(payload, 2) for w in workers])
    return payload


def test_hot_loaded_adapter_matches_peft_and_differs_from_previous(fleet, tiny_model):
    ray, workers, learner = fleet
    before = ray.get(workers[0].generate.remote(PROMPTS, GREEDY))
    payload = _update(ray, learner, workers, advantage_sign=1.0)

    for worker in workers:
        after = ray.get(worker.generate.remote(PROMPTS, GREEDY))
        for group in after:
            completion = group.completions[0]
            assert completion.adapter_version == payload.version == 1
            expected, greedy = _peft_logprobs(tiny_model, payload.files, group.prompt_token_ids, completion.token_ids)
            assert len(expected) == len(completion.logprobs)
            assert max(abs(a - b) for a, b in zip(expected, completion.logprobs, strict=True)) < TOL
            # The engine's greedy tokens are peft's argmax at every position: the served policy is this one.
            assert tuple(greedy) == completion.token_ids
        changed = [
            o.completions[0].token_ids != n.completions[0].token_ids
            or max(abs(a - b) for a, b in zip(o.completions[0].logprobs, n.completions[0].logprobs, strict=False))
            > 1e-2
            for o, n in zip(before, after, strict=True)
        ]
        assert any(changed), "the served policy did not change after a learner update"


def test_learner_logprobs_match_engine_after_second_version(fleet):
    ray, workers, learner = fleet
    _update(ray, learner, workers, advantage_sign=-1.0)
    groups = ray.get(workers[1].generate.remote(PROMPTS, SamplingSpec(n=2, max_tokens=6, seed=7)))
    prompts = [list(g.prompt_token_ids) for g in groups for _ in g.completions]
    completions = [list(c.token_ids) for g in groups for c in g.completions]
    learner_lp = ray.get(learner.completion_logprobs.remote(prompts, completions))
    engine_lp = [list(c.logprobs) for g in groups for c in g.completions]
    for a, b in zip(learner_lp, engine_lp, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOL


def test_old_versions_are_unloaded(fleet):
    ray, workers, learner = fleet
    _update(ray, learner, workers, advantage_sign=1.0)
    _update(ray, learner, workers, advantage_sign=-1.0)
    version = ray.get(learner.export_adapter.remote()).version
    for worker in workers:
        assert ray.get(worker.loaded_versions.remote()) == [version - 1, version]
