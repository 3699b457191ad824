#!/usr/bin/env bash
# The long-run demonstration (not in CI): the prorl preset against grpo (no resets) on the built-in task, the same
# number of steps and the same seed, then a side-by-side summary. About 1-2 h per run on a 2-core CPU machine.
#
#   bash launch/long_run.sh            # 1,000 steps each, into runs/longrun-prorl and runs/longrun-grpo
#   STEPS=2000 bash launch/long_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1000}
PY=${PYTHON:-.venv/bin/python}
mkdir -p runs
for preset in prorl grpo; do
    "$PY" -m launch.cli train "$preset" --steps "$STEPS" --seed 0 --run-dir "runs/longrun-$preset" \
        --set eval.every=50 --set log.save_adapter_every=100 2>&1 | tee "runs/longrun-$preset.log"
done
"$PY" -m launch.tools.summarize runs/longrun-prorl runs/longrun-grpo --window 100 | tee runs/longrun-summary.txt
