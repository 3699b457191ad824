"""Kill the driver (SIGKILL) after a checkpoint; `--resume` gives the same steps, data order and adapter as an
uninterrupted run with the same seed (real Ray, vLLM and peft on the CPU, where both backends are deterministic).

Tolerance for the adapter: 1e-5 absolute on every LoRA tensor.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # whole training runs (or a Ray cluster) per test

STEPS = 4


def _args(tiny_model, run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "launch.cli",
        "train",
        "--steps",
        str(STEPS),
        "--run-dir",
        str(run_dir),
        "--set",
        f"model.path={tiny_model}",
        "--set",
        "eval.size=8",
        "--set",
        "eval.every=0",
        "--set",
        "rollout.prompts_per_step=4",
        "--set",
        "rollout.group_size=4",
        "--set",
        "run.checkpoint_every=2",
        "--set",
        "train.lr=0.02",
        *extra,
    ]


def _steps(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if not json.loads(line).get("eval")]


def _prompts_by_step(run_dir):
    table = pq.read_table(run_dir / "rollouts", columns=["step", "prompt"]).to_pylist()
    return sorted((r["step"], r["prompt"]) for r in table)


@pytest.fixture(scope="module")
def straight(tiny_model, tmp_path_factory):
    """An uninterrupted run of STEPS steps (checkpoints at 2 and 4), shared by the tests of this module."""
    run_dir = tmp_path_factory.mktemp("resume") / "straight"
    subprocess.run(_args(tiny_model, run_dir), check=True, capture_output=True, timeout=900)
    return run_dir


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, straight, tmp_path):
    resumed = tmp_path / "resumed"

    proc = subprocess.Popen(
        _args(tiny_model, resumed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    manifest = resumed / "checkpoints" / "step_000002" / "manifest.json"
    deadline = time.time() + 600
    while not manifest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert manifest.exists(), "the run never wrote its step-2 checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-run
    proc.wait()

    done = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", "--resume", str(resumed)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed" in done.stdout

    assert _steps(resumed) == list(range(1, STEPS + 1))  # no gap, no duplicate
    assert _prompts_by_step(resumed) == _prompts_by_step(straight)  # same data order
    a = load_file(straight / "adapters" / "final" / "adapter_model.safetensors")
    b = load_file(resumed / "adapters" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_resume_refuses_changed_lora_shape(straight, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", "--resume", str(run_dir), "--set", "lora.rank=4"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 2
    assert "lora.rank: 8 -> 4" in proc.stderr and "Traceback" not in proc.stderr
