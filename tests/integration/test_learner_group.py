"""A data-parallel learner group (`train.num_learners`) on real Ray actors and a real torch.distributed gloo group.

Two ranks make the same updates as one learner on the whole batch: the adapter after several steps, with several
minibatches and passes, the KL and entropy terms on and truncated rows masked, equals an in-process learner's to
1e-5 (float32). A checkpoint of the two-rank group resumes in a one-rank group and continues exactly. With the base
sharded across the two ranks (train.shard_base, FSDP2) each rank holds half of the decoder layers' weights and the
updates, the reference (adapter off, then a reset's adapter), the probe and the checkpoint are still a single
learner's. A rank that dies stops the run cleanly: the group kills its other ranks (which would wait in a collective
forever) and the driver names the last checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load as load_safetensors

from launch.actors import start_learner
from launch.checkpoint import LearnerDied, save_checkpoint
from launch.driver import stop_if_learner_dies
from learner.learner import Learner
from shared.config import Config, load_config
from shared.records import TrainBatch, TrainSample

VOCAB = 1000  # the qwen2_path fixture's (tests/conftest.py)
OVERRIDES = [
    "train.num_threads=1",
    "train.minibatches=3",
    "train.epochs=2",
    "train.micro_batch_tokens=40",
    "train.lr=0.002",
    "algo.kl_coef=0.1",
    "algo.entropy_coef=0.05",
    "algo.mask_truncated=true",
    "algo.loss_agg=token_mean",
    "lora.rank=4",
]


def _config(path: Path, learners: int, *extra: str) -> Config:
    return load_config(overrides=[f"model.path={path}", f"train.num_learners={learners}", *OVERRIDES, *extra])


def _batch(step: int, n: int = 10) -> TrainBatch:
    g = torch.Generator().manual_seed(step)
    rows = []
    for i in range(n):
        p, c = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(1, 11, (1,), generator=g))
        rows.append(
            TrainSample(
                tuple(torch.randint(0, VOCAB, (p,), generator=g).tolist()),
                tuple(torch.randint(0, VOCAB, (c,), generator=g).tolist()),
                tuple((-torch.rand(c, generator=g) * 8).tolist()),
                advantage=float(torch.randn(1, generator=g)),
                adapter_version=step - 1,
                truncated=i % 4 == 3,
            )
        )
    return TrainBatch(tuple(rows), step=step)


def _reference_learner(path: Path) -> Learner:
    """The single learner every group must match, in this process. Its LoRA B starts random rather than zero, so the
    policy is not the reference from the first step (the KL term acts) and LoRA A gets gradients."""
    c = _config(path, 1)
    learner = Learner(
        str(path),
        lora=c.lora,
        train=c.train,
        algo=c.algo,
        temperature=c.rollout.temperature,
        max_new_tokens=c.rollout.max_new_tokens,
        dtype=c.model.dtype,
        seed=c.run.seed,
    )
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return learner


def _assert_same_adapter(blob: bytes, expected: bytes, key: str = "adapter") -> None:
    """The `key` adapter of two learner states (Learner.state) agree to 1e-5, as whole tensors."""
    got, want = (torch.load(io.BytesIO(b), weights_only=False)[key] for b in (blob, expected))
    assert all(type(t) is torch.Tensor for t in got.values())  # never a rank's shard (a DTensor)
    _assert_close(got, want)


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        diff = (got[name] - want[name]).abs().max().item()
        assert diff <= 1e-5 + 1e-5 * want[name].abs().max().item(), (name, diff)


def test_two_ranks_train_as_one_and_resume_on_one(qwen2_path, ray_session):
    single = _reference_learner(qwen2_path)
    start = single.state()
    stats_single = [single.train_step(_batch(step)) for step in (1, 2, 3)]
    after_3 = single.state()
    stats_single.append(single.train_step(_batch(4)))
    after_4 = single.state()

    pair = start_learner(_config(qwen2_path, 2), str(qwen2_path))
    pair.load_state(start)
    stats_pair = [pair.train_step(_batch(step)) for step in (1, 2, 3)]
    assert pair.current_version() == 3
    _assert_same_adapter(pair.state(), after_3)
    for a, b in zip(stats_pair, stats_single[:3], strict=True):
        assert a.optimizer_steps == b.optimizer_steps == 6
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-6)
        assert a.kl == pytest.approx(b.kl, rel=1e-4, abs=1e-7) and b.kl > 0
        assert a.entropy == pytest.approx(b.entropy, rel=1e-5)
    timings = pair.timings()
    assert len(timings) == 2 and all(0 < t["comm_s"] < t["train_s"] for t in timings)

    one = start_learner(_config(qwen2_path, 1), str(qwen2_path))  # a resume with fewer ranks
    assert one.load_state(pair.state()) == 3
    pair.kill()
    stats_one = one.train_step(_batch(4))
    _assert_same_adapter(one.state(), after_4)
    assert stats_one.loss == pytest.approx(stats_single[3].loss, rel=1e-4, abs=1e-6)
    one.kill()


def test_a_dead_rank_stops_the_group_naming_the_last_checkpoint(qwen2_path, ray_session, tmp_path):
    group = start_learner(_config(qwen2_path, 2), str(qwen2_path))
    group_id = group.placement.id.hex()
    group.train_step(_batch(1))
    save_checkpoint(tmp_path, 1, group.state(), {"step": 1}, {})
    ray.kill(group.ranks[1])  # rank 0 will wait in the step's first collective for a peer that never comes

    with pytest.raises(LearnerDied) as stop, stop_if_learner_dies(group, tmp_path):
        group.train_step(_batch(2))

    assert f"the last checkpoint is of step 1; continue with: prolora train --resume {tmp_path}" in str(stop.value)
    assert group.broken and not group.alive()
    with pytest.raises(ray.exceptions.RayActorError):  # the surviving rank was killed, not left waiting
        ray.get(group.ranks[0].current_version.remote(), timeout=60)
    assert ray.util.placement_group_table()[group_id]["state"] == "REMOVED"  # its CPUs are free again


def test_a_sharded_base_holds_half_the_layers_per_rank_and_trains_as_one_learner(qwen2_path, ray_session):
    prompts = [[5, 6, 7], [8, 9]]
    # Step 2 has 3 rows and 3 minibatches: one row per optimizer step, so rank 1 has no rows and only joins passes.
    batches = [_batch(1), _batch(2, n=3), _batch(3)]
    single = _reference_learner(qwen2_path)
    start = single.state()
    stats_single = [single.train_step(b) for b in batches]
    single.reset_reference()  # the reference becomes an adapter added after sharding
    stats_single.append(single.train_step(_batch(4)))
    want_export, want_base = single.export_adapter(prompts), single.base_probe(prompts)

    group = start_learner(
        _config(qwen2_path, 2, "train.shard_base=true", "train.gradient_checkpointing=true"), str(qwen2_path)
    )
    resident = [ray.get(r.resident_parameters.remote()) for r in group.ranks]
    layers = sum(p.numel() for n, p in single.model.named_parameters() if ".layers." in n and "lora_" not in n)
    total = resident[0]["total"]
    assert sum(r["local"] for r in resident) == 2 * total - layers  # the layers' weights are split, not copied
    assert all(abs(r["local"] - (total - layers / 2)) <= 0.01 * layers for r in resident)
    group.load_state(start)
    stats_group = [group.train_step(b) for b in batches]
    group.reset_reference()
    stats_group.append(group.train_step(_batch(4)))
    export = ray.get(group.export_adapter(prompts))
    base = ray.get(group.base_probe(prompts))

    for a, b in zip(stats_group, stats_single, strict=True):
        assert a.optimizer_steps == b.optimizer_steps
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-6)
        assert a.kl == pytest.approx(b.kl, rel=1e-4, abs=1e-7)
    state = group.state()
    _assert_same_adapter(state, single.state())
    _assert_same_adapter(state, single.state(), key="reference")
    files, want_files = dict(export.files), dict(want_export.files)
    _assert_close(
        load_safetensors(files["adapter_model.safetensors"]), load_safetensors(want_files["adapter_model.safetensors"])
    )
    assert export.probe.token_ids == want_export.probe.token_ids
    assert export.probe.base_token_ids == want_export.probe.base_token_ids == base.token_ids == want_base.token_ids
    flat = [x for row in export.probe.logprobs for x in row]
    assert flat == pytest.approx([x for row in want_export.probe.logprobs for x in row], abs=1e-5)
    group.kill()
