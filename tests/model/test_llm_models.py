"""LLMLinear and AlphaRec (ALGORITHMS.md sections 2-3): the shared base's maths and sampler
against direct computations, Z's learnability, and training through run_recbole.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import train_and_read
from recbole.utils import init_seed

from recbole_bifair.model.alpharec import hidden_width
from recbole_bifair.model.llm_base import (
    lightgcn_propagate,
    normalized_bipartite_adjacency,
    packed_bitmap,
    user_mean_matrix,
)
from recbole_bifair.quick_start import build_config, build_data, build_trainer, evaluate_saved
from recbole_bifair.registry import get_model

torch.set_num_threads(1)


def build(model_name: str, data_root, **settings):
    """(config, model, train_data, valid_data) on the prepared ml100k, built in-process."""
    config = build_config(model_name, "ml100k", config_dict={"data_path": str(data_root), "seed": 7, **settings})
    init_seed(config["seed"], True)
    _dataset, train_data, valid_data, _test = build_data(config)
    model = get_model(model_name)(config, train_data._dataset)
    return config, model, train_data, valid_data


@pytest.fixture(scope="module")
def linear(ml100k_root):
    return build("LLMLinear", ml100k_root)


@pytest.fixture(scope="module")
def alpharec(ml100k_root):
    return build("AlphaRec", ml100k_root)


def first_batch(train_data):
    return next(iter(train_data))


# ------------------------------------------------------------------ pure functions


def tiny_graph():
    users = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    items = torch.tensor([0, 1, 1, 0, 2, 3, 3])
    return 4, 5, users, items  # item 4 has no edge


def test_normalized_adjacency_matches_dense():
    n_users, n_items, users, items = tiny_graph()
    adjacency = normalized_bipartite_adjacency(n_users, n_items, users, items).to_dense()
    dense = torch.zeros(n_users + n_items, n_users + n_items)
    dense[users, items + n_users] = 1
    dense[items + n_users, users] = 1
    degree = dense.sum(1)
    inverse = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    expected = inverse[:, None] * dense * inverse[None, :]
    torch.testing.assert_close(adjacency, expected)
    assert adjacency.diagonal().abs().sum() == 0  # no self loops
    embeddings = torch.randn(n_users + n_items, 3)
    propagated = lightgcn_propagate(normalized_bipartite_adjacency(n_users, n_items, users, items), embeddings, 2)
    torch.testing.assert_close(propagated, (embeddings + expected @ embeddings + expected @ expected @ embeddings) / 3)


def test_user_mean_matrix_gives_mean_of_train_items():
    n_users, n_items, users, items = tiny_graph()
    table = torch.randn(n_items, 4)
    means = torch.sparse.mm(user_mean_matrix(n_users, n_items, users, items), table)
    for user in range(n_users):
        torch.testing.assert_close(means[user], table[items[users == user]].mean(0))


def test_hidden_width_rule():
    assert hidden_width(384, "auto") == 3072
    assert hidden_width(4096, "auto") == 1152
    assert hidden_width(3584, "auto") == 1008
    assert hidden_width(384, 0.5) == 192


# ------------------------------------------------------------------ model on ml100k


@pytest.mark.parametrize("fixture", ["linear", "alpharec"])
def test_shapes_and_item_table_alignment(fixture, request):
    config, model, train_data, _valid = request.getfixturevalue(fixture)
    assert model.item_table.shape == (model.n_items, 384)
    assert model.item_table[0].abs().sum() == 0  # padding row
    assert torch.allclose(model.item_table[1:].norm(dim=1), torch.ones(model.n_items - 1), atol=1e-4)
    user_emb, item_emb = model.forward_embeddings()
    assert user_emb.shape == (model.n_users, 64) and item_emb.shape == (model.n_items, 64)
    batch = first_batch(train_data)
    loss, pos_items = model.per_sample_loss(batch)
    assert loss.shape == pos_items.shape == (len(batch),)
    users, pos, neg = model.sample_batch(batch)
    assert neg.shape == (len(batch), 256)
    scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch) * model.n_items,)
    assert "item_table" not in dict(model.named_parameters())
    assert set(model.named_projector_parameters()) == {name for name, _ in model.named_parameters()}


def test_per_sample_loss_matches_direct_formula(alpharec):
    _config, model, train_data, _valid = alpharec
    users, pos, neg = model.sample_batch(first_batch(train_data))
    losses = model(users, pos, neg)
    user_emb, item_emb = model.forward_embeddings()
    for row in [0, 5, 17, 100]:
        user = user_emb[users[row]]
        candidates = torch.cat([pos[row : row + 1], neg[row]])
        cosines = torch.stack([F.cosine_similarity(user, item_emb[item], dim=0) for item in candidates])
        logits = cosines / model.tau
        expected = -torch.log(torch.exp(logits[0]) / torch.exp(logits).sum())
        torch.testing.assert_close(losses[row], expected, rtol=1e-4, atol=1e-5)


def embeddings_in_float64(model, train_data):
    users, pos, neg = model.sample_batch(first_batch(train_data))
    user_emb, item_emb = (tensor.detach().double().requires_grad_(True) for tensor in model.forward_embeddings())
    return user_emb, item_emb, users, pos, neg


@pytest.mark.parametrize("method", ["dense", "sampled"])
def test_loss_from_embeddings_equals_the_gather_path(alpharec, method):
    """Issue 12: the gather-free negative scores give today's loss and gradients (float64, 1e-6)."""
    _config, model, train_data, _valid = alpharec
    user_emb, item_emb, users, pos, neg = embeddings_in_float64(model, train_data)
    weights = torch.rand(len(users), dtype=torch.float64)
    results = {}
    for name in ("gather", method):
        model.negative_method = name
        loss = model.loss_from_embeddings(user_emb, item_emb, users, pos, neg)
        results[name] = (loss, *torch.autograd.grad((weights * loss).sum(), [user_emb, item_emb]))
    model.negative_method = "auto"
    for got, want in zip(results[method], results["gather"], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["dense", "sampled"])
