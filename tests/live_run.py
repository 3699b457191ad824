"""Helpers for tests that drive a live `prolora train` subprocess: follow its metrics, edit its rewards.yaml."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml


def write_rewards(path: Path, functions: list[dict], **other) -> None:
    """Replace rewards.yaml atomically, as an editor that saves via rename does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"functions": functions, **other}))
    tmp.replace(path)


def records(metrics: Path) -> list[dict]:
    """The records of a metrics.jsonl that a run may be appending to (a half-written last line is left out)."""
    if not metrics.exists():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]


def newest_step(metrics: Path) -> int:
    """The newest step whose record metrics.jsonl holds (0 before the first)."""
    steps = [r["step"] for r in records(metrics) if "reward_mean" in r]
    return steps[-1] if steps else 0


def wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, timeout_s: float = 600) -> int:
    """Block until metrics.jsonl has a step record >= `step`; returns the newest step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        newest = newest_step(metrics)
        if newest >= step:
            return newest
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()[1][-3000:]}"
        time.sleep(0.05)
    raise TimeoutError(f"no step {step} within {timeout_s}s")


SWAPPED_SET = [{"name": "exact_match", "weight": 2.0}, {"name": "repetition", "weight": 0.5}]
"""The set the live-run tests swap in over the default exact_match x1."""


def assert_swapped_at(run_dir: Path, steps: int, rows_per_step: int) -> int:
    """Check that the run swapped exact_match x1 for SWAPPED_SET once, and that every step record and every rollout
    row from the recorded step on (and none before) was scored with it; returns that step."""
    lines = records(run_dir / "metrics.jsonl")
    (swap,) = [r for r in lines if r.get("reward_swap")]
    at = swap["step"]
    assert swap["rewards"] == SWAPPED_SET
    step_records = [r for r in lines if "reward_mean" in r]
    assert [r["step"] for r in step_records] == list(range(1, steps + 1))
    for r in step_records:
        assert ("reward/repetition" in r) == (r["step"] >= at)
        assert "reward/exact_match" in r

    table = pq.read_table(run_dir / "rollouts")  # one schema across the swap: the new column is there
    assert table.num_rows == steps * rows_per_step
    for row in table.to_pylist():
        em, rep = row["reward/exact_match"], row["reward/repetition"]
        if row["step"] < at:
            assert rep is None and row["reward"] == pytest.approx(em)
        else:
            assert rep is not None and row["reward"] == pytest.approx(2.0 * em + 0.5 * rep)
    return at
