"""Tests for the adaptive inter-group balancing solver (recbole_bifair.trainer.balancing).

Each test checks one piece against an independent computation: a brute-force grid minimum,
autograd, explicitly built vectors or separate backward passes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from recbole_bifair.trainer.balancing import (
    balance,
    entropy_coefficients,
    extended_gram,
    gram_matrix,
    group_gradients,
    min_norm_weights,
    normalise_gradients,
)

GRID_STEP = 0.005


def simplex_grid(size: int, step: float = GRID_STEP, floor: float = 0.0, n_floor: int = 0):
    """All points of the simplex with coordinates on multiples of ``step`` (float64 [M, size]),
    keeping those with ``w_i >= floor`` for the first ``n_floor`` coordinates."""
    ticks = int(round(1.0 / step))
    low = int(round(floor / step))
    assert abs(low * step - floor) < 1e-12, "the bound must lie on the grid"
    points = []
    for head in itertools.product(range(ticks + 1), repeat=size - 1):
        last = ticks - sum(head)
        point = (*head, last)
        if last >= 0 and all(value >= low for value in point[:n_floor]):
            points.append(point)
    return np.asarray(points, dtype=np.float64) / ticks


def random_gram(size: int, seed: int, kind: str) -> torch.Tensor:
    """Gram of ``size`` random vectors in R^5.

    ``plain``: standard normal vectors (the min-norm point is often a vertex or on an edge);
    ``offset``: vectors around a common offset (nearly aligned, like early-training group
    gradients); ``interior``: vectors spread around a direction so the origin's projection
    falls inside their hull (interior min-norm point).
    """
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(size, 5, generator=generator, dtype=torch.float64)
    if kind == "offset":
        vectors = 0.5 * vectors + 2.0 * torch.randn(1, 5, generator=generator, dtype=torch.float64)
    elif kind == "interior":
        angles = torch.arange(size, dtype=torch.float64) * (2 * math.pi / size)
        ring = torch.stack([angles.cos(), angles.sin()], dim=1)
        vectors = 0.2 * vectors
        vectors[:, :2] += 2.0 * ring
        vectors[:, 2] += 1.0
    return vectors @ vectors.T


def quadratic(weights: np.ndarray, gram: np.ndarray) -> np.ndarray:
    return np.einsum("...i,ij,...j->...", weights, gram, weights)


# Grid tolerance. Let w* be the minimiser, f* = w*^T G w*. Flooring all coordinates of w* but
# its largest to the grid and giving the remainder to the largest gives a grid point w* + d
# with supp(d) in supp(w*), sum(d) = 0 and |d|^2 <= n (n - 1) h^2 (with a lower bound on the
# grid, the floor keeps it). On supp(w*), (G w*)_i = f* (KKT), so the linear term vanishes and
# f(w* + d) - f* = d^T G d <= lambda_max n (n - 1) h^2: the grid minimum is at most that above
# f*. FW must be no worse than the grid minimum, up to its own stopping error (sum |dw| < 1e-5
# moves the objective by about 2 |G w|_inf 1e-5 per step; 1e-6 relative to the scale of G is
# well above what the converged runs show and far below the grid gaps).
@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("kind", ["plain", "offset", "interior"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
    ("floor", "bounded"), [(0.0, "none"), (0.1, "all"), (0.15, "all_but_last")]
)
def test_frank_wolfe_matches_grid_minimum(size, kind, seed, floor, bounded):
    gram = random_gram(size, seed, kind)
    # "all_but_last" is BiFair's layout: bounded group elements, a free entropy element.
    n_constrained = {"none": 0, "all": size, "all_but_last": size - 1}[bounded]
    weights, steps = min_norm_weights(gram, min_weight=floor, n_constrained=n_constrained)
    matrix = gram.numpy()
    grid = simplex_grid(size, floor=floor, n_floor=n_constrained)
    grid_values = quadratic(grid, matrix)
    grid_min = float(grid_values.min())
    solved = float(quadratic(weights.numpy(), matrix))
    scale = float(np.abs(matrix).max())
    grid_gap = float(np.linalg.eigvalsh(matrix).max()) * size * (size - 1) * GRID_STEP**2

    assert steps <= 250
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (weights >= -1e-15).all()
    assert (weights[:n_constrained] >= floor - 1e-12).all()
    assert solved <= grid_min + 1e-6 * scale, "FW is worse than the best grid point"
    assert solved >= grid_min - grid_gap - 1e-12, "FW beats the grid by more than it can"
    # The weights agree with the grid's minimiser up to the grid's resolution, unless the
    # objective is flat enough that several grid points are (nearly) equally good.
    near = grid[grid_values <= grid_min + grid_gap + 1e-6 * scale]
    assert np.abs(near - weights.numpy()).max(axis=1).min() <= GRID_STEP + 1e-9


def test_frank_wolfe_trivial_cases():
    weights, steps = min_norm_weights(torch.tensor([[4.0]]))
    assert weights.tolist() == [1.0] and steps == 0
    # Orthogonal equal-norm vectors: the midpoint.
    weights, _ = min_norm_weights(torch.eye(2))
    assert weights.tolist() == pytest.approx([0.5, 0.5], abs=1e-12)
    # Identical points: any weights; the solver stops at once without dividing by zero.
    weights, _ = min_norm_weights(torch.ones(3, 3))
    assert torch.isfinite(weights).all() and weights.sum().item() == pytest.approx(1.0)
    # gamma * k = 1 fixes the constrained weights.
    weights, steps = min_norm_weights(torch.eye(3), min_weight=0.5, n_constrained=2)
    assert weights.tolist() == pytest.approx([0.5, 0.5, 0.0]) and steps == 0


def test_starting_pair_is_the_best_clipped_pair():
    # max_iter=0 returns the start: the pair with the smallest clipped two-point minimum.
    vectors = torch.tensor([[3.0, 0.0], [1.0, 1.0], [1.0, -1.0], [2.0, 2.0]], dtype=torch.float64)
    weights, steps = min_norm_weights(vectors @ vectors.T, max_iter=0)
    assert steps == 0
    assert weights.tolist() == pytest.approx([0.0, 0.5, 0.5, 0.0], abs=1e-12)
    # A vertex optimum starts clipped at 0.999 / 0.001 ...
    gram = torch.tensor([[1.0, 2.0], [2.0, 5.0]], dtype=torch.float64)
    weights, _ = min_norm_weights(gram, max_iter=0)
    assert weights.tolist() == pytest.approx([0.999, 0.001], abs=1e-12)
    # ... and the exact line search of the first step reaches the vertex.
    weights, steps = min_norm_weights(gram, max_iter=1)
    assert weights.tolist() == pytest.approx([1.0, 0.0], abs=1e-12) and steps == 1


def test_min_weight_validation_names_the_key():
    with pytest.raises(ValueError, match="min_group_weight"):
        min_norm_weights(torch.eye(4), min_weight=0.3, n_constrained=4)
    with pytest.raises(ValueError, match="min_group_weight"):
        min_norm_weights(torch.eye(4), min_weight=-0.1)
    with pytest.raises(ValueError, match="min_group_weight"):
        balance(torch.ones(3), [], grads=torch.eye(3), min_group_weight=0.5)
    with pytest.raises(ValueError, match="balance_norm"):
        normalise_gradients(torch.eye(2), torch.ones(2), "l1")


def test_iteration_cap_is_real():
    gram = random_gram(5, 7, "interior")
    _, free_steps = min_norm_weights(gram, max_iter=250)
    assert free_steps > 3, "the case must need more than three steps"
    _, steps = min_norm_weights(gram, max_iter=3)
    assert steps == 3
    _, steps = min_norm_weights(gram, max_iter=0)
    assert steps == 0


def test_entropy_coefficients_are_minus_the_entropy_gradient():
    generator = torch.Generator().manual_seed(0)
    for size in (2, 3, 7):
        losses = torch.rand(size, generator=generator, dtype=torch.float64) * 3
        losses.requires_grad_(True)
        log_p = torch.log_softmax(losses, dim=0)
        entropy = -(log_p.exp() * log_p).sum()
        (minus_grad,) = torch.autograd.grad(-entropy, losses)
        coef = entropy_coefficients(losses.float())
        assert coef.dtype == torch.float64
        torch.testing.assert_close(coef, minus_grad, rtol=1e-6, atol=1e-7)
        assert coef.sum().item() == pytest.approx(0.0, abs=1e-12)
    # Equal losses: the entropy is at its maximum, the gradient vanishes.
    assert entropy_coefficients(torch.ones(4)).abs().max().item() < 1e-15


def test_extended_gram_is_the_gram_of_the_explicit_vectors():
    generator = torch.Generator().manual_seed(1)
    grads = torch.randn(4, 11, generator=generator, dtype=torch.float64)
    coef = entropy_coefficients(torch.tensor([0.3, 1.2, 0.7, 2.0]))
    scales = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    gram = grads @ grads.T

    vectors = torch.cat([grads, (coef[:, None] * grads).sum(0, keepdim=True)])
    torch.testing.assert_close(extended_gram(gram, coef), vectors @ vectors.T)

    scaled = torch.cat([scales[:, None] * grads, (coef[:, None] * grads).sum(0, keepdim=True)])
    torch.testing.assert_close(extended_gram(gram, coef, scales), scaled @ scaled.T)
    torch.testing.assert_close(gram_matrix(grads.float()), gram, rtol=1e-5, atol=1e-5)


def _mlp_group_losses(seed: int = 0, n_groups: int = 4, sparse: bool = False):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    unused = nn.Linear(3, 3)  # never reaches the losses: zero columns
    inputs = torch.randn(40, 6)
    if sparse:
        adjacency = (torch.rand(40, 40) < 0.1).float() + torch.eye(40)
        inputs = torch.sparse.mm(adjacency.to_sparse(), inputs @ model[0].weight.T)
        hidden = torch.tanh(inputs + model[0].bias)
        scores = model[2](hidden).squeeze(1)
    else:
        scores = model(inputs).squeeze(1)
    sample_loss = (scores - torch.randn(40)) ** 2
    group = torch.arange(40) % n_groups
    losses = torch.stack([sample_loss[group == n].mean() for n in range(n_groups)])
    params = [*model.parameters(), *unused.parameters()]
    return losses, params


def _separate_backwards(losses, params):
    rows = []
    for loss in losses:
        for param in params:
            param.grad = None
        loss.backward(retain_graph=True)
        rows.append(
            torch.cat(
                [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params]
            )
        )
    return torch.stack(rows)


def test_batched_group_gradients_equal_separate_backwards():
    losses, params = _mlp_group_losses()
    expected = _separate_backwards(losses, params)
    assert expected[:, -12:].abs().max() == 0  # the unused layer
    batched = group_gradients(losses, params, method="batched")
    looped = group_gradients(losses, params, method="loop")
    auto = group_gradients(losses, params, method="auto")
    assert batched.shape == (4, sum(p.numel() for p in params))
    torch.testing.assert_close(batched, expected)
    torch.testing.assert_close(looped, expected)
    torch.testing.assert_close(auto, expected)
    # The graph is retained by default: the caller's weighted loss can still backward.
    losses.sum().backward()


def test_sparse_graph_falls_back_to_the_loop():
    losses, params = _mlp_group_losses(sparse=True)
    expected = _separate_backwards(losses, params)
    with pytest.raises(RuntimeError):
        group_gradients(losses, params, method="batched")
    torch.testing.assert_close(group_gradients(losses, params, method="auto"), expected)
    torch.testing.assert_close(group_gradients(losses, params, method="loop"), expected)


def test_normalise_gradients_modes():
    grads = torch.tensor([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]])
    losses = torch.tensor([2.0, 0.5, 1.0])
    assert normalise_gradients(grads, losses, "none").tolist() == [1.0, 1.0, 1.0]
    assert normalise_gradients(grads, losses, "l2").tolist() == pytest.approx([0.2, 0.5, 1.0])
    assert normalise_gradients(grads, losses, "loss").tolist() == pytest.approx([0.5, 2.0, 1.0])
    assert normalise_gradients(grads, losses, "loss+").tolist() == pytest.approx([0.1, 1.0, 1.0])


def aligned_gradients(n_groups: int, cosine: float, width: int = 6) -> torch.Tensor:
    """Unit vectors with pairwise cosine ``cosine`` (Cholesky of the wanted Gram)."""
    gram = (1 - cosine) * torch.eye(n_groups, dtype=torch.float64) + cosine
    vectors = torch.zeros(n_groups, width, dtype=torch.float64)
    vectors[:, :n_groups] = torch.linalg.cholesky(gram)
    return vectors


@pytest.mark.parametrize("n_groups", [2, 3])
def test_aligned_gradients_collapse_and_the_safeguard(n_groups):
    # ALGORITHMS.md 9.1: nearly aligned group gradients (cosine 0.99).
    grads = aligned_gradients(n_groups, 0.99)
    losses = torch.linspace(0.5, 2.0, n_groups, dtype=torch.float64)
    group_norm = 1.0

    literal = balance(losses, [], grads=grads)
    assert literal.entropy_weight > 0.99
    assert abs(literal.alpha.sum().item()) < 0.01
    assert literal.combined_grad_norm < 0.05 * group_norm

    gamma = 0.1
    guarded = balance(losses, [], grads=grads, min_group_weight=gamma)
    assert (guarded.weights[:n_groups] >= gamma - 1e-12).all()
    # The coefficients sum to 0, so sum(alpha) = sum(w[:N]) >= gamma N.
    assert guarded.alpha.sum().item() >= gamma * n_groups - 1e-9
    assert guarded.combined_grad_norm >= 0.15 * group_norm
    combined = guarded.alpha @ grads
    assert combined.norm().item() == pytest.approx(guarded.combined_grad_norm, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_min_group_weight_holds_for_any_gradients(seed):
    generator = torch.Generator().manual_seed(seed)
    n_groups = 2 + seed % 3
    grads = torch.randn(n_groups, 9, generator=generator, dtype=torch.float64)
    grads[0] = -grads[1] * 0.5  # anti-aligned pair, as later in training
    losses = torch.rand(n_groups, generator=generator, dtype=torch.float64) + 0.1
    for entropy in (True, False):
        for norm in ("none", "l2", "loss+"):
            result = balance(
                losses, [], grads=grads, entropy=entropy, min_group_weight=0.2, balance_norm=norm
            )
            assert (result.weights[:n_groups] >= 0.2 - 1e-12).all()
            assert result.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
            assert result.weights.shape == (n_groups + int(entropy),)


def test_balance_maps_scaled_weights_back_to_raw_gradients():
    # sum_n alpha_n g_n must be the min-norm point of the scaled extended set.
    generator = torch.Generator().manual_seed(3)
    grads = torch.randn(3, 7, generator=generator, dtype=torch.float64) * torch.tensor(
        [[1.0], [5.0], [0.2]], dtype=torch.float64
    )
    losses = torch.tensor([0.4, 1.5, 0.9], dtype=torch.float64)
    for norm in ("none", "l2", "loss", "loss+"):
        result = balance(losses, [], grads=grads, balance_norm=norm)
        scales = normalise_gradients(grads, losses, norm)
        coef = entropy_coefficients(losses)
        vectors = torch.cat([scales[:, None] * grads, (coef[:, None] * grads).sum(0, keepdim=True)])
        point = result.weights @ vectors
        torch.testing.assert_close(result.alpha @ grads, point)
        assert point.norm().item() == pytest.approx(result.combined_grad_norm, rel=1e-9)
        expected, _ = min_norm_weights(vectors @ vectors.T)
        torch.testing.assert_close(result.weights, expected)


def test_balance_from_autograd_reuses_group_gradients():
    losses, params = _mlp_group_losses(n_groups=3)
    result = balance(losses, params)
    expected = _separate_backwards(losses, params)
    torch.testing.assert_close(result.group_grads, expected)
    assert result.alpha.dtype == losses.dtype and not result.alpha.requires_grad
    # The fair loss' gradient is alpha @ group_grads.
    for param in params:
        param.grad = None
    (result.alpha * losses).sum().backward()
    flat = torch.cat(
        [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params]
    )
    torch.testing.assert_close(flat, result.alpha @ result.group_grads)
    assert flat.norm().item() == pytest.approx(result.combined_grad_norm, rel=1e-4)


def test_one_present_group():
    losses, params = _mlp_group_losses(n_groups=1)
    result = balance(losses, params)
    assert result.alpha.tolist() == [1.0]
    assert result.entropy_weight == 0.0 and result.n_iter == 0
    assert result.combined_grad_norm == pytest.approx(result.group_grads.norm().item(), rel=1e-6)
    assert balance(losses, params, entropy=False).alpha.tolist() == [1.0]


def test_multifr_orthogonal_equal_norm_gradients():
    grads = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    result = balance(torch.tensor([0.3, 1.7]), [], grads=grads, entropy=False)
    assert result.alpha.tolist() == pytest.approx([0.5, 0.5], abs=1e-9)
    assert result.weights.shape == (2,) and result.entropy_weight == 0.0
    assert result.combined_grad_norm == pytest.approx(math.sqrt(2.0), rel=1e-9)
