"""Train and evaluate a plugin or stock RecBole model, with item-group fairness metrics.

    python run_recbole.py --model=AlphaRec --trainer=BiFair --dataset=ml100k \
        [--config_files="a.yaml b.yaml"] [--results_file=r.json] [--key=value ...]

Every other ``--key=value`` is a RecBole/plugin config key (RecBole reads them from the
command line at the highest priority).
"""

import sys

from recbole_bifair.cli import main

if __name__ == "__main__":
    sys.exit(main())