def test_group_embedding_gradients_equal_one_backward_per_group(alpharec, method):
    _config, model, train_data, _valid = alpharec
    user_emb, item_emb, users, pos, neg = embeddings_in_float64(model, train_data)
    sample_group = torch.randint(-1, 3, (len(users),), generator=torch.Generator().manual_seed(0))
    model.negative_method = method
    fast = model.group_embedding_gradients(user_emb, item_emb, users, pos, neg, sample_group, 3)
    model.negative_method = "gather"
    per_sample = model.loss_from_embeddings(user_emb, item_emb, users, pos, neg)
    model.negative_method = "auto"
    for group in range(3):
        grads = torch.autograd.grad(per_sample[sample_group == group].mean(), [user_emb, item_emb], retain_graph=True)
        torch.testing.assert_close(fast[group], torch.cat([grad.reshape(-1) for grad in grads]), rtol=0, atol=1e-6)


def test_auto_scores_pick_dense_on_ml100k(alpharec):
    _config, model, train_data, _valid = alpharec
    users, _pos, neg = model.sample_batch(first_batch(train_data))
    assert model.score_method(users, neg) == "dense"  # 1.7k items, users repeated: the GEMM is cheaper


def test_negatives_never_in_train_set(linear):
    _config, model, _train, _valid = linear
    users = model.users_with_items.repeat(8)
    negatives = model.sample_negatives(users)
    assert negatives.min() >= 1 and negatives.max() < model.n_items
    dense = torch.zeros(model.n_users, model.n_items, dtype=torch.bool)
    dense[model.train_keys // model.n_items, model.train_keys % model.n_items] = True
    assert not dense[users.unsqueeze(1).expand_as(negatives), negatives].any()
    # uniform over the allowed items: a heavy user's negatives cover many items
    assert len(torch.unique(negatives)) > 0.9 * model.n_items


def test_bytemap_bitmap_and_binary_search_membership_agree(linear):
    _config, model, _train, _valid = linear
    users = torch.randint(0, model.n_users, (5000,))
    items = torch.randint(0, model.n_items, (5000,))
    bytemap = model.is_train_pair(users, items)
    assert model.train_bytemap is not None and bytemap.any()
    saved = model.train_bytemap, model.train_bitmap
    try:
        model.train_bytemap, model.train_bitmap = None, packed_bitmap(model.train_keys, model.n_users * model.n_items)
        assert torch.equal(model.is_train_pair(users, items), bytemap)
        model.train_bitmap = None
        assert torch.equal(model.is_train_pair(users, items), bytemap)
    finally:
        model.train_bytemap, model.train_bitmap = saved


def test_user_uniform_positives_come_from_the_users_train_set(linear):
    _config, model, _train, _valid = linear
    users, positives = model.sample_user_positives(20000)
    assert model.is_train_pair(users, positives).all()
    assert model.user_train_count[users].min() > 0
    assert len(torch.unique(users)) > 0.9 * len(model.users_with_items)  # users drawn uniformly


def test_interaction_sampling_uses_the_batch(ml100k_root):
    _config, model, train_data, _valid = build("LLMLinear", ml100k_root, train_sampling="interaction")
    batch = first_batch(train_data)
    users, pos, _neg = model.sample_batch(batch)
    assert torch.equal(users, batch[model.USER_ID]) and torch.equal(pos, batch[model.ITEM_ID])


def train_steps(model, train_data, steps=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = first_batch(train_data)
    for _ in range(steps):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()


def test_frozen_item_table_gets_no_gradient_and_stays(ml100k_root):
    _config, model, train_data, _valid = build("AlphaRec", ml100k_root)
    before = model.item_table.clone()
    train_steps(model, train_data)
    assert torch.equal(model.item_table, before)
    assert not model.item_table.requires_grad


def test_learnable_item_table_receives_gradient(ml100k_root):
    _config, model, train_data, _valid = build("AlphaRec", ml100k_root)
    model.set_item_table_learnable(True)
    assert isinstance(model.item_table, torch.nn.Parameter)
    assert "item_table" in model.state_dict()
    users, pos, neg = model.sample_batch(first_batch(train_data))
    model(users, pos, neg).mean().backward()
    assert model.item_table.grad is not None and model.item_table.grad.abs().sum() > 0
    before = model.item_table.detach().clone()
    train_steps(model, train_data)
    assert not torch.equal(model.item_table.detach(), before)
    model.set_item_table_learnable(False)
    assert "item_table" not in dict(model.named_parameters()) and "item_table" in model.state_dict()


def test_functional_call_with_virtual_theta(linear):
    _config, model, train_data, _valid = linear
    users, pos, neg = model.sample_batch(first_batch(train_data))
    theta = model.named_projector_parameters()
    loss = model(users, pos, neg).mean()
    grads = torch.autograd.grad(loss, list(theta.values()))
    step = 1e-2 / torch.sqrt(sum((grad**2).sum() for grad in grads))  # a short step along -grad
    virtual = {name: value - step * grad for (name, value), grad in zip(theta.items(), grads, strict=True)}
    moved = torch.func.functional_call(model, virtual, (users, pos, neg)).mean()
    same = torch.func.functional_call(model, dict(theta), (users, pos, neg)).mean()
    torch.testing.assert_close(same, loss)
    assert moved < loss  # a descent step on the same batch lowers the loss


# ------------------------------------------------------------------ training end to end


def untrained_valid_recall(model_name, data_root) -> float:
    config, model, train_data, valid_data = build(model_name, data_root, seed=2020)
    trainer = build_trainer(config, model)
    trainer.eval_collector.data_collect(train_data)
    return float(trainer.evaluate(valid_data, load_best_model=False)["recall@20"])


@pytest.mark.parametrize("model_name", ["LLMLinear", "AlphaRec"])
def test_trains_on_ml100k_and_reloads(model_name, ml100k_root, tmp_path):
    results = train_and_read(
        [f"--model={model_name}", "--dataset=ml100k", f"--data_path={ml100k_root}", "--epochs=2",
         "--eval_step=2", "--seed=2020"],
        tmp_path,
    )  # fmt: skip
    assert results["valid"]["recall@20"] > untrained_valid_recall(model_name, ml100k_root) + 0.005
    reloaded = evaluate_saved(results["model_file"], "test")
    for key, value in results["test"].items():
        assert reloaded[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("method", ["dense", "sampled"])
def test_batched_group_gradients_through_the_model_equal_the_loop(alpharec, method):
    """``group_grad_method: batched``: one vmapped backward through the sparse products and the
    negative scores (their vmap rules) gives each group's gradient w.r.t. theta."""
    _config, model, train_data, _valid = alpharec
    model.negative_method = method
    users, pos, neg = model.sample_batch(first_batch(train_data))
    per_sample = model(users[:512], pos[:512], neg[:512])
    model.negative_method = "auto"
    losses = torch.stack([per_sample[0::2].mean(), per_sample[1::2].mean()])
    params = model.projector_parameters()
    batched = torch.autograd.grad(losses, params, torch.eye(2), retain_graph=True, is_grads_batched=True)
    for group in range(2):
        looped = torch.autograd.grad(losses[group], params, retain_graph=True)
        for got, want in zip(batched, looped, strict=True):
            torch.testing.assert_close(got[group], want, rtol=1e-4, atol=1e-6)
