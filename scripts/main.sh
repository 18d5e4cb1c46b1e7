#!/usr/bin/env bash
# The main job: set up .venv, prepare the embedded default dataset (ml-100k from the recbole
# wheel) and its stage-I embeddings if missing, train and print the results table, then write
# runs/main_results.md and runs/main_results.png (per-group test Recall) beside the results.
# Extra arguments are passed to run_recbole.py (e.g. --epochs=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
# properties/main_job.yaml sets a 30-epoch budget; command-line keys override it.
.venv/bin/python run_recbole.py --model=AlphaRec --trainer=BiFair --dataset=ml100k \
    --config_files=properties/main_job.yaml --results_file=runs/main_results.json "$@"
.venv/bin/python -m recbole_bifair.report runs/main_results.json
