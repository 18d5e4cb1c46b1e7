"""Hyper-parameter search with Ray Tune for plugin and stock RecBole models.

    python run_hyper.py --model=AlphaRec --trainer=BiFair --dataset=ml100k \
        --space=properties/hyper/BiFair.yaml [--num_samples=20] [--scheduler=asha|fifo] \
        [--search=random|grid|optuna|hyperopt] [--max_concurrent=K] [--cpus_per_trial=C] \
        [--gpus_per_trial=G] [--address=auto|ray://host:10001] [--storage=DIR] [--name=NAME] \
        [--resume] [--select=metric|fair:pop_cv@20:0.02] [--search_seed=S] \
        [--config_files="a.yaml b.yaml"] [--key=value ...]

Every other ``--key=value`` is a fixed RecBole/plugin config key for all trials. Outputs go to
``<storage>/<name>/``: trials.csv, best_config.yaml, best_test_results.json (docs/tuning.md).
After Ctrl-C the last line is the ``--resume`` command that continues the search (exit code 130).
"""

import sys

from recbole_bifair.tune import main

if __name__ == "__main__":
    sys.exit(main())
