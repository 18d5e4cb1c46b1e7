"""The negative scores without the [B, K, D] gather (ALGORITHMS.md section 3): the sampled
kernels and the dense distinct-user GEMM give today's loss and gradients (float64, 1e-6), to
every order and under vmap; the cost model's choice; the group-gradient path on each method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_bifair.model.negative_scores import (
    choose_method,
    info_nce,
    negative_scores,
    score_cost,
)
from recbole_bifair.model.sampled_ops import (
    GatherSum,
    SampledDot,
    SampledPairs,
    ScatterSum,
    sampled_dot,
)

METHODS = ["dense", "sampled"]


def random_batch(seed=0, n_users=7, n_items=11, batch=9, k=6, dim=5, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    user_emb = torch.randn(n_users, dim, dtype=dtype, generator=generator, requires_grad=True)
    item_emb = torch.randn(n_items, dim, dtype=dtype, generator=generator, requires_grad=True)
    users = torch.randint(0, n_users, (batch,), generator=generator)
    users[:3] = users[3]  # repeated users, as the user-uniform sampler gives
    pos_items = torch.randint(0, n_items, (batch,), generator=generator)
    neg_items = torch.randint(0, n_items, (batch, k), generator=generator)
    neg_items[0, :2] = neg_items[0, 2]  # a negative drawn twice in one row (with replacement)
    return user_emb, item_emb, users, pos_items, neg_items


def loss_of(method, user_emb, item_emb, users, pos_items, neg_items, tau=0.2):
    user_unit = F.normalize(user_emb[users], dim=-1)
    item_unit = F.normalize(item_emb, dim=-1)
    pos_scores = (user_unit * item_unit[pos_items]).sum(-1)
    return info_nce(pos_scores, negative_scores(method, user_emb, user_unit, item_unit, users, neg_items), tau)


@pytest.mark.parametrize("method", METHODS)
def test_loss_and_gradients_equal_the_gather_path(method):
    user_emb, item_emb, users, pos_items, neg_items = random_batch()
    weights = torch.rand(len(users), dtype=torch.float64)
    expected = loss_of("gather", user_emb, item_emb, users, pos_items, neg_items)
    expected_grads = torch.autograd.grad((weights * expected).sum(), [user_emb, item_emb])
    got = loss_of(method, user_emb, item_emb, users, pos_items, neg_items)
    got_grads = torch.autograd.grad((weights * got).sum(), [user_emb, item_emb])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-6)


def test_sampled_kernels_pass_gradcheck_to_second_order():
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    table = torch.randn(7, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.randn(4, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    pairs = SampledPairs(torch.randint(0, 7, (4, 6), generator=generator), 7)
    for function, inputs in [(SampledDot, (rows, table)), (GatherSum, (table, weights)), (ScatterSum, (rows, weights))]:
        apply = lambda first, second, function=function: function.apply(first, second, pairs)  # noqa: E731
        assert torch.autograd.gradcheck(apply, inputs)
        assert torch.autograd.gradgradcheck(apply, inputs)


def test_sampled_scores_under_batched_backward_equal_the_loop():
    """``is_grads_batched`` (group_grad_method: batched) runs the kernels' vmap rules."""
    user_emb, item_emb, users, pos_items, neg_items = random_batch(seed=2)
    loss = loss_of("sampled", user_emb, item_emb, users, pos_items, neg_items)
    selectors = torch.eye(len(users), dtype=torch.float64)[:4]
    batched = torch.autograd.grad(loss, [user_emb, item_emb], selectors, retain_graph=True, is_grads_batched=True)
    for row, selector in enumerate(selectors):
        looped = torch.autograd.grad(loss, [user_emb, item_emb], selector, retain_graph=True)
        for got, want in zip(batched, looped, strict=True):
            torch.testing.assert_close(got[row], want, rtol=0, atol=1e-10)


def test_sampled_dot_matches_the_gathered_rows_in_float32():
    generator = torch.Generator().manual_seed(3)
    rows, table = torch.randn(64, 16, generator=generator), torch.randn(300, 16, generator=generator)
    index = torch.randint(0, 300, (64, 40), generator=generator)
    torch.testing.assert_close(sampled_dot(rows, table, index), (table[index] * rows.unsqueeze(1)).sum(-1))


def test_cost_model_picks_dense_for_few_items_and_sampled_for_many():
    # ml100k-like: 4096 samples over about 840 distinct users, 1.7k items, K = 256
    assert choose_method("auto", 840, 4096, 1683, 256, 64) == "dense"
    # games-like: 4096 samples over about 3.5k distinct users, 14.5k items
    assert choose_method("auto", 3470, 4096, 14497, 256, 64) == "sampled"
    assert choose_method("gather", 3470, 4096, 14497, 256, 64) == "gather"
    assert score_cost("dense", 10, 100, 8, 64) < score_cost("dense", 20, 100, 8, 64)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_paths_equal_the_gather_path(method):
    batch = [tensor.detach().cuda().requires_grad_(tensor.requires_grad) for tensor in random_batch(seed=4)]
    user_emb, item_emb = batch[:2]
    expected = loss_of("gather", *batch)
    expected_grads = torch.autograd.grad(expected.sum(), [user_emb, item_emb])
    got = loss_of(method, *batch)
    got_grads = torch.autograd.grad(got.sum(), [user_emb, item_emb])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-6)
