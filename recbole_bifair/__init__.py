"""recbole-bifair: fairness-aware training for LLM-enhanced recommenders, as a RecBole plugin.

Importing the package registers its metrics with RecBole (see
:mod:`recbole_bifair.evaluator.registration`), so it must be imported before a Config is built
in every process (Ray workers included), and imports the plugin's model and trainer packages,
whose class decorators fill :mod:`recbole_bifair.registry` (a leaf that imports neither).
"""

from recbole_bifair.evaluator.registration import register_metrics

register_metrics()

import recbole_bifair.model  # noqa: E402,F401  (plugin models register themselves)
import recbole_bifair.trainer  # noqa: E402,F401  (plugin trainers register themselves)

__version__ = "0.1.0"
