"""Fairness comparison of training methods and stock RecBole models on Ray Tune.

    python run_compare.py --dataset=ml100k --model=AlphaRec --methods Plain Reweight BiFair \
        --baselines LightGCN BPR --fair_group=pop --seeds 0 1 2 --num_samples=8 --output=DIR \
        [--select=metric|fair:pop_cv@20:0.02] [--address=auto] [--key=value ...]

Each row is searched on the first seed (valid metrics only, run_hyper.py's Tuner), the picked
configuration runs the other seeds; DIR gets comparison.md, comparison.csv, comparison.png and
runs/<row>.seed<k>.json. Rerunning the same command resumes (docs/tuning.md).
"""

import sys

from recbole_bifair.tune.compare import main

if __name__ == "__main__":
    sys.exit(main())
