"""BiFair's hypergradient, first-order reduction, row-sparse Z updates and the Z optimiser."""

import math

import pytest
import torch
from helpers import train_and_read

from recbole_bifair.trainer.bifair import BiFairTrainer, unflatten
from recbole_bifair.trainer.row_sparse_adamw import RowSparseAdamW


def build_trainer(ml100k_root, model_name="LLMLinear", **overrides):
    from recbole_bifair.quick_start import build_config, build_data
    from recbole_bifair.registry import get_model

    config = build_config(model_name, "ml100k", config_dict={
        "data_path": str(ml100k_root), "trainer": "BiFair", "train_batch_size": 256,
        "num_negatives": 16, "epochs": 1, "show_progress": False, **overrides,
    })
    torch.manual_seed(0)
    _dataset, train_data, _valid, _test = build_data(config)
    model = get_model(model_name)(config, train_data._dataset)
    trainer = BiFairTrainer(config, model)
    trainer.setup_training(train_data)
    batch = model.sample_batch(next(iter(train_data)))
    return trainer, model, batch


def exact_second_order(trainer, model, batch):
    """xi * d/dZ <grad_theta sum alpha_in L(theta, Z), v> by double backward (no differences)."""
    names, params = trainer.theta()
    objective = trainer.balanced_objective(batch)
    grads = torch.autograd.grad(objective.loss(), params, create_graph=True)
    xi = trainer.current_xi()
    virtual = [(p - xi * g).detach().requires_grad_(True) for p, g in zip(params, grads, strict=True)]
    outer = trainer.balanced_objective(batch, dict(zip(names, virtual, strict=True)))
    dz, *v = torch.autograd.grad(outer.loss(), [model.item_table, *virtual])
    mixed = sum((g * vi).sum() for g, vi in zip(grads, v, strict=True))
    (hessian_vector,) = torch.autograd.grad(mixed, [model.item_table])
    return dz, xi * hessian_vector


@pytest.mark.parametrize("model_name, space", [("LLMLinear", "params"), ("AlphaRec", "params"),
                                               ("AlphaRec", "embeddings")])
def test_finite_difference_hypergradient_matches_double_backward(ml100k_root, model_name, space):
    trainer, model, batch = build_trainer(ml100k_root, model_name, xi=0.05, fd_epsilon=1e-3, balance_space=space)
    if model_name == "AlphaRec":
        # LeakyReLU's derivative jumps at 0: central differences then also count the units
        # whose pre-activation changes sign between theta -/+ eps v, a term the (almost
        # everywhere) exact Hessian lacks and which does not vanish as eps -> 0 (measured: 8%
        # at eps = 0.01, 38% at 1e-4). A smooth activation isolates the maths under test.
        model.projector[1] = torch.nn.Tanh()
    dz, second_order = trainer.z_hypergradient(batch, batch)
    dz_exact, second_exact = exact_second_order(trainer, model, batch)
    # Row 0 is the all-zero padding item: the double backward of its normalisation is 0/0.
    dz, second_order, dz_exact, second_exact = dz[1:], second_order[1:], dz_exact[1:], second_exact[1:]
    torch.testing.assert_close(dz, dz_exact, rtol=1e-4, atol=1e-7)
    # Central differences, step eps * v with eps = fd_epsilon/||v||: the truncation error is
    # O(fd_epsilon^2); measured in float64 on AlphaRec it is 2e-2, 2e-4, 2e-6 at fd_epsilon 1e-2,
    # 1e-3, 1e-4 (quadratic, so the maths is right), and float32 round-off adds about
    # 1e-7/fd_epsilon = 1e-4. At 1e-3 that gives about 3e-4; 3e-3 leaves margin yet fails for a
    # wrong sign, a missing alpha, a one-sided difference or a wrong eps.
    relative = float((second_order - second_exact).norm() / second_exact.norm())
    assert second_exact.norm() > 0
    assert relative < 3e-3, relative


def test_first_order_variant_has_no_second_order_term(ml100k_root):
    trainer, model, batch = build_trainer(ml100k_root, xi=0)
    dz, second_order = trainer.z_hypergradient(batch, batch)
    assert float(second_order.abs().max()) == 0.0
    # With xi = 0 the virtual step is theta itself: dZ is grad_Z of the balanced loss at theta.
    (expected,) = torch.autograd.grad(trainer.balanced_objective(batch).loss(), [model.item_table])
    torch.testing.assert_close(dz, expected, rtol=1e-5, atol=1e-8)


def test_z_changes_only_in_rows_the_batch_touches(ml100k_root):
    trainer, model, batch = build_trainer(ml100k_root, "LLMLinear")
    users, pos_items, neg_items = batch
    before = model.item_table.detach().clone()
    trainer.outer_step(batch, batch)
    changed = torch.nonzero((model.item_table.detach() != before).any(dim=1)).squeeze(1)
    user_items = model.user_mean.to_dense()[users].nonzero()[:, 1]
    touched = torch.unique(torch.cat([pos_items, neg_items.flatten(), user_items]))
    assert changed.numel() > 0
    assert set(changed.tolist()) <= set(touched.tolist())
    assert changed.numel() < model.item_table.shape[0] - 1  # the batch does not touch every item


