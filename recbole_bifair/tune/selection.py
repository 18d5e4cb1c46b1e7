"""Which trial a search picks, from the trials' VALID metrics only (the ``--select`` option).

- ``metric`` (the default): the best ``valid_metric`` (e.g. Recall@20; smaller-is-better
  metrics are minimised).
- ``fair:<metric@k>:<tolerance>``, e.g. ``fair:pop_cv@20:0.02``: among the trials whose valid
  score is within ``tolerance`` (relative) of the best valid score, the one with the best valid
  value of the fairness metric (the lowest for a CV, the highest for a MIN). Each trial's
  values are those of its best checkpoint (its best valid score's evaluation).

Only trials that left a checkpoint and a finite valid score can be picked; ties go to the
first trial in the order given (trials.csv's order).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from recbole_bifair.tune.settings import SearchError

METRIC_NAME = re.compile(r"^[a-z_]+@\d+$")


class Candidate(Protocol):
    """What selection reads of a trial (``results.TrialRow`` has it)."""

    best_valid_score: float
    valid: dict[str, float]
    model_file: str | None


@dataclass(frozen=True)
class SelectRule:
    """A parsed ``--select`` value; ``fair_metric`` is None for the plain metric rule."""

    fair_metric: str | None = None
    tolerance: float = 0.0

    def describe(self, metric: str) -> str:
        """The rule in words, for tables and summaries."""
        if self.fair_metric is None:
            return f"best valid {metric}"
        direction = "lowest" if fairness_smaller_is_better(self.fair_metric) else "highest"
        return f"{direction} valid {self.fair_metric} within {self.tolerance:.0%} of the best valid {metric}"


def parse_select(text: str) -> SelectRule:
    """``metric`` or ``fair:<metric@k>:<tolerance>``; SearchError (one line) otherwise."""
    usage = "--select takes metric or fair:<metric@k>:<tolerance>, e.g. fair:pop_cv@20:0.02"
    if text == "metric":
        return SelectRule()
    parts = text.split(":")
    if len(parts) != 3 or parts[0] != "fair":
        raise SearchError(f"{usage}; got {text!r}")
    metric = parts[1].lower()
    if not METRIC_NAME.match(metric):
        raise SearchError(f"{usage}; {parts[1]!r} is not a metric@k name")
    try:
        tolerance = float(parts[2])
    except ValueError:
        raise SearchError(f"{usage}; tolerance {parts[2]!r} is not a number") from None
    if not 0 <= tolerance < 1:
        raise SearchError(f"{usage}; tolerance must be in [0, 1), got {tolerance}")
    return SelectRule(metric, tolerance)


def valid_metric_names(config) -> set[str]:
    """``metric@k`` names a Config computes on valid (its ``metrics`` times its ``topk``)."""
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    return {f"{str(m).lower()}@{k}" for m in config["metrics"] for k in topk}


def check_select_metric(rule: SelectRule, config) -> None:
    """SearchError if the fairness metric of ``rule`` is not computed on valid."""
    if rule.fair_metric and rule.fair_metric not in valid_metric_names(config):
        raise SearchError(
            f"--select: {rule.fair_metric} is not computed on valid; this run computes "
            f"{', '.join(sorted(valid_metric_names(config)))} (metrics x topk)"
        )


def fairness_smaller_is_better(metric: str) -> bool:
    """True for the metrics RecBole registers as smaller-is-better (the CVs; the plugin's are
    registered when :mod:`recbole_bifair` is imported, as it is before this module)."""
    from recbole.evaluator.register import smaller_metrics

    return metric.split("@")[0].lower() in smaller_metrics


def within_tolerance(score: float, best: float, tolerance: float, mode: str) -> bool:
    """``score`` is no worse than ``best`` by more than ``tolerance`` (relative)."""
    if mode == "max":
        return score >= best - tolerance * abs(best)
    return score <= best + tolerance * abs(best)


def select_trial(rows: Sequence[Candidate], rule: SelectRule, mode: str) -> Candidate:
    """The trial ``rule`` picks among ``rows`` (``mode``: the valid metric's max or min)."""
    usable = [r for r in rows if r.model_file and math.isfinite(r.best_valid_score)]
    if not usable:
        raise SearchError("no trial finished an evaluation with a saved checkpoint; see the trial folders")
    sign = 1.0 if mode == "max" else -1.0
    best = max(usable, key=lambda r: sign * r.best_valid_score)
    if rule.fair_metric is None:
        return best
    near = [
        r for r in usable
        if within_tolerance(r.best_valid_score, best.best_valid_score, rule.tolerance, mode)
        and math.isfinite(r.valid.get(rule.fair_metric, math.nan))
    ]
    if not near:
        raise SearchError(f"no trial near the best valid score reported a finite valid {rule.fair_metric}")
    fair_sign = 1.0 if fairness_smaller_is_better(rule.fair_metric) else -1.0
    return min(near, key=lambda r: fair_sign * r.valid[rule.fair_metric])
