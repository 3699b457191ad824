"""A live run whose reward pays for length (with diminishing returns: sqrt of the completion's tokens) trips the
reward-hacking watch: completions grow faster than the reward, the run warns on its progress line, records
`hacking/fired`, and with `run.stop_on_hacking` stops with a checkpoint. `prolora report` then shows the section.
The same small run with the built-in task's own reward (exact match) stays quiet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # a whole training run

USER_REWARD = textwrap.dedent(
    """
    def pays_for_length(prompts, completions, completion_token_count, **columns):
        return [n ** 0.5 for n in completion_token_count]
    """
)


SMALL_RUN = [
    "rollout.prompts_per_step=4",
    "rollout.group_size=8",
    "rollout.max_new_tokens=24",
    "model.max_model_len=48",
    "eval.size=4",
    "eval.k=2",
    "eval.n_samples=2",
    "hacking.window=4",
    "run.stop_on_hacking=true",
    "log.progress_every=1",
]
"""A 12-step run small enough for the suite, with a 4-step watch window that stops the run when it fires."""


def _train(tmp_path, model, reward: str, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "launch.cli", "train", "--steps", "12", "--run-dir", str(run_dir)]
    for o in [f"model.path={model}", f"rewards.functions=[{{name: '{reward}'}}]", *SMALL_RUN, *extra]:
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return proc, [r for r in records if "reward_mean" in r]


def test_a_length_paying_reward_fires_the_watch_and_stops_the_run(tiny_model, tmp_path):
    (tmp_path / "length_rewards.py").write_text(USER_REWARD)
    run_dir = tmp_path / "run"
    # A large step size without std scaling, so length moves within 12 steps.
    proc, steps = _train(
        tmp_path, tiny_model, "length_rewards:pays_for_length", "train.lr=0.05", "algo.scale_by_std=false"
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "reward hacking suspected" in proc.stderr and "[hacking] step" in proc.stderr
    last = steps[-1]
    assert "length" in last["hacking/fired"], [(r["step"], r["response_len_mean"]) for r in steps]
    assert last["hacking/length_growth"] >= 0.2 and last["step"] < 12
    assert all(not r["hacking/fired"] for r in steps[:-1])  # it stopped at the first step that fired
    assert (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())

    report = subprocess.run(
        [sys.executable, "-m", "launch.cli", "report", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr[-2000:]
    page = (run_dir / "report" / "report.html").read_text()
    assert "Reward-hacking watch" in page and f"best-rewarded completions at step {last['step']}" in page


def test_the_built_in_reward_keeps_the_watch_quiet(tiny_model, tmp_path):
    proc, steps = _train(tmp_path, tiny_model, "exact_match")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert all(r["hacking/fired"] == [] for r in steps) and "[hacking]" not in proc.stderr
