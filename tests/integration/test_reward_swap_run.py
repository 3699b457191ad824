"""Swapping the reward set of a running job through rewards.yaml.

- `RewardSwap.poll` against real reward actors: an unusable file keeps the set in force; a valid one is installed on
  every actor and recorded; a change to a key other than `functions` is ignored.
- A real `prolora train` run (subprocess: real Ray, vLLM, peft): the test edits rewards.yaml while the run goes on
  and checks that the new set took effect exactly at the step metrics.jsonl records, in the step metrics and in
  every rollout row. The test waits on metrics.jsonl rather than on time, so a slow machine only makes it slower.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import yaml

from launch.actors import start_reward_actors
from learner.rewards.pool import RewardPool
from learner.rewards.swap import REWARDS_FILE, RewardSwap
from shared.config import RewardSpec, load_config
from shared.metrics import MetricsWriter, read_metrics
from shared.records import RewardBatch
from tests.live_run import SWAPPED_SET, assert_swapped_at, newest_step, wait_for_step, write_rewards

NEW_SET = SWAPPED_SET


def test_poll_installs_valid_sets_on_every_actor_and_keeps_the_old_set_otherwise(tmp_path, ray_session, caplog):
    config = load_config(overrides=["rewards.num_actors=2"])
    swap = RewardSwap.open(tmp_path, config)
    actors = start_reward_actors(config, swap.specs)
    pool = RewardPool(actors, swap.specs)
    metrics = MetricsWriter(tmp_path / "metrics.jsonl")
    batch = RewardBatch(("p",), ("a b c a b c",), {"answer": ("a b c a b c",)})

    def names_in_force() -> list[set[str]]:
        return [set(ray_session.get(a.score.remote(batch)).components) for a in actors]

    assert not swap.poll(1, pool, metrics)  # unchanged file
    with caplog.at_level(logging.WARNING, logger="learner.rewards.swap"):
        write_rewards(swap.path, [{"name": "exact_match"}, {"name": "nope"}])
        assert not swap.poll(2, pool, metrics)
        assert "unknown reward 'nope'" in caplog.text and "keeping rewards exact_match x1" in caplog.text
        assert names_in_force() == [{"exact_match"}] * 2

        write_rewards(swap.path, NEW_SET, timeout_s=5.0)
        assert swap.poll(3, pool, metrics)
        assert "ignoring changes to timeout_s" in caplog.text
    assert names_in_force() == [{"exact_match", "repetition"}] * 2
    assert swap.specs == [RewardSpec(**spec) for spec in NEW_SET]
    metrics.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"reward_swap": True, "step": 3, "rewards": NEW_SET}]
    for actor in actors:
        ray_session.kill(actor)


@pytest.mark.slow
def test_reward_swap_during_a_real_run_takes_effect_at_the_recorded_step(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    steps = 14  # the swap lands by step 6 (see the waits below); the rest is margin
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "train",
            "--steps",
            str(steps),
            "--run-dir",
            str(run_dir),
            "--set",
            f"model.path={tiny_model}",
            "--set",
            "eval.size=8",
            "--set",
            "eval.n_samples=8",
            "--set",
            "rollout.prompts_per_step=2",
            "--set",
            "rollout.group_size=4",
            "--set",
            "log.save_adapter_every=0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        seen = wait_for_step(metrics, 1, proc)
        write_rewards(run_dir / REWARDS_FILE, [{"name": "nope"}])
        seen = wait_for_step(metrics, seen + 2, proc)  # the step after `seen` polled after the bad write
        write_rewards(run_dir / REWARDS_FILE, NEW_SET)
        # Read again once the file is written: the run may have moved on since `seen` (a stalled test process).
        written_after, recorded_by_then = seen, newest_step(metrics)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "unknown reward 'nope'" in stderr and "keeping rewards exact_match x1" in stderr

    at = assert_swapped_at(run_dir, steps, rows_per_step=2 * 4)
    # Step recorded_by_then + 1 may have polled before the write; step recorded_by_then + 2 polls after it.
    assert written_after < at <= recorded_by_then + 2 and at < steps, (written_after, recorded_by_then, at)
    assert yaml.safe_load((run_dir / REWARDS_FILE).read_text())["functions"] == NEW_SET
