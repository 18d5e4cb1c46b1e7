"""Item-group fairness measures as pure functions (ALGORITHMS.md section 7; paper Eq. 1).

For each user u and item group n, T_u^n are u's test items in group n. The top-K list is NOT
restricted to the group. Per-user group utilities:

- Recall(u, n) = |topK ∩ T_u^n| / |T_u^n|                (0 when T_u^n is empty)
- NDCG(u, n)   = sum_{r < K, item_r in T_u^n} 1/log2(r+2) / IDCG(min(|T_u^n|, K))
- Hit(u, n)    = 1 if topK ∩ T_u^n is non-empty

Group utility G(n) = (1/|U|) sum_u util(u, n) over all evaluated users (paper, default) or,
with normaliser ``group``, over the users with at least one test item in n (ITFR's code).
CV = std(G, ddof=0) / mean(G); MIN = mean of the lowest max(1, floor(N/4)) group utilities.
Groups with no test interaction at all are left out of both and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

UTILITIES = ("recall", "ndcg", "hit")
NORMALISERS = ("all", "group")


@dataclass
class GroupUtilities:
    """Per-group utilities of one group kind at one cut-off K."""

    values: torch.Tensor  # float64 [N_present]
    present: torch.Tensor  # long [N_present]: group ids that have test interactions
    n_absent: int  # groups left out because they have no test interaction

    def cv(self) -> float:
        return coefficient_of_variation(self.values)

    def min(self) -> float:
        return lowest_quarter_mean(self.values)


def per_user_group_utility(
    hit_flags: torch.Tensor,
    topk_groups: torch.Tensor,
    positives_per_group: torch.Tensor,
    k: int,
    utility: str = "recall",
) -> torch.Tensor:
    """util(u, n) for every user and group, as a float64 [U, N] matrix.

    Args:
        hit_flags: [U, K_max] 0/1, whether the item at rank r is a test item of u.
        topk_groups: [U, K_max] group id of the item at rank r (-1 for items in no group).
        positives_per_group: [U, N] number of test items of u in each group.
        k: the cut-off (<= K_max).
        utility: one of ``recall``, ``ndcg``, ``hit``.
    """
    if utility not in UTILITIES:
        raise ValueError(f"utility must be one of {UTILITIES}, got {utility!r}")
    n_users, n_groups = positives_per_group.shape
    hits = hit_flags[:, :k].to(torch.float64)
    groups = topk_groups[:, :k]
    if utility == "ndcg":
        ranks = torch.arange(k, dtype=torch.float64, device=hits.device)
        hits = hits / torch.log2(ranks + 2.0)
    in_group = groups >= 0
    gains = torch.zeros(n_users, n_groups + 1, dtype=torch.float64, device=hits.device)
    # Items in no group are routed to an extra column that is dropped.
    gains.scatter_add_(1, torch.where(in_group, groups, n_groups), hits)
    gains = gains[:, :n_groups]
    positives = positives_per_group.to(torch.float64)
    if utility == "hit":
        return (gains > 0).to(torch.float64)
    if utility == "recall":
        return torch.where(positives > 0, gains / positives.clamp(min=1.0), 0.0)
    ideal = ideal_dcg(positives.clamp(max=k).long(), k)
    return torch.where(positives > 0, gains / ideal.clamp(min=1e-12), 0.0)


def ideal_dcg(n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """IDCG for each entry of ``n_relevant`` (number of relevant items, already <= k)."""
    discounts = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64, device=n_relevant.device) + 2)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64, device=n_relevant.device),
                            discounts.cumsum(0)])
    return cumulative[n_relevant]


def group_utilities(
    hit_flags: torch.Tensor,
    topk_groups: torch.Tensor,
    positives_per_group: torch.Tensor,
    k: int,
    utility: str = "recall",
    normaliser: str = "all",
) -> GroupUtilities:
    """G(n) for the groups that have at least one test interaction (paper Eq. 1)."""
    if normaliser not in NORMALISERS:
        raise ValueError(f"fair_normaliser must be one of {NORMALISERS}, got {normaliser!r}")
    per_user = per_user_group_utility(hit_flags, topk_groups, positives_per_group, k, utility)
    has_positive = positives_per_group > 0
    present = has_positive.any(dim=0).nonzero().flatten()
    totals = per_user.sum(dim=0)[present]
    if normaliser == "all":
        denominators = torch.full_like(totals, float(max(per_user.shape[0], 1)))
    else:
        denominators = has_positive.sum(dim=0)[present].to(torch.float64)
    n_absent = int(positives_per_group.shape[1] - present.numel())
    return GroupUtilities(totals / denominators, present, n_absent)


def coefficient_of_variation(values: torch.Tensor) -> float:
    """std(G, ddof=0) / mean(G); undefined (nan) when there is no group or every G(n) is 0."""
    if values.numel() == 0:
        return float("nan")
    mean = values.mean()
    if mean == 0:
        return float("nan")
    return float(values.std(unbiased=False) / mean)


def lowest_quarter_mean(values: torch.Tensor) -> float:
    """Mean of the lowest max(1, floor(N/4)) group utilities."""
    if values.numel() == 0:
        return float("nan")
    count = max(1, values.numel() // 4)
    return float(torch.sort(values).values[:count].mean())
