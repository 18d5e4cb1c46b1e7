"""The fairness baselines (ALGORITHMS.md section 6): each weight rule on tiny tensors against
hand-computed values, then every trainer end to end through run_recbole.py on ml100k."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import run_cli, train_and_read

from recbole_bifair.checkpoint import load_checkpoint
from recbole_bifair.trainer.baselines import (
    assign_flat_gradient,
    group_interaction_counts,
    interaction_share_weights,
    itfr_weight_update,
    multifr_direction,
    popdro_objective,
    streaming_dro_update,
)
from recbole_bifair.trainer.fair_base import group_losses

torch.set_num_threads(1)
HEADLINE_KEYS = ("recall@20", "pop_cv@20", "pop_min@20", "genre_cv@20", "genre_min@20")


# ------------------------------------------------------------------ Reweight


def test_group_interaction_counts_sum_item_counts_per_group():
    item_group = torch.tensor([-1, 0, 1, 1, 0, -1])  # item 0 is padding, item 5 has no group
    item_counts = torch.tensor([0, 5, 1, 2, 7, 9])
    assert group_interaction_counts(item_group, item_counts, 2).tolist() == [12.0, 3.0]


def test_reweight_weights_are_inverse_interaction_shares():
    # |D| = 40, N = 2: w = 40 / (2 * [30, 10]) = [2/3, 2]; the larger group is down-weighted.
    weights = interaction_share_weights(torch.tensor([30, 10]))
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 2.0], dtype=torch.float64))
    # Weighted over interactions they average to 1.
    assert float((weights * torch.tensor([30.0, 10.0])).sum() / 40) == pytest.approx(1.0)


def test_reweight_group_without_interactions_gets_zero_and_is_not_counted():
    weights = interaction_share_weights(torch.tensor([30, 10, 0]))
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 2.0, 0.0], dtype=torch.float64))


# ------------------------------------------------------------------ DRORec


def test_streaming_dro_update_over_two_steps():
    eta, beta = 0.5, 0.5
    loss_ema, q = torch.zeros(2, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)
    both = torch.tensor([True, True])
    # Step 1: L_hat = 0.5 * [2, 4] = [1, 2]; q = softmax(log 0.5 + 0.5 [1, 2]) = softmax([0.5, 1]).
    loss_ema, q = streaming_dro_update(
        loss_ema, q, torch.tensor([2.0, 4.0], dtype=torch.float64), both, eta, beta
    )
    torch.testing.assert_close(loss_ema, torch.tensor([1.0, 2.0], dtype=torch.float64))
    first = 1 / (1 + math.exp(0.5))
    torch.testing.assert_close(q, torch.tensor([first, 1 - first], dtype=torch.float64))
    # Step 2, group 1 absent (its loss entry is ignored, its L_hat kept):
    # L_hat = [0.5 * 1 + 0.5 * 6, 2] = [3.5, 2]; q = softmax(log q + 0.5 [3.5, 2]) = softmax([2.25, 2]).
    only_first = torch.tensor([True, False])
    loss_ema, q = streaming_dro_update(
        loss_ema, q, torch.tensor([6.0, 99.0], dtype=torch.float64), only_first, eta, beta
    )
    torch.testing.assert_close(loss_ema, torch.tensor([3.5, 2.0], dtype=torch.float64))
    second = 1 / (1 + math.exp(-0.25))
    torch.testing.assert_close(q, torch.tensor([second, 1 - second], dtype=torch.float64))


# ------------------------------------------------------------------ PopDRO


def tiny_popdro_batch(theta):
    """Group 0: l = theta0 * 1, theta0 * 3 (L_0 = 2 theta0); group 1: l = theta1^2 (L_1 = theta1^2)."""
    per_sample = torch.stack([theta[0], 3 * theta[0], theta[1] ** 2])
    return group_losses(per_sample, torch.tensor([0, 0, 1]), 2)


def test_popdro_weight_update_on_a_tiny_model():
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    losses, present, _counts = tiny_popdro_batch(theta)  # L = [2, 4]
    objective, loss_ema, weights = popdro_objective(
        losses,
        present,
        [theta],
        torch.zeros(2, dtype=torch.float64),
        torch.full((2,), 0.5, dtype=torch.float64),
    )
    # grad L_0 = [2, 0], grad L_1 = [0, 4]: gbar = [2, 0], [0, 4]; mean = [1, 2]; <gbar_n, mean> = [2, 8].
    # loss_n = 0.7 L + 0.3 [2, 8] = [2.0, 5.2]; L_hat = 0.3 loss_n = [0.6, 1.56].
    torch.testing.assert_close(loss_ema, torch.tensor([0.6, 1.56], dtype=torch.float64))
    expected = torch.softmax(0.17 * torch.tensor([0.6, 1.56], dtype=torch.float64), dim=0)
    torch.testing.assert_close(weights, expected)
    assert float(objective.detach()) == pytest.approx(float((expected * loss_ema).sum()))
    # Gradient flows only through 0.3 * 0.7 L_n (the alignment term is detached), with w fixed.
    objective.backward()
    torch.testing.assert_close(theta.grad, 0.21 * torch.stack([2 * expected[0], 4 * expected[1]]))


def test_popdro_absent_group_keeps_its_streaming_loss():
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    per_sample = torch.stack([theta[0], 3 * theta[0]])
    losses, present, _counts = group_losses(
        per_sample, torch.tensor([0, 0]), 2
    )  # only group 0: L_0 = 2
    previous = torch.tensor([1.0, 5.0], dtype=torch.float64)
    _objective, loss_ema, weights = popdro_objective(
        losses, present, [theta], previous, torch.tensor([0.25, 0.75], dtype=torch.float64)
    )
    # One group: mean gbar = gbar_0 = [2, 0], alignment = 4; loss_0 = 0.7*2 + 0.3*4 = 2.6.
    torch.testing.assert_close(
        loss_ema, torch.tensor([0.7 * 1.0 + 0.3 * 2.6, 5.0], dtype=torch.float64)
    )
    raw = torch.tensor([0.25, 0.75], dtype=torch.float64) * torch.exp(0.17 * loss_ema)
    torch.testing.assert_close(weights, raw / raw.sum())


# ------------------------------------------------------------------ ITFR


def itfr_inputs():
    losses = torch.tensor([1.0, 4.0], dtype=torch.float64)
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    previous_losses = torch.tensor([4.0, 1.0], dtype=torch.float64)
    previous_grads = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    return losses, grads, previous_losses, previous_grads


def test_itfr_weight_update_when_every_group_is_present():
    eta, gamma = 0.05, 0.5
    losses, grads, previous_losses, previous_grads = itfr_inputs()
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
    updated = itfr_weight_update(
        weights,
        losses,
        grads,
        previous_losses,
        previous_grads,
        torch.tensor([True, True]),
        eta=eta,
        gamma=gamma,
    )
    # S = [[1, cos(G_0, Gp_1) = 1/sqrt2], [cos(G_1, Gp_0) = 0, 1]];
    # M = [[l_0 = 1, sqrt(1) sqrt(1) = 1], [sqrt(4) sqrt(4) = 4, l_1 = 4]];
    # p = sqrt(l) / sum sqrt(l) = [1/3, 2/3];
    # e = eta [1/3 + (1/sqrt2)(2/3), 4 (2/3)].
    e = eta * torch.tensor([1 / 3 + 2 / (3 * math.sqrt(2)), 8 / 3], dtype=torch.float64)
    raw = weights * torch.exp(e - e.max())
    torch.testing.assert_close(updated, raw / raw.sum())
    assert updated[1] > updated[0]  # the higher-loss group gains weight


def test_itfr_weights_unchanged_when_a_group_is_missing():
    losses, grads, previous_losses, previous_grads = itfr_inputs()
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    updated = itfr_weight_update(
        weights, losses, grads, previous_losses, previous_grads, torch.tensor([True, False])
    )
    torch.testing.assert_close(updated, weights)


def test_itfr_weights_are_clamped_at_the_floor():
    losses, grads, previous_losses, previous_grads = itfr_inputs()
    updated = itfr_weight_update(
        torch.tensor([0.5, 0.5], dtype=torch.float64), losses, grads, previous_losses, previous_grads,
        torch.tensor([True, True]), eta=100.0,
    )  # fmt: skip
    assert float(updated[0]) == pytest.approx(1e-5)
    assert float(updated[1]) == pytest.approx(1.0)


# ------------------------------------------------------------------ MultiFR


def test_multifr_alpha_for_orthogonal_equal_norm_gradients_and_gradient_assignment():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([[3.0]], requires_grad=True)
    losses = torch.stack([2 * a[0], 2 * b[0, 0]])  # g_1 = [2, 0, 0], g_2 = [0, 0, 2]
    result, direction = multifr_direction(losses, [a, b])
    torch.testing.assert_close(result.alpha, torch.tensor([0.5, 0.5]))
    assert result.entropy_weight == 0.0 and result.weights.numel() == 2  # no entropy element
    assign_flat_gradient([a, b], direction)  # what MultiFRTrainer.train_step does
    torch.testing.assert_close(a.grad, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(b.grad, torch.tensor([[1.0]]))


def test_multifr_alpha_is_the_min_norm_point_without_entropy():
    theta = torch.tensor([0.0, 0.0], requires_grad=True)
    losses = torch.stack(
        [theta[0], theta[0] + theta[1]]
    )  # g_1 = [1, 0], g_2 = [1, 1]: min norm at g_1
    result, direction = multifr_direction(losses, [theta])
    torch.testing.assert_close(result.alpha, torch.tensor([1.0, 0.0]), atol=2e-3, rtol=0)
    torch.testing.assert_close(direction, torch.tensor([1.0, 0.0]), atol=2e-3, rtol=0)


# ------------------------------------------------------------------ end to end

STATE_KEYS = {
    "Reweight": None,
    "MultiFR": None,
    "DRORec": "dro_q",
    "PopDRO": "popdro_weights",
    "ITFR": "itfr_weights",
}


@pytest.mark.parametrize(
    ("model", "trainer", "fair_group"),
    [
        ("LLMLinear", "Reweight", "pop"),
        ("LLMLinear", "MultiFR", "pop"),
        ("LLMLinear", "DRORec", "pop"),
        ("LLMLinear", "PopDRO", "pop"),
        ("LLMLinear", "ITFR", "pop"),
        ("AlphaRec", "DRORec", "genre"),
    ],
)
def test_trainer_runs_two_epochs_on_ml100k(model, trainer, fair_group, ml100k_root, tmp_path):
    results = train_and_read(
        [f"--model={model}", f"--trainer={trainer}", "--dataset=ml100k", f"--data_path={ml100k_root}",
         "--epochs=2", f"--fair_group={fair_group}", "--seed=2020"],
        tmp_path,
    )  # fmt: skip
    assert results["trainer"] == trainer  # the name --trainer takes
    for key in HEADLINE_KEYS:
        assert results["test"][key] is not None and math.isfinite(results["test"][key]), key
    # One INFO line of group weights per epoch.
    log = "".join(path.read_text() for path in tmp_path.glob("log/**/*.log")).splitlines()
    weight_lines = [
        line for line in log if f" INFO  {trainer} " in line and " after epoch " in line
    ]
    assert len(weight_lines) == 2, weight_lines
    # Trainer state travels with the checkpoint: a distribution over the groups.
    state_key = STATE_KEYS[trainer]
    if state_key:
        checkpoint = load_checkpoint(results["model_file"])
        assert state_key in checkpoint, (
            f"{trainer}'s state is missing from the checkpoint: does FairEvaluationMixin's "
            "extra_checkpoint_state() reach the trainer's (super() call)?"
        )
        state = checkpoint[state_key]
        assert state.ndim == 1 and (fair_group != "pop" or state.numel() == 2)
        assert float(state.sum()) == pytest.approx(1.0, abs=1e-3)
        assert bool((state > 0).all())


def test_model_without_per_sample_loss_is_refused(ml100k_root, tmp_path):
    done = run_cli(
        [
            "--model=BPR",
            "--trainer=Reweight",
            "--dataset=ml100k",
            f"--data_path={ml100k_root}",
            "--epochs=1",
        ],
        tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "per_sample_loss" in errors[0] and "BPR" in errors[0], done.stderr[
        -2000:
    ]
    assert "Traceback" not in done.stderr
