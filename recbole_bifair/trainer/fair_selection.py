"""Fairness-aware checkpoint selection, an option next to the paper's (ALGORITHMS.md 9.6).

The paper selects the checkpoint with the best valid Recall@20 (kept as the default). Early
stopping on Recall can keep an unfair checkpoint: a fair method's valid CV often moves with its
valid Recall along training. With ``fair_selection: pop_cv@20`` (any smaller-is-better valid
metric) the trainer also keeps the checkpoints on the Pareto front of (valid score higher,
valid fairness metric lower); after training, the chosen one is the checkpoint with the lowest
fairness metric among those whose valid score is within ``fair_selection_tolerance`` (2%) of
the best valid score. Its test metrics are reported separately, under ``fair_selection``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class Candidate:
    epoch: int
    score: float  # the valid score (valid_metric, higher is better)
    fairness: float  # the fairness metric (lower is better)
    path: str
    valid: dict = field(default_factory=dict)


def dominated(candidate: Candidate, other: Candidate) -> bool:
    """``other`` is at least as good on both and better on one."""
    return (other.score >= candidate.score and other.fairness <= candidate.fairness
            and (other.score > candidate.score or other.fairness < candidate.fairness))


def update_front(front: list[Candidate], new: Candidate) -> tuple[list[Candidate], list[Candidate], bool]:
    """(new front, dropped candidates, whether ``new`` joined the front)."""
    if any(dominated(new, kept) for kept in front):
        return front, [], False
    dropped = [kept for kept in front if dominated(kept, new)]
    return [kept for kept in front if kept not in dropped] + [new], dropped, True


def choose(front: list[Candidate], tolerance: float) -> Candidate:
    """Lowest fairness metric among candidates within ``tolerance`` of the best score."""
    best = max(candidate.score for candidate in front)
    eligible = [c for c in front if c.score >= (1.0 - tolerance) * best]
    return min(eligible, key=lambda c: (c.fairness, -c.score))


class FairSelection:
    """Keeps the Pareto-front checkpoints of one training run (files beside the best model)."""

    def __init__(self, metric: str, tolerance: float, base_path: str):
        self.metric, self.tolerance, self.base_path = metric.lower(), float(tolerance), base_path
        self.front: list[Candidate] = []
        self.last_observed: Candidate | None = None  # the latest validation, on the front or not

    def observe(self, epoch: int, score: float, valid: dict, save) -> None:
        """Record one validation; ``save(path)`` writes the current model if it joins the front."""
        if self.metric not in valid:
            raise KeyError(f"fair_selection metric {self.metric!r} is not among the valid metrics {sorted(valid)}")
        candidate = Candidate(epoch, float(score), float(valid[self.metric]),
                              f"{self.base_path}.fair-epoch{epoch}", dict(valid))
        self.last_observed = candidate
        self.front, dropped, joined = update_front(self.front, candidate)
        if joined:
            save(candidate.path)
        for old in dropped:
            if os.path.exists(old.path):
                os.remove(old.path)

    def state(self) -> list[dict]:
        """The front as plain data, for the resume checkpoint."""
        return [{"epoch": int(c.epoch), "score": float(c.score), "fairness": float(c.fairness), "path": str(c.path),
                 "valid": {str(k): float(v) for k, v in c.valid.items()}} for c in self.front]  # weights_only-safe

    def restore(self, state: list[dict]) -> None:
        """The front of a resumed run; candidates whose checkpoint file is gone are dropped."""
        self.front = [Candidate(**entry) for entry in state if os.path.exists(entry["path"])]

    def chosen(self) -> Candidate | None:
        return choose(self.front, self.tolerance) if self.front else None
