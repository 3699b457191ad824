#!/usr/bin/env bash
# The project's checks, in the order CI runs them: lint, formatting, types, then the tests.
#   bash launch/check.sh                   # everything (what CI runs)
#   bash launch/check.sh -m "not slow"     # quick tier: arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
echo "check: ruff check"; $py -m ruff check .
echo "check: ruff format --check"; $py -m ruff format --check .
echo "check: mypy"; $py -m mypy rollout learner shared launch
echo "check: pytest"; $py -m pytest "$@"
