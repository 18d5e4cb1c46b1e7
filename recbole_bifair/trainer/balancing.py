"""Adaptive inter-group balancing: BiFair's min-norm solve over group gradients.

Implements BiFair (Zhang et al., 2025), Section 3.3 ("adaptive inter-group balancing",
Eq. 8-11 in the layout of ``docs/STYLE.md``) and its Algorithm 2, as spelled out in
``docs/ALGORITHMS.md`` section 4, together with the MultiFR (MGDA) baseline of section 6 and
the safeguard of section 9.1. Everything here is a pure function of tensors: no global state,
no optimiser, no config object.

The pieces, in the order :func:`balance` uses them:

1. :func:`entropy_coefficients`: for the present groups' losses ``L``, ``p = softmax(L)``,
   ``H = -sum p log p`` and ``c_n = p_n (log p_n + H)``, so that ``-dH/dL = c`` and, by the
   chain rule, ``-grad_theta H(softmax(L)) = sum_n c_n g_n``. The ``c_n`` sum to zero.
2. :func:`group_gradients`: the N group gradients ``g_n = grad_theta L_n`` as an N x P
   matrix, from one batched backward (``is_grads_batched``) with an N-pass fallback.
3. :func:`extended_gram`: the Gram matrix of the extended set ``{g_1..g_N, -grad H}`` is
   ``C^T G C`` with ``C = [I_N | c]``: no backward pass beyond step 2.
4. :func:`min_norm_weights`: Frank-Wolfe for the min-norm point of the convex hull, on the
   Gram matrix only (MGDA, Sener & Koltun 2018; reference code isl-org/MultiObjectiveOptimization,
   read for the facts only), with a real iteration cap and the lower bound
   ``w_n >= min_group_weight`` on the group elements.
5. :func:`balance`: effective group weights ``alpha = w[:N] + w[N] * c`` (may be negative),
   to be used detached in the fair loss ``sum_n alpha_n L_n``. With ``entropy=False`` the
   extended set is just ``{g_1..g_N}`` and ``alpha = w`` (MultiFR).

Choices made here where the paper and the MGDA reference are silent or differ (each is an
argument, so a trainer can expose it as a config key):

* ``min_group_weight`` (gamma, default 0 = the literal algorithm): the paper's "minimum
  guarantee on the solutions for low-loss groups" (Section 3.3) read as ``w_n >= gamma`` for
  every group element (the entropy element stays unconstrained). Without it, nearly aligned
  group gradients make ``-grad H`` tiny and the solution sits on it (``w[N] ~ 1``,
  ``sum(alpha) ~ 0``): ALGORITHMS.md 9.1. The solve stays on the Gram matrix:
  ``{w in simplex : w_n >= gamma, n < k}`` is the simplex ``gamma*b + (1 - k gamma)*Delta``
  (``b`` the indicator of the k constrained elements), i.e. ``w = M u`` with
  ``M = gamma b 1^T + (1 - k gamma) I`` and ``u`` on the standard simplex, so
  ``|sum_i w_i v_i|^2 = u^T (M^T G M) u`` is again a min-norm problem, over the shifted
  vertices ``m_j = gamma b + (1 - k gamma) e_j``.
* ``balance_norm`` (``none|l2|loss|loss+``, as the MGDA reference's gradient normalisers):
  group element n of the extended set becomes ``s_n g_n``, with ``s_n`` from
  :func:`normalise_gradients`; the entropy element stays ``-grad H = sum_n c_n g_n`` with
  the raw ``g_n`` (it is the gradient of H, a quantity of its own, not a group's gradient),
  so the extended set's Gram is ``C_s^T G C_s`` with ``C_s = [diag(s) | c]`` and ``G`` the
  raw Gram. The solver's point ``sum_n w_n s_n g_n + w_N sum_n c_n g_n`` is then mapped back
  to raw-gradient weights: ``alpha_n = w_n s_n + w_N c_n``, so ``sum_n alpha_n g_n`` is
  exactly the min-norm point that was solved for. (The MGDA reference applies ``w`` to the
  raw losses without the factor ``s_n``; that is a different direction, not used here.)
  With scaling, ``min_group_weight`` bounds ``w_n`` (the weight of ``s_n g_n``), so
  ``alpha_n >= gamma s_n + w_N c_n``.
* Frank-Wolfe: the starting pair uses the two-point formula clipped to [0.001, 0.999], as in
  the reference; the line search of each step uses the same formula clipped to [0, 1] (the
  exact line search). Clipping steps to 0.999 would move every step at least 0.001 of the
  way to a vertex, so ``sum |dw| < tol`` could never hold away from a vertex; the reference
  hides this behind a cap that never counts. Here the cap counts, and the number of steps is
  returned. FW also runs for two elements, so the 0.001 clip of the start does not survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BalanceResult",
    "balance",
    "combined_gram",
    "entropy_coefficients",
    "extended_gram",
    "gram_matrix",
    "group_gradients",
    "min_norm_weights",
    "normalise_gradients",
]

GradientMethod = Literal["batched", "loop", "auto"]
BalanceNorm = Literal["none", "l2", "loss", "loss+"]
BALANCE_NORMS = ("none", "l2", "loss", "loss+")

# Relative size below which two points of a line search count as the same point
# (|a - b|^2 = v11 + v22 - 2 v12 is computed with cancellation, about 1e-16 relative).
_SAME_POINT = 1e-12
# Elements of the Gram product computed at once in group_gradients' float64 Gram.
_GRAM_CHUNK = 1 << 20


def entropy_coefficients(group_losses: Tensor) -> Tensor:
    """Coefficients ``c`` with ``-dH(softmax(L))/dL = c`` (Section 3.3; ALGORITHMS.md 4.1).

    ``p = softmax(L)``, ``H = -sum_n p_n log p_n``, ``c_n = p_n (log p_n + H)``. Since
    ``dH/dL_n = -p_n (log p_n + H)``, the element ``-grad_theta H = sum_n c_n g_n`` of the
    extended gradient set is a combination of the group gradients with coefficients summing
    to zero. Computed in float64 from the detached losses; returns a float64 vector of shape
    ``[N]`` on the losses' device.
    """
    losses = group_losses.detach().to(torch.float64).reshape(-1)
    log_p = torch.log_softmax(losses, dim=0)
    p = log_p.exp()
    entropy = -(p * log_p).sum()
    return p * (log_p + entropy)


def _flat_gradients(grads: Sequence[Tensor | None], params: Sequence[Tensor], batch: int) -> Tensor:
    """Concatenate per-parameter gradients of shape [batch, *param.shape] into [batch, P]."""
    pieces = []
    for grad, param in zip(grads, params, strict=True):
        if grad is None:
            pieces.append(param.new_zeros(batch, param.numel()))
        else:
            pieces.append(grad.reshape(batch, -1))
    return torch.cat(pieces, dim=1)


def group_gradients(
    group_losses: Tensor,
    params: Sequence[Tensor],
    retain_graph: bool = True,
    method: GradientMethod = "auto",
) -> Tensor:
    """The group gradients ``g_n = grad_params L_n`` as an ``[N, P]`` matrix (ALGORITHMS.md 4.2).

    Row n is the gradient of ``group_losses[n]`` flattened over ``params`` in order (each
    parameter's ``reshape(-1)``, concatenated), in the parameters' dtype. Parameters that do
    not reach the losses, or do not require grad, get zero columns. No graph is built for
    the gradients themselves (they are detached).

    ``method``:

    * ``"batched"``: one vectorised backward, ``torch.autograd.grad(group_losses, params,
      grad_outputs=eye(N), is_grads_batched=True)``. Fails with a ``RuntimeError`` where an op
      has no batching rule that works, notably ``torch.sparse.mm`` ("expand is unsupported
      for Sparse tensors"), as in graph propagation with a sparse adjacency matrix.
    * ``"loop"``: N backward passes, one per group; works for every graph.
    * ``"auto"`` (default): ``"batched"``, and on ``RuntimeError`` the ``"loop"``. The batched
      attempt always retains the graph (a backward that fails half-way must not have freed
      the buffers that the loop needs); ``retain_graph`` applies to the loop's last pass.
      Nothing is remembered between calls, so a graph that cannot batch pays for the failed
      attempt each time; a caller that knows should pass ``"loop"``.
    """
    if method not in ("batched", "loop", "auto"):
        raise ValueError(f"method must be 'batched', 'loop' or 'auto', not {method!r}")
    losses = group_losses.reshape(-1)
    n_groups = losses.numel()
    params = list(params)
    active = [index for index, param in enumerate(params) if param.requires_grad]
    active_params = [params[index] for index in active]
    grads: list[Tensor | None] = [None] * len(params)
    if n_groups == 0 or not active_params or not losses.requires_grad:
        return _flat_gradients(grads, params, n_groups)

    def batched(retain: bool) -> list[Tensor | None]:
        eye = torch.eye(n_groups, dtype=losses.dtype, device=losses.device)
        return list(
            torch.autograd.grad(
                losses,
                active_params,
                grad_outputs=eye,
                is_grads_batched=True,
                retain_graph=retain,
                allow_unused=True,
            )
        )

    def loop() -> list[Tensor | None]:
        rows: list[tuple[Tensor | None, ...]] = []
        for group in range(n_groups):
            retain = retain_graph or group < n_groups - 1
            rows.append(
                torch.autograd.grad(
                    losses[group], active_params, retain_graph=retain, allow_unused=True
                )
            )
        stacked: list[Tensor | None] = []
        for position, param in enumerate(active_params):
            column = [row[position] for row in rows]
            if all(grad is None for grad in column):
                stacked.append(None)
            else:
                stacked.append(
                    torch.stack([param.new_zeros(param.shape) if g is None else g for g in column])
                )
        return stacked

    if method == "batched":
        active_grads = batched(retain_graph)
    elif method == "loop":
        active_grads = loop()
    else:
        try:
            active_grads = batched(True)
        except RuntimeError:
            active_grads = loop()
    for index, grad in zip(active, active_grads, strict=True):
        grads[index] = None if grad is None else grad.detach()
    return _flat_gradients(grads, params, n_groups)


def gram_matrix(grads: Tensor) -> Tensor:
    """``G_ij = <g_i, g_j>`` in float64 for an ``[N, P]`` matrix (chunked over P)."""
    n_groups, width = grads.shape
    gram = grads.new_zeros((n_groups, n_groups), dtype=torch.float64)
    step = max(1, _GRAM_CHUNK // max(1, n_groups))
    for start in range(0, width, step):
        block = grads[:, start : start + step].to(torch.float64)
        gram += block @ block.T
    return gram


def extended_gram(gram: Tensor, coef: Tensor, scales: Tensor | None = None) -> Tensor:
    """Gram of ``{s_1 g_1, .., s_N g_N, sum_n c_n g_n}`` from the raw Gram ``G`` (ALGORITHMS.md 4.3).

    ``C^T G C`` with ``C = [diag(s) | c]`` (``s = 1`` by default: ``C = [I_N | c]``), an
    ``[N+1, N+1]`` float64 matrix. The last element is ``-grad H`` when ``c`` comes from
    :func:`entropy_coefficients`; it always uses the raw gradients (see the module docstring
    on ``balance_norm``).
    """
    gram = gram.to(torch.float64)
    coef = coef.to(torch.float64).reshape(-1, 1)
    n_groups = gram.shape[0]
    if gram.shape != (n_groups, n_groups) or coef.shape[0] != n_groups:
        raise ValueError(
            f"gram must be [N, N] and coef [N]; got {tuple(gram.shape)}, {tuple(coef.shape)}"
        )
    if scales is None:
        group_part = torch.eye(n_groups, dtype=torch.float64, device=gram.device)
    else:
        group_part = torch.diag(scales.to(torch.float64).reshape(-1))
    basis = torch.cat([group_part, coef], dim=1)
    return basis.T @ gram @ basis


def combined_gram(gram: Tensor, scales: Tensor | None = None) -> Tensor:
    """Gram of ``{s_1 g_1, .., s_N g_N}`` (MultiFR's set): ``diag(s) G diag(s)`` in float64."""
    gram = gram.to(torch.float64)
    if scales is None:
        return gram
    scales = scales.to(torch.float64).reshape(-1)
    return scales[:, None] * gram * scales[None, :]


def _line_search(v11: float, v12: float, v22: float) -> float | None:
    """``argmin_c |c a + (1-c) b|^2`` (unclipped) from ``<a,a>, <a,b>, <b,b>``; None if a = b."""
    distance = v11 + v22 - 2.0 * v12  # |a - b|^2
    if distance <= _SAME_POINT * (abs(v11) + abs(v22)) or distance <= 0.0:
        return None
    return (v22 - v12) / distance


def _frank_wolfe(
    gram: np.ndarray, max_iter: int, tol: float, step_scale: float
) -> tuple[np.ndarray, int]:
    """Min-norm point of the convex hull of the points whose Gram is ``gram``.

    Returns ``(u, steps)``; ``step_scale`` converts a change of ``u`` into the change of the
    caller's weights (``1 - k gamma`` for the shifted simplex) for the stopping rule.
    """
    size = gram.shape[0]
    if size == 1:
        return np.ones(1), 0
    # Start: the best pair, two-point formula clipped to [0.001, 0.999] (MGDA reference).
    diag = np.diag(gram)
    rows, cols = np.triu_indices(size, k=1)
    v11, v22, v12 = diag[rows], diag[cols], gram[rows, cols]
    distance = v11 + v22 - 2.0 * v12
    same = (distance <= _SAME_POINT * (np.abs(v11) + np.abs(v22))) | (distance <= 0.0)
    weight = np.where(same, 0.5, (v22 - v12) / np.where(same, 1.0, distance))
    weight = np.clip(weight, 0.001, 0.999)
    cost = weight**2 * v11 + 2.0 * weight * (1.0 - weight) * v12 + (1.0 - weight) ** 2 * v22
    best = int(np.argmin(cost))
    u = np.zeros(size)
    u[rows[best]] = weight[best]
    u[cols[best]] = 1.0 - weight[best]

    steps = 0
    while steps < max_iter:
        steps += 1
        gram_u = gram @ u
        vertex = int(np.argmin(gram_u))
        keep = _line_search(float(u @ gram_u), float(gram_u[vertex]), float(gram[vertex, vertex]))
        keep = 1.0 if keep is None else min(1.0, max(0.0, keep))
        new_u = keep * u
        new_u[vertex] += 1.0 - keep
        change = step_scale * float(np.abs(new_u - u).sum())
        u = new_u
        if change < tol:
            break
    return u, steps


def _check_min_weight(min_weight: float, n_constrained: int) -> None:
    """Raise ValueError unless 0 <= min_weight and min_weight * n_constrained <= 1."""
    if min_weight < 0.0:
        raise ValueError(f"min_group_weight must be >= 0, got {min_weight}")
    if min_weight * n_constrained > 1.0 + 1e-12:
        raise ValueError(
            f"min_group_weight = {min_weight} is too large for {n_constrained} groups: "
            f"min_group_weight * groups = {min_weight * n_constrained:g} > 1; use at most "
            f"{1.0 / n_constrained:g}"
        )


def min_norm_weights(
    gram: Tensor,
    max_iter: int = 250,
    tol: float = 1e-5,
    min_weight: float = 0.0,
    n_constrained: int | None = None,
) -> tuple[Tensor, int]:
    """Weights of the min-norm point of a convex hull, from its Gram matrix (Algorithm 2).

    Minimises ``w^T G w`` over ``w >= 0``, ``sum w = 1`` and ``w_i >= min_weight`` for the
    first ``n_constrained`` elements (all of them by default) by Frank-Wolfe: start from the
    best pair (two-point formula ``c = (v22 - v12) / (v11 + v22 - 2 v12)`` clipped to
    [0.001, 0.999]); each step takes the vertex ``t = argmin_t (G w)_t`` and the exact line
    search between ``w`` and vertex ``t`` (same formula, clipped to [0, 1]); stop when
    ``sum |dw| < tol`` or after ``max_iter`` steps. With ``min_weight > 0`` the vertices are
    those of the shifted simplex (module docstring), so only ``G`` is needed.

    Returns ``(w, steps)``: ``w`` float64 on the Gram's device, ``steps`` the number of FW
    steps taken (``<= max_iter``; 0 for a single element or a fully fixed ``w``).

    Raises ValueError if ``min_weight * n_constrained > 1`` (the key is ``min_group_weight``)
    or an argument is out of range.
    """
    matrix = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    size = matrix.shape[0] if matrix.ndim == 2 else 0
    if matrix.ndim != 2 or matrix.shape != (size, size) or size == 0:
        raise ValueError(f"gram must be a non-empty square matrix, got shape {tuple(gram.shape)}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("gram has non-finite entries (a group loss or gradient is nan/inf)")
    n_constrained = size if n_constrained is None else n_constrained
    if not 0 <= n_constrained <= size:
        raise ValueError(f"n_constrained must be in [0, {size}], got {n_constrained}")
    _check_min_weight(min_weight, n_constrained)
    slack = max(0.0, 1.0 - min_weight * n_constrained)
    floor = np.zeros(size)
    floor[:n_constrained] = min_weight
    if slack == 0.0:
        # Every weight is fixed at the bound (min_weight * n_constrained = 1).
        weights, steps = floor, 0
    elif min_weight == 0.0 or n_constrained == 0:
        weights, steps = _frank_wolfe(matrix, max_iter, tol, 1.0)
    else:
        # w = M u, M = floor 1^T + slack I: the shifted simplex (module docstring).
        shift = floor[:, None] * np.ones((1, size)) + slack * np.eye(size)
        u, steps = _frank_wolfe(shift.T @ matrix @ shift, max_iter, tol, slack)
        weights = shift @ u
    return torch.as_tensor(weights, dtype=torch.float64, device=gram.device), steps


def normalise_gradients(grads: Tensor, losses: Tensor, mode: BalanceNorm = "none") -> Tensor:
    """Scales ``s_n`` of the group gradients before the solve (MGDA's gradient normalisers).

    ``"none"``: 1; ``"l2"``: ``1 / |g_n|``; ``"loss"``: ``1 / L_n``; ``"loss+"``:
    ``1 / (L_n |g_n|)``. The solver then works on ``s_n g_n`` and :func:`balance` maps its
    weights back to raw-gradient weights ``alpha_n = w_n s_n (+ w_N c_n)``. A zero norm or a
    non-positive loss gets scale 1 (a zero gradient stays zero at any scale). Returns float64
    ``[N]`` on the gradients' device.
    """
    if mode not in BALANCE_NORMS:
        raise ValueError(f"balance_norm must be one of {BALANCE_NORMS}, got {mode!r}")
    n_groups = grads.shape[0]
    ones = torch.ones(n_groups, dtype=torch.float64, device=grads.device)
    if mode == "none":
        return ones
    divisor = ones
    if mode in ("l2", "loss+"):
        divisor = divisor * torch.linalg.vector_norm(grads, dim=1, dtype=torch.float64)
    if mode in ("loss", "loss+"):
        divisor = divisor * losses.detach().to(device=grads.device, dtype=torch.float64).reshape(-1)
    return torch.where(divisor > 0, 1.0 / torch.where(divisor > 0, divisor, ones), ones)


@dataclass
class BalanceResult:
    """What :func:`balance` found.

    alpha: effective group weights ``[N]`` (losses' dtype and device, detached); the fair loss
        is ``sum_n alpha_n L_n`` and its gradient ``sum_n alpha_n g_n``. May be negative.
    weights: the solver's weights ``w`` (float64, on the CPU), ``[N+1]`` with the entropy
        element last, ``[N]`` without it.
    entropy_weight: ``w[N]``, or 0 without the entropy element.
    combined_grad_norm: ``|sum_n alpha_n g_n|``; tiny values mean the collapse of
        ALGORITHMS.md 9.1.
    group_grads: the ``[N, P]`` group gradients (reusable, e.g. the virtual step's gradient
        is ``alpha @ group_grads``).
    n_iter: Frank-Wolfe steps taken.
    """

    alpha: Tensor
    weights: Tensor
    entropy_weight: float
    combined_grad_norm: float
    group_grads: Tensor
    n_iter: int


def balance(
    group_losses: Tensor,
    params: Sequence[Tensor],
    *,
    entropy: bool = True,
    min_group_weight: float = 0.0,
    balance_norm: BalanceNorm = "none",
    max_iter: int = 250,
    tol: float = 1e-5,
    grads: Tensor | None = None,
    method: GradientMethod = "auto",
    retain_graph: bool = True,
) -> BalanceResult:
    """Adaptive inter-group balancing (Section 3.3, Algorithm 2; ALGORITHMS.md 4, 6, 9.1).

    ``group_losses`` holds the losses of the groups present in the batch. With
    ``entropy=True`` (BiFair) the min-norm point is taken over
    ``{s_1 g_1, .., s_N g_N, -grad H}`` and ``alpha = w[:N] * s + w[N] * c``; with
    ``entropy=False`` (MultiFR) over ``{s_n g_n}`` and ``alpha = w * s``. ``s = 1`` unless
    ``balance_norm`` says otherwise (:func:`normalise_gradients`). ``min_group_weight``
    bounds every group element's ``w_n`` from below; the entropy element is free.

    ``grads`` (``[N, P]``) skips the backward pass (``params`` is then unused);
    otherwise they come from :func:`group_gradients` with ``method`` and ``retain_graph``
    (kept by default: the caller's ``sum alpha L`` needs the graph). One present group
    gives ``alpha = [1]`` (its entropy is constant, so ``-grad H = 0``).
    """
    losses = group_losses.reshape(-1)
    n_groups = losses.numel()
    if n_groups == 0:
        raise ValueError("balance needs at least one present group")
    if grads is None:
        grads = group_gradients(losses, params, retain_graph=retain_graph, method=method)
    if grads.ndim != 2 or grads.shape[0] != n_groups:
        raise ValueError(f"grads must be [{n_groups}, P], got {tuple(grads.shape)}")
    _check_min_weight(min_group_weight, n_groups)
    gram = gram_matrix(grads)
    if n_groups == 1:
        alpha64 = torch.ones(1, dtype=torch.float64, device=gram.device)
        weights = torch.tensor([1.0, 0.0] if entropy else [1.0], dtype=torch.float64)
        steps = 0
        entropy_weight = 0.0
    else:
        scales = normalise_gradients(grads, losses, balance_norm)
        if entropy:
            coef = entropy_coefficients(losses).to(gram.device)
            solve_gram = extended_gram(gram, coef, scales)
        else:
            solve_gram = combined_gram(gram, scales)
        weights, steps = min_norm_weights(
            solve_gram,
            max_iter=max_iter,
            tol=tol,
            min_weight=min_group_weight,
            n_constrained=n_groups,
        )
        weights = weights.to(gram.device)
        alpha64 = weights[:n_groups] * scales
        entropy_weight = 0.0
        if entropy:
            entropy_weight = float(weights[n_groups])
            alpha64 = alpha64 + weights[n_groups] * coef
    combined = float((alpha64 @ gram @ alpha64).clamp_min(0.0).sqrt())
    return BalanceResult(
        alpha=alpha64.to(dtype=losses.dtype, device=losses.device).detach(),
        weights=weights.cpu(),
        entropy_weight=entropy_weight,
        combined_grad_norm=combined,
        group_grads=grads,
        n_iter=steps,
    )