def test_theta_gradient_is_the_gradient_of_the_balanced_loss_in_both_spaces(ml100k_root):
    for space in ("params", "embeddings"):
        trainer, model, batch = build_trainer(ml100k_root, "AlphaRec", fair_group="genre", balance_space=space)
        objective = trainer.balanced_objective(batch)
        assert len(objective.losses) > 2
        fast = objective.theta_gradient()
        direct = torch.autograd.grad(objective.loss(), objective.params)
        for got, want in zip(fast, direct, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
        assert objective.result.alpha.sum() >= trainer.min_group_share - 1e-6  # the safeguard


@pytest.mark.parametrize("num_negatives", [256, 16])  # dense-score path and gather path
def test_group_embedding_gradients_equal_one_backward_per_group(ml100k_root, num_negatives):
    from recbole_bifair.trainer.balancing import group_gradients
    from recbole_bifair.trainer.fair_base import group_losses

    trainer, model, batch = build_trainer(ml100k_root, "AlphaRec", fair_group="genre", num_negatives=num_negatives)
    per_sample, user_emb, item_emb = model(*batch, return_embeddings=True)
    groups = trainer.item_group[batch[1]]
    losses, present, _ = group_losses(per_sample, groups, trainer.n_groups)
    expected = group_gradients(losses, [user_emb, item_emb], method="loop")
    index = torch.full((trainer.n_groups + 1,), -1, dtype=torch.long)
    index[present] = torch.arange(len(present))
    fast = model.group_embedding_gradients(user_emb, item_emb, *batch, index[groups], len(present))
    assert len(present) > 5
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-6)


def test_plain_learn_z_updates_theta_and_z(ml100k_root):
    from recbole_bifair.quick_start import build_config, build_data
    from recbole_bifair.registry import get_model
    from recbole_bifair.trainer.fair_base import PlainLearnZTrainer

    config = build_config("LLMLinear", "ml100k", config_dict={
        "data_path": str(ml100k_root), "trainer": "PlainLearnZ", "num_negatives": 16, "epochs": 1})
    _dataset, train_data, _valid, _test = build_data(config)
    model = get_model("LLMLinear")(config, train_data._dataset)
    trainer = PlainLearnZTrainer(config, model)
    trainer.setup_training(train_data)
    table, weight = model.item_table.detach().clone(), model.projector.weight.detach().clone()
    trainer.train_step(next(iter(train_data)))
    assert not torch.equal(model.item_table.detach(), table)
    assert not torch.equal(model.projector.weight.detach(), weight)
    assert trainer.optimizer.param_groups[1]["lr"] == pytest.approx(1e-4)


def test_unflatten_round_trip():
    tensors = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2)]
    flat = torch.cat([t.flatten() for t in tensors])
    for got, want in zip(unflatten(flat, tensors), tensors, strict=True):
        assert torch.equal(got, want)


def test_row_sparse_adamw_matches_adamw_on_touched_rows_and_keeps_the_rest():
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    dense = torch.nn.Parameter(start.clone())
    sparse = torch.nn.Parameter(start.clone())
    reference = torch.optim.AdamW([dense], lr=0.01, weight_decay=0.1)
    lazy = RowSparseAdamW([sparse], lr=0.01, weight_decay=0.1)
    rows = torch.tensor([0, 2, 3])
    for _ in range(5):
        grad = torch.zeros(6, 3)
        grad[rows] = torch.randn(3, 3)
        dense.grad, sparse.grad = grad.clone(), grad.clone()
        reference.step()
        lazy.step()
    torch.testing.assert_close(sparse.detach()[rows], dense.detach()[rows])
    untouched = torch.tensor([1, 4, 5])
    assert torch.equal(sparse.detach()[untouched], start[untouched])
    # torch's AdamW decays untouched rows too; the lazy one leaves them alone by design.
    assert not torch.equal(dense.detach()[untouched], start[untouched])


@pytest.mark.parametrize("trainer_name, extra", [
    ("BiFair", []),
    ("BiFair", ["--model=AlphaRec", "--train_batch_size=8192"]),
    ("BiFair", ["--fair_group=genre", "--balance_space=embeddings"]),
    ("Separate", []),
    ("Plain", ["--model=AlphaRec"]),
    ("PlainLearnZ", []),
])
def test_trainer_runs_two_epochs_and_reports_fairness(ml100k_root, tmp_path, trainer_name, extra):
    model = [a for a in extra if a.startswith("--model=")] or ["--model=LLMLinear"]
    args = [*model, f"--trainer={trainer_name}", "--dataset=ml100k", f"--data_path={ml100k_root}",
            "--epochs=2", "--num_negatives=64",
            *[a for a in extra if not a.startswith("--model=")]]
    if not any(a.startswith("--train_batch_size=") for a in args):
        args.append("--train_batch_size=4096")
    results = train_and_read(args, tmp_path)
    for key in ("recall@20", "pop_cv@20", "pop_min@20", "genre_cv@20", "genre_min@20"):
        assert math.isfinite(results["test"][key]), key
    assert results["test"]["recall@20"] > 0.02  # trained, not random (random is about 0.01)
