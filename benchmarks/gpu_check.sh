#!/usr/bin/env bash
# GPU check (issue 12), at most 8 minutes on one CUDA device: the tests marked `cuda`, the main
# job on CUDA with its seconds per epoch, batched vs looped group gradients and the negative
# scores on CUDA; prints one table (benchmarks/gpu_check.py). Needs a CUDA build of torch in the
# venv (PYTHON=... to use another interpreter). Record the table in benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
exec timeout 470 "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py "$@"
