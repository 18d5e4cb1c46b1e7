"""Item-group fairness metrics that can be named in ``metrics:`` like RecBole's own.

``Pop_CV``, ``Pop_MIN``, ``Genre_CV`` and ``Genre_MIN`` give the paper's headline figures
(CV@K and MIN@K of group Recall, ALGORITHMS.md section 7) under the keys ``pop_cv@20`` etc.
The NDCG- and Hit-based variants are ``Pop_CV_NDCG``, ``Genre_MIN_Hit`` and so on.

Each metric declares what it needs (``rec.topk`` plus ``fair.<kind>``); the plugin's
:class:`~recbole_bifair.evaluator.collector.FairCollector` gathers it once per evaluation and
every fairness metric reuses it.
"""

from __future__ import annotations

from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType

from recbole_bifair.evaluator.fairness import group_utilities


def fair_struct_keys(kind: str) -> tuple[str, str]:
    """DataStruct keys of one group kind: top-K item groups, per-user positives per group."""
    return f"fair.{kind}.topk_groups", f"fair.{kind}.positives"


def compute_group_utilities(dataobject, config, kind: str, k: int, utility: str):
    """G(n) of group ``kind`` at cut-off ``k`` from a DataStruct filled by FairCollector."""
    topk_groups_key, positives_key = fair_struct_keys(kind)
    rec_mat = dataobject.get("rec.topk")
    max_k = rec_mat.shape[1] - 1
    hit_flags = rec_mat[:, :max_k]
    normaliser = config["fair_normaliser"]
    if normaliser is None:  # a Config without the plugin's overall.yaml (its default is "all")
        normaliser = "all"
    return group_utilities(
        hit_flags,
        dataobject.get(topk_groups_key),
        dataobject.get(positives_key),
        k,
        utility,
        normaliser,
    )


class _GroupFairnessMetric(AbstractMetric):
    """Base: one group kind, one statistic (cv or min), one utility (recall, ndcg, hit)."""

    metric_type = EvaluatorType.RANKING
    kind = "pop"
    statistic = "cv"
    utility = "recall"

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.topk = config["topk"]

    def calculate_metric(self, dataobject):
        suffix = "" if self.utility == "recall" else f"_{self.utility}"
        result = {}
        for k in self.topk:
            groups = compute_group_utilities(dataobject, self.config, self.kind, k, self.utility)
            value = groups.cv() if self.statistic == "cv" else groups.min()
            result[f"{self.kind}_{self.statistic}{suffix}@{k}"] = round(value, self.decimal_place)
        return result


def _make_metric(kind: str, statistic: str, utility: str) -> type:
    suffix = "" if utility == "recall" else "_" + {"ndcg": "NDCG", "hit": "Hit"}[utility]
    name = f"{kind.capitalize()}_{statistic.upper()}{suffix}"
    doc = (
        f"{statistic.upper()}@K of per-group {utility} over {kind} item groups "
        f"({'smaller' if statistic == 'cv' else 'larger'} is fairer)."
    )
    return type(
        name,
        (_GroupFairnessMetric,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "kind": kind,
            "statistic": statistic,
            "utility": utility,
            "metric_need": ["rec.topk", f"fair.{kind}"],
            "smaller": statistic == "cv",
        },
    )


FAIRNESS_METRICS: dict[str, type] = {}
for _kind in ("pop", "genre"):
    for _statistic in ("cv", "min"):
        for _utility in ("recall", "ndcg", "hit"):
            _metric = _make_metric(_kind, _statistic, _utility)
            FAIRNESS_METRICS[_metric.__name__.lower()] = _metric
