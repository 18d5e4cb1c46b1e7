"""Per-sample InfoNCE with K sampled negatives, and how the negatives' scores are computed.

ALGORITHMS.md section 3; Sheng et al. 2024 (AlphaRec), Eq. 4: with cosine scores s = u . i
(unit rows) and temperature tau, l_b = logsumexp([s_pos, s_neg_1..K] / tau) - s_pos / tau. The
estimator is fixed (negatives per sample, uniform outside the user's train set, drawn by the
model's sampler); only the arithmetic of the [B, K] negative scores has a choice
(``negative_scores``), all giving the same values and gradients:

- ``dense``: one GEMM of the batch's distinct users against all items, [U', I], read per
  sample through a flat gather; the backward is two GEMMs. Cheap when I is small, or when the
  user-uniform sampler repeats users (ml100k: 4096 samples over about 840 users).
- ``sampled``: only the B K products, by the gather-free kernels of :mod:`sampled_ops`
  (SDDMM forward, ``embedding_bag`` backward). Cheap when I >> K (games: 14.5k items).
- ``gather``: ``item_unit[neg_items]`` then ``bmm``: writes [B, K, D] and scatters its gradient
  back; the reference the others are tested against, kept for the benchmark.
- ``auto`` (default): the cheaper of ``dense`` and ``sampled`` by :func:`score_cost`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from recbole_bifair.model.sampled_ops import (
    SampledPairs,
    gather_sum_values,
    sampled_dot,
    scatter_sum_values,
)

METHODS = ("auto", "dense", "sampled", "gather")

# Cost model (benchmarks/README.md, model speed; one core of the development CPU, fp32; only the
# ratios matter). dense: 3 GEMMs of U' x I x D plus about 4 passes over the [U', I] scores;
# sampled: 3 passes over the B K pairs, each reading a D-wide row where it lies, plus a sort of
# the pairs by item for the item gradient.
GEMM_FLOPS_PER_SECOND = 70e9
STREAM_BYTES_PER_SECOND = 10e9
ROW_BYTES_PER_SECOND = 6e9
SORT_SECONDS_PER_PAIR = 35e-9


def score_cost(method: str, n_rows: int, n_items: int, num_negatives: int, dim: int) -> float:
    """Estimated seconds of the [B, K] negative scores, forward and backward (see the constants).

    ``n_rows`` is the number of score rows the method computes: the batch's distinct users for
    ``dense``, the batch size B for ``sampled`` (B K pairs).
    """
    if method == "dense":
        flops = 3 * 2 * n_rows * n_items * dim
        traffic = 4 * 4 * n_rows * n_items
        return flops / GEMM_FLOPS_PER_SECOND + traffic / STREAM_BYTES_PER_SECOND
    pairs = n_rows * num_negatives
    return 3 * pairs * dim * 4 / ROW_BYTES_PER_SECOND + pairs * SORT_SECONDS_PER_PAIR


def choose_method(method: str, n_distinct: int, n_samples: int, n_items: int, num_negatives: int, dim: int) -> str:
    """``method`` unless ``auto``; then ``dense`` or ``sampled``, whichever :func:`score_cost` says is cheaper."""
    if method != "auto":
        return method
    dense = score_cost("dense", n_distinct, n_items, num_negatives, dim)
    sampled = score_cost("sampled", n_samples, n_items, num_negatives, dim)
    return "dense" if dense <= sampled else "sampled"


def dense_scores(user_emb: torch.Tensor, item_unit: torch.Tensor, users: torch.Tensor, neg_items: torch.Tensor,
                 autocast=contextlib.nullcontext) -> torch.Tensor:
    """[B, K] scores read from the distinct users' dense cosine rows [U', I] (``dense``)."""
    distinct, inverse = torch.unique(users, return_inverse=True)
    distinct_unit = F.normalize(user_emb[distinct], dim=-1)
    with autocast():  # the GEMM in bf16 under ``precision: bf16``
        scores = distinct_unit @ item_unit.T
    flat = (inverse.unsqueeze(1) * item_unit.shape[0] + neg_items).reshape(-1)
    return torch.gather(scores.reshape(-1), 0, flat).view_as(neg_items).to(item_unit.dtype)


def negative_scores(method: str, user_emb, user_unit, item_unit, users, neg_items,
                    autocast=contextlib.nullcontext) -> torch.Tensor:
    """[B, K] cosines user_unit[b] . item_unit[neg_items[b, k]] by ``method`` (not ``auto``)."""
    if method == "dense":
        return dense_scores(user_emb, item_unit, users, neg_items, autocast)
    if method == "sampled":
        return sampled_dot(user_unit, item_unit, neg_items)
    if method == "gather":
        return torch.bmm(item_unit[neg_items], user_unit.unsqueeze(2)).squeeze(2)
    raise ValueError(f"negative score method must be one of {METHODS[1:]}, got {method!r}")


def info_nce(pos_scores: torch.Tensor, neg_scores: torch.Tensor, tau: float) -> torch.Tensor:
    """l_b = logsumexp([s_pos, s_neg] / tau) - s_pos / tau, in float32 at least; [B]."""
    logits = torch.cat([pos_scores.unsqueeze(1), neg_scores.to(pos_scores.dtype)], dim=1) / tau
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def negative_embedding_gradients(method: str, neg_grad: torch.Tensor, user_unit: torch.Tensor,
                                 item_unit: torch.Tensor, neg_items: torch.Tensor, group: torch.Tensor,
                                 n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The negatives' share of the per-group gradients w.r.t. the unit rows, from dL/ds [B, K].

    Returns (d/d user_unit [B, D], per-sample, and d/d item_unit [n_groups * I, D], each sample's
    share routed to ``group[b]``): d s_bk / d user_unit_b = item_unit[neg_bk] and
    d s_bk / d item_unit[neg_bk] = user_unit_b. ``dense`` builds dL/dS [B, I] and multiplies;
    the others use the gather-free kernels with the item keys offset by group.
    """
    n_items = item_unit.shape[0]
    if method == "dense":
        score_grad = torch.zeros(len(neg_grad), n_items, dtype=neg_grad.dtype, device=neg_grad.device)
        score_grad.scatter_add_(1, neg_items, neg_grad)
        item_out = torch.zeros(n_groups, n_items, item_unit.shape[1], dtype=item_unit.dtype, device=item_unit.device)
        for index in range(n_groups):
            rows = torch.nonzero(group == index).squeeze(1)
            item_out[index] = score_grad[rows].T @ user_unit[rows]
        return score_grad @ item_unit, item_out.view(-1, item_unit.shape[1])
    user_out = gather_sum_values(item_unit, neg_grad, SampledPairs(neg_items, n_items))
    group_pairs = SampledPairs(group.unsqueeze(1) * n_items + neg_items, n_groups * n_items)
    return user_out, scatter_sum_values(user_unit, neg_grad, group_pairs)
