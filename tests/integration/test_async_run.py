"""Asynchronous rollouts through the real `prolora train` (real Ray, vLLM and peft on the CPU).

With rollout.max_staleness = k, every rollout of step s comes from an adapter version in [s-1-k, s-1], the metrics
say so (staleness_max <= k), and the pipeline really overlapped (some step trained on a stale batch). A run
stopped by SIGINT while batches are made ahead exits cleanly with a checkpoint, and its resume trains the same
prompts at every step as the uninterrupted run: the prefetched, untrained batches are drawn again. A reward swap
through rewards.yaml and prompt retirement keep their documented timing while batches are made ahead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from learner.rewards.swap import REWARDS_FILE
from shared.chat import prompt_key
from tests.live_run import SWAPPED_SET, assert_swapped_at, newest_step, wait_for_step, write_rewards

pytestmark = pytest.mark.slow  # whole training runs (or a Ray cluster) per test

STEPS = 5


OVERRIDES = [
    "eval.size=8", "eval.n_samples=8", "eval.every=0", "rollout.prompts_per_step=4", "rollout.group_size=4",
    "run.checkpoint_every=1", "log.save_adapter_every=0",
]  # fmt: skip


def _args(tiny_model, run_dir, k: int, steps: int = STEPS, extra: tuple[str, ...] = ()) -> list[str]:
    sets = [f"model.path={tiny_model}", *OVERRIDES, f"rollout.max_staleness={k}", f"rollout.max_loras={k + 1}", *extra]
    command = ["train", "--steps", str(steps), "--run-dir", str(run_dir)]
    return [sys.executable, "-m", "launch.cli", *command, *[arg for s in sets for arg in ("--set", s)]]


def _step_records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "reward_mean" in r]


def _rollouts(run_dir) -> list[dict]:
    return pq.read_table(run_dir / "rollouts", columns=["step", "prompt", "adapter_version"]).to_pylist()


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """One uninterrupted run per k."""
    out = {}
    for k in (1, 2):
        run_dir = tmp_path_factory.mktemp(f"async{k}") / "run"
        proc = subprocess.run(_args(tiny_model, run_dir, k), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[k] = run_dir
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_every_sample_is_within_k_versions_and_some_step_was_stale(runs, k):
    records = _step_records(runs[k])
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        assert 0 <= r["staleness_mean"] <= r["staleness_max"] <= k
        assert r["adapter_version"] == r["step"] - 1 - r["staleness_max"]
        assert r["wait_s"] >= 0 and r["gen_s"] > 0 and r["train_s"] > 0 and r["step_s"] >= r["train_s"]
    assert any(r["staleness_max"] >= 1 for r in records), "no step trained on a stale batch: nothing overlapped"
    for row in _rollouts(runs[k]):
        assert row["step"] - 1 - k <= row["adapter_version"] <= row["step"] - 1, row


def test_sigint_stops_cleanly_and_resume_keeps_the_data_order(runs, tiny_model, tmp_path):
    k, run_dir = 2, tmp_path / "stopped"
    proc = subprocess.Popen(_args(tiny_model, run_dir, k), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if (run_dir / "metrics.jsonl").exists() and len(_step_records(run_dir)) >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)  # batches of later steps are being made or wait in the pipeline
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    stopped_at = len(_step_records(run_dir))
    assert stopped_at < STEPS and (run_dir / "checkpoints" / f"step_{stopped_at:06d}").is_dir()

    done = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in _step_records(run_dir)] == list(range(1, STEPS + 1))
    prompts = lambda d: sorted((r["step"], r["prompt"]) for r in _rollouts(d))  # noqa: E731
    assert prompts(run_dir) == prompts(runs[k])


def test_reward_swap_in_a_live_async_run(tiny_model, tmp_path):
    """k = 1. The producer polls rewards.yaml before each batch it makes, so the swap lands on the first batch made
    after the write, and is exact from the recorded step on. With R the newest step recorded once the file is
    written, the trainer may have finished step R+1 (its record not yet written), so batches up to R+1+1+k may
    have been made before the write: the swap lands by step R+k+3."""
    k, steps, run_dir = 1, 10, tmp_path / "live"
    proc = subprocess.Popen(
        _args(tiny_model, run_dir, k, steps), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        written_after = wait_for_step(run_dir / "metrics.jsonl", 2, proc)
        write_rewards(run_dir / REWARDS_FILE, SWAPPED_SET)
        recorded_by_then = newest_step(run_dir / "metrics.jsonl")
        _, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    at = assert_swapped_at(run_dir, steps, rows_per_step=4 * 4)
    assert written_after < at <= recorded_by_then + k + 3 and at < steps, (written_after, recorded_by_then, at)


PARITY_REWARD = """
def parity(prompts, completions, **kwargs):
    texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]  # the built-in task's are messages
    return [float(sum(map(ord, t)) % 2) for t in texts]
"""


def test_retired_prompts_are_not_drawn_from_batch_t_plus_k_plus_1_in_an_async_run(tiny_model, tmp_path):
    """k = 1, retire_after 1, and a reward that depends only on the prompt (its character-code parity), so the same
    prompts retire whatever the model does. 8 training prompts, 4 a step: every epoch after the first draws among
    the prompts still in. A prompt retired when step t is trained may still be in batch t+1 (drawn ahead), never
    in a later one."""
    (tmp_path / "parity_reward.py").write_text(PARITY_REWARD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    k, steps, run_dir = 1, 8, tmp_path / "run"
    extra = ("task.train_size=8", "task.retire_after=1", "rewards.functions=[{name: 'parity_reward:parity'}]")
    proc = subprocess.run(
        _args(tiny_model, run_dir, k, steps, extra), capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    table = pq.read_table(run_dir / "rollouts", columns=["step", "messages"]).to_pylist()
    # prompt_history.jsonl names a prompt by shared.chat.prompt_key: the messages as sorted-key JSON
    rows = [{"step": r["step"], "messages": json.loads(r["messages"])} for r in table]
    for row in rows:
        row["prompt"] = prompt_key(row["messages"])
    odd = {r["prompt"] for r in rows if sum(map(ord, r["messages"][-1]["content"])) % 2}
    visits = [json.loads(line) for line in (run_dir / "prompt_history.jsonl").read_text().splitlines()]
    retired_at = {v["prompt"]: v["step"] for v in visits if v["retired"]}
    assert set(retired_at) == odd and 0 < len(odd) < 8, (retired_at, odd)
    for row in rows:
        t = retired_at.get(row["prompt"])
        assert t is None or row["step"] <= t + k, (row["prompt"], row["step"], t)
    assert {r["prompt"] for r in rows if r["step"] == steps} <= {r["prompt"] for r in rows} - odd
