#!/usr/bin/env bash
# Set up .venv and run the test suite (CPU). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
