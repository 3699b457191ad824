"""Swapping the reward set of a running job through rewards.yaml.

- `RewardSwap.poll` against real reward actors: an unusable file keeps the set in force; a valid one is installed on
  every actor and recorded; a change to a key other than `functions` is ignored.
- A real `prolora train` run (subprocess: real Ray, vLLM, peft): the test edits rewards.yaml while the run goes on
  and checks that the new set took effect exactly at the step metrics.jsonl records, in the step metrics and in
  every rollout row. The test waits on metrics.jsonl rather than on time, so a slow machine only makes it slower.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from launch.actors import start_reward_actors
from launch.fleet import RewardPool
from launch.reward_swap import REWARDS_FILE, RewardSwap
from shared.config import RewardSpec, load_config
from shared.metrics import MetricsWriter, read_metrics
from shared.records import RewardBatch

NEW_SET = [{"name": "exact_match", "weight": 2.0}, {"name": "repetition", "weight": 0.5}]


def _write_rewards(path: Path, functions: list[dict], **other) -> None:
    """Replace rewards.yaml atomically, as an editor that saves via rename does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"functions": functions, **other}))
    tmp.replace(path)


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
    with caplog.at_level(logging.WARNING, logger="launch.reward_swap"):
        _write_rewards(swap.path, [{"name": "exact_match"}, {"name": "nope"}])
        assert not swap.poll(2, pool, metrics)
        assert "unknown reward 'nope'" in caplog.text and "keeping rewards exact_match x1" in caplog.text
        assert names_in_force() == [{"exact_match"}] * 2

        _write_rewards(swap.path, NEW_SET, timeout_s=5.0)
        assert swap.poll(3, pool, metrics)
        assert "ignoring changes to timeout_s" in caplog.text
    assert names_in_force() == [{"exact_match", "repetition"}] * 2
    assert swap.specs == [RewardSpec(**spec) for spec in NEW_SET]
    metrics.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"reward_swap": True, "step": 3, "rewards": NEW_SET}]
    for actor in actors:
        ray_session.kill(actor)


def _wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, timeout_s: float = 600) -> int:
    """Block until metrics.jsonl has a step record >= `step`; returns the newest step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        steps = [r["step"] for r in _records(metrics) if "reward_mean" in r]
        if steps and steps[-1] >= step:
            return steps[-1]
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()[1][-3000:]}"
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} within {timeout_s}s")


def _records(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    # The last line may be half-written while the run appends to it.
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]


def test_reward_swap_during_a_real_run_takes_effect_at_the_recorded_step(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    steps = 14  # the swap lands by step 6 (see the waits below); the rest is margin
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "train", "--steps", str(steps), "--run-dir", str(run_dir),
         "--set", f"model.path={tiny_model}", "--set", "eval.size=8", "--set", "eval.n_samples=8",
         "--set", "rollout.prompts_per_step=2", "--set", "rollout.group_size=4", "--set", "log.save_adapter_every=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        seen = _wait_for_step(metrics, 1, proc)
        _write_rewards(run_dir / REWARDS_FILE, [{"name": "nope"}])
        seen = _wait_for_step(metrics, seen + 2, proc)  # the step after `seen` polled after the bad write
        _write_rewards(run_dir / REWARDS_FILE, NEW_SET)
        written_after = seen
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "unknown reward 'nope'" in stderr and "keeping rewards exact_match x1" in stderr

    records = read_metrics(metrics)
    (swap,) = [r for r in records if r.get("reward_swap")]
    at = swap["step"]
    assert swap["rewards"] == NEW_SET
    assert written_after < at <= written_after + 2 and at < steps, (written_after, at)
    step_records = [r for r in records if "reward_mean" in r]
    assert [r["step"] for r in step_records] == list(range(1, steps + 1))
    for r in step_records:
        assert ("reward/repetition" in r) == (r["step"] >= at)
        assert "reward/exact_match" in r

    table = pq.read_table(run_dir / "rollouts")  # one schema across the swap: the new column is there
    assert table.num_rows == steps * 2 * 4
    for row in table.to_pylist():
        em, rep = row["reward/exact_match"], row["reward/repetition"]
        if row["step"] < at:
            assert rep is None and row["reward"] == pytest.approx(em)
        else:
            assert rep is not None and row["reward"] == pytest.approx(2.0 * em + 0.5 * rep)
    assert yaml.safe_load((run_dir / REWARDS_FILE).read_text())["functions"] == NEW_SET
