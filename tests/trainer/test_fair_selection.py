"""Fairness-aware checkpoint selection (ALGORITHMS.md 9.6): the Pareto front and the rule."""

import math
import os

from helpers import train_and_read

from recbole_bifair.trainer.fair_selection import Candidate, FairSelection, choose, update_front


def test_front_keeps_only_non_dominated_checkpoints_and_deletes_the_rest(tmp_path):
    selection = FairSelection("pop_cv@20", 0.02, str(tmp_path / "model.pth"))

    def save(path):
        open(path, "w").close()

    history = [(0, 0.10, 0.9), (1, 0.15, 0.8), (2, 0.14, 0.5), (3, 0.20, 0.7), (4, 0.18, 0.9)]
    for epoch, score, cv in history:
        selection.observe(epoch, score, {"recall@20": score, "pop_cv@20": cv}, save)
    assert sorted(c.epoch for c in selection.front) == [2, 3]  # 0, 1 dominated; 4 dominated by 3
    assert sorted(os.listdir(tmp_path)) == ["model.pth.fair-epoch2", "model.pth.fair-epoch3"]
    assert selection.chosen().epoch == 3  # 0.14 is not within 2% of 0.20
    assert choose(selection.front, 0.35).epoch == 2  # 0.14 >= 0.65 * 0.20


def test_update_front_rejects_a_dominated_newcomer():
    front = [Candidate(0, 0.2, 0.5, "a")]
    new_front, dropped, joined = update_front(front, Candidate(1, 0.19, 0.6, "b"))
    assert not joined and dropped == [] and new_front == front


def test_fair_selection_is_reported_separately(ml100k_root, tmp_path):
    results = train_and_read(
        ["--model=LLMLinear", "--trainer=Plain", "--dataset=ml100k", f"--data_path={ml100k_root}",
         "--epochs=3", "--num_negatives=64", "--fair_selection=pop_cv@20", "--fair_selection_tolerance=0.05"],
        tmp_path,
    )
    chosen = results["fair_selection"]
    assert 0 <= chosen["epoch"] <= 2
    assert chosen["valid"]["recall@20"] >= 0.95 * results["best_valid_score"] - 1e-9
    assert chosen["valid"]["pop_cv@20"] <= results["valid"]["pop_cv@20"] + 1e-9
    assert all(math.isfinite(chosen["test"][k]) for k in ("recall@20", "pop_cv@20", "pop_min@20"))
