"""recbole-bifair: fairness-aware training for LLM-enhanced recommenders, as a RecBole plugin.

Importing the package registers its metrics with RecBole (see
:mod:`recbole_bifair.evaluator.registration`), so it must be imported before a Config is built
in every process (Ray workers included).
"""

from recbole_bifair.evaluator.registration import register_metrics

register_metrics()

__version__ = "0.1.0"
