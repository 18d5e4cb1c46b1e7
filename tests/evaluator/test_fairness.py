"""Per-group utilities, CV and MIN against hand-computed cases (ALGORITHMS.md section 7)."""

import math

import pytest
import torch

from recbole_bifair.evaluator.fairness import (
    coefficient_of_variation,
    group_utilities,
    lowest_quarter_mean,
    per_user_group_utility,
)


def case_two_groups():
    """Three users, K = 3, two groups; item groups of the top-3 and per-group positives.

    user 0: top-3 groups [0, 1, 0], hits [1, 0, 1]; positives per group [2, 1]
    user 1: top-3 groups [1, 1, 0], hits [0, 1, 0]; positives per group [0, 2]
    user 2: top-3 groups [0, 0, 1], hits [0, 0, 0]; positives per group [1, 0]
    """
    hits = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    groups = torch.tensor([[0, 1, 0], [1, 1, 0], [0, 0, 1]])
    positives = torch.tensor([[2, 1], [0, 2], [1, 0]])
    return hits, groups, positives


def test_recall_per_user_and_group_by_hand():
    hits, groups, positives = case_two_groups()
    util = per_user_group_utility(hits, groups, positives, k=3, utility="recall")
    expected = torch.tensor([[2 / 2, 0 / 1], [0.0, 1 / 2], [0 / 1, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(util, expected)
    # K = 1 only sees the first rank.
    util1 = per_user_group_utility(hits, groups, positives, k=1, utility="recall")
    torch.testing.assert_close(util1, torch.tensor([[0.5, 0], [0, 0], [0, 0]], dtype=torch.float64))


def test_ndcg_and_hit_per_group_by_hand():
    hits, groups, positives = case_two_groups()
    ndcg = per_user_group_utility(hits, groups, positives, k=3, utility="ndcg")
    # user 0 group 0: hits at ranks 0 and 2 -> (1 + 1/log2(4)) / (1 + 1/log2(3))
    u0g0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    # user 1 group 1: hit at rank 1 -> (1/log2(3)) / (1 + 1/log2(3)) (2 positives in group 1)
    u1g1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    expected = torch.tensor([[u0g0, 0.0], [0.0, u1g1], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(ndcg, expected)
    hit = per_user_group_utility(hits, groups, positives, k=3, utility="hit")
    torch.testing.assert_close(hit, torch.tensor([[1.0, 0], [0, 1], [0, 0]], dtype=torch.float64))


def test_group_utility_normalisers_cv_and_min():
    hits, groups, positives = case_two_groups()
    paper = group_utilities(hits, groups, positives, k=3, normaliser="all")
    # G = (1/|U|) sum_u util(u, n): group 0 = (1 + 0 + 0)/3, group 1 = (0 + 0.5 + 0)/3
    torch.testing.assert_close(paper.values, torch.tensor([1 / 3, 0.5 / 3], dtype=torch.float64))
    assert paper.n_absent == 0
    mean = (1 / 3 + 0.5 / 3) / 2
    std = math.sqrt(((1 / 3 - mean) ** 2 + (0.5 / 3 - mean) ** 2) / 2)
    assert paper.cv() == pytest.approx(std / mean)
    assert paper.min() == pytest.approx(0.5 / 3)  # max(1, floor(2/4)) = 1 lowest group
    itfr = group_utilities(hits, groups, positives, k=3, normaliser="group")
    # users with a test item in group 0: users 0 and 2 -> (1 + 0)/2; group 1: users 0, 1 -> 0.5/2
    torch.testing.assert_close(itfr.values, torch.tensor([0.5, 0.25], dtype=torch.float64))


def test_five_groups_with_an_empty_group_and_shared_top_items():
    """Five groups, group 3 has no test item anywhere; items in the top-K of several users."""
    hits = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    # the same item (group 0) at rank 0 for every user
    groups = torch.tensor([[0, 1, 2, 4], [0, 2, 4, 1], [0, 1, 3, 4], [0, 0, 3, 2]])
    positives = torch.tensor([[1, 1, 0, 0, 1], [2, 0, 0, 0, 1], [0, 0, 1, 0, 1], [1, 0, 0, 0, 0]])
    result = group_utilities(hits, groups, positives, k=4)
    assert result.present.tolist() == [0, 1, 2, 4]
    assert result.n_absent == 1
    # group 0: u0 1/1, u1 1/2, u2 -, u3 1/1 -> 2.5/4; group 1: u0 1/1 -> 1/4;
    # group 2: u1's hit at rank 2 is group 4, u2 has 1 positive, 0 hits -> 0;
    # group 4: u1 rank 2 hit (group 4) 1/1, u2 rank 3 hit (group 4) 1/1, u0 0/1 -> 2/4
    torch.testing.assert_close(
        result.values, torch.tensor([2.5 / 4, 1 / 4, 0.0, 2 / 4], dtype=torch.float64)
    )
    assert result.min() == pytest.approx(0.0)  # floor(4/4) = 1 lowest group
    values = result.values
    assert result.cv() == pytest.approx(float(values.std(unbiased=False) / values.mean()))


def test_min_takes_the_lowest_quarter_and_single_group_cv_is_zero():
    values = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.7, 0.6], dtype=torch.float64)
    assert lowest_quarter_mean(values) == pytest.approx((0.1 + 0.2) / 2)  # floor(8/4) = 2
    assert lowest_quarter_mean(values[:3]) == pytest.approx(0.1)  # max(1, floor(3/4)) = 1
    single = torch.tensor([0.4], dtype=torch.float64)
    assert coefficient_of_variation(single) == 0.0
    assert lowest_quarter_mean(single) == pytest.approx(0.4)
    assert math.isnan(coefficient_of_variation(torch.zeros(3, dtype=torch.float64)))


def test_items_without_a_group_count_for_no_group():
    hits = torch.tensor([[1, 1]])
    groups = torch.tensor([[-1, 0]])
    positives = torch.tensor([[2]])
    util = per_user_group_utility(hits, groups, positives, k=2, utility="recall")
    assert util.tolist() == [[0.5]]
