"""A data-parallel learner group (`train.num_learners`) on real Ray actors and a real torch.distributed gloo group.

Two ranks make the same updates as one learner on the whole batch: the adapter after several steps, with several
minibatches and passes, the KL and entropy terms on and truncated rows masked, equals an in-process learner's to
1e-5 (float32). A checkpoint of the two-rank group resumes in a one-rank group and continues exactly. A rank that
dies stops the run cleanly: the group kills its other ranks (which would wait in a collective forever) and the
driver names the last checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import ray
import torch

from launch.actors import start_learner
from launch.checkpoint import LearnerDied, save_checkpoint
from launch.driver import stop_if_learner_dies
from learner.learner import Learner
from shared.config import Config, load_config
from shared.records import TrainBatch, TrainSample

VOCAB = 1000
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


@pytest.fixture(scope="module")
def qwen2_path(tmp_path_factory) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("qwen2-group")
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def _config(path: Path, learners: int) -> Config:
    return load_config(overrides=[f"model.path={path}", f"train.num_learners={learners}", *OVERRIDES])


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


def _adapter(blob: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(blob), weights_only=False)["adapter"]


def _assert_same_adapter(blob: bytes, expected: bytes) -> None:
    got, want = _adapter(blob), _adapter(expected)
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
