"""Register the plugin's metrics with RecBole: the one monkeypatch this package needs.

RecBole 1.2.1 builds its metric tables (``metrics_dict``, ``metric_information``,
``metric_types``, ``smaller_metrics`` in ``recbole.evaluator.register``) once, at import, from the
classes defined in ``recbole.evaluator.metrics``, and offers no hook to add more. ``Config``
refuses unknown metric names and ``Evaluator`` instantiates metrics from ``metrics_dict``, and
both hold references to these very objects, so the plugin adds its entries to them **in place**
(never rebinding them). This must happen in every process before a Config is built, Ray
workers included: importing :mod:`recbole_bifair` does it.
"""

from __future__ import annotations

from recbole.evaluator import register as recbole_register

from recbole_bifair.evaluator.metrics import FAIRNESS_METRICS


def register_metrics() -> None:
    """Add the fairness metrics to RecBole's metric tables (idempotent)."""
    for name, metric in FAIRNESS_METRICS.items():
        recbole_register.metrics_dict[name] = metric
        recbole_register.metric_information[name] = metric.metric_need
        recbole_register.metric_types[name] = metric.metric_type
        if metric.smaller and name not in recbole_register.smaller_metrics:
            recbole_register.smaller_metrics.append(name)


def known_metric_names() -> list[str]:
    """Every metric name a Config accepts (RecBole's and the plugin's), lower case."""
    return sorted(recbole_register.metrics_dict)
