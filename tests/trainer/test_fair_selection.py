"""Fairness-aware checkpoint selection (ALGORITHMS.md 9.6): the Pareto front and the rule."""

import math
import os

import pytest
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


def test_front_survives_a_resume(ml100k_root, tmp_path):
    """The resume checkpoint carries the front; a resumed trainer continues it, not a new one."""
    import torch
    from recbole.utils import init_seed

    from recbole_bifair.checkpoint import resume_path
    from recbole_bifair.quick_start import build_config, build_data, build_trainer
    from recbole_bifair.registry import get_model

    settings = {"data_path": str(ml100k_root), "eval_step": 1, "num_negatives": 16, "checkpoint_dir": str(tmp_path),
                "fair_selection": "pop_cv@20", "fair_selection_tolerance": 0.5, "trainer": "Plain"}

    def trainer_for(epochs):
        config = build_config("LLMLinear", "ml100k", config_dict={**settings, "epochs": epochs})
        init_seed(config["seed"], True)
        _dataset, train_data, valid_data, _test = build_data(config)
        model = get_model("LLMLinear")(config, train_data._dataset).to(config["device"])
        return build_trainer(config, model), train_data, valid_data

    class Killed(Exception):
        pass

    def kill_after_epoch_1(epoch_idx, _score):  # runs after the resume checkpoint is written
        if epoch_idx == 1:
            raise Killed

    first, train_data, valid_data = trainer_for(3)
    with pytest.raises(Killed):
        first.fit(train_data, valid_data, saved=True, callback_fn=kill_after_epoch_1)
    front = [(c.epoch, c.path) for c in first.fair_selection.front]
    assert front and all(os.path.exists(path) for _epoch, path in front)

    resumed, train_data, valid_data = trainer_for(3)  # the same run, continued
    resumed.resume_checkpoint(resume_path(first.saved_model_file))
    assert [(c.epoch, c.path) for c in resumed.fair_selection.front] == front
    restored = list(resumed.fair_selection.front)
    resumed.fit(train_data, valid_data, saved=True)
    # Epoch 2 was observed into the restored front, not into a new one.
    final, observed = resumed.fair_selection.front, resumed.fair_selection.last_observed
    assert observed.epoch == 2
    expected, _dropped, _joined = update_front(restored, observed)
    assert [c.epoch for c in final] == [c.epoch for c in expected]
    assert all(os.path.exists(c.path) and c.path.startswith(first.saved_model_file) for c in final)
    assert torch.isfinite(torch.tensor(resumed.fair_selection.chosen().fairness))
