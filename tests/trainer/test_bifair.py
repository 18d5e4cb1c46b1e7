"""BiFair with one balance per iteration: what tells it from plain training, its hypergradient,
first-order reduction, row-sparse Z updates, and the controls that learn Z."""

import math

import pytest
import torch
from helpers import train_and_read

from recbole_bifair.trainer import bifair as bifair_module
from recbole_bifair.trainer.bifair import unflatten
from recbole_bifair.trainer.fair_base import group_losses
from recbole_bifair.trainer.row_sparse_adamw import RowSparseAdamW


def build_trainer(ml100k_root, model_name="LLMLinear", trainer="BiFair", **overrides):
    from recbole_bifair.quick_start import build_config, build_data
    from recbole_bifair.quick_start import build_trainer as make_trainer
    from recbole_bifair.registry import get_model

    config = build_config(model_name, "ml100k", config_dict={
        "data_path": str(ml100k_root), "trainer": trainer, "train_batch_size": 256,
        "num_negatives": 16, "epochs": 1, "show_progress": False, **overrides,
    })
    torch.manual_seed(0)
    _dataset, train_data, _valid, _test = build_data(config)
    model = get_model(model_name)(config, train_data._dataset)
    trainer = make_trainer(config, model)
    trainer.setup_training(train_data)
    batch = model.sample_batch(next(iter(train_data)))
    return trainer, model, batch, train_data


def exact_second_order(trainer, model, batch, step, xi):
    """(dZ, xi * d/dZ <grad_theta F(theta, Z), v>) by double backward, with F = sum alpha L at
    the same alpha as the trainer's step (no differences)."""
    from torch.func import functional_call

    named = model.named_projector_parameters()
    params = list(named.values())
    alpha = step.full_alpha(trainer.n_groups)

    def fair_loss(theta=None):
        per_sample = model(*batch) if theta is None else functional_call(model, dict(zip(named, theta, strict=True)), batch)
        losses, present, _ = group_losses(per_sample, trainer.item_group[batch[1]], trainer.n_groups)
        return (alpha[present] * losses).sum()

    grads = torch.autograd.grad(fair_loss(), params, create_graph=True)
    virtual = [(p - xi * g).detach().requires_grad_(True) for p, g in zip(params, grads, strict=True)]
    dz, *v = torch.autograd.grad(fair_loss(virtual), [model.item_table, *virtual])
    mixed = sum((g * vi).sum() for g, vi in zip(grads, v, strict=True))
    (hessian_vector,) = torch.autograd.grad(mixed, [model.item_table])
    return dz, xi * hessian_vector


def hypergradient(trainer, batch, xi):
    step = trainer.balanced_step(batch, want_entry=False)
    base = [p.detach().clone() for p in trainer.theta()]
    return step, trainer.z_hypergradient(step, base, batch, batch, xi)


@pytest.mark.parametrize("model_name, space", [("LLMLinear", "params"), ("AlphaRec", "params"),
                                               ("AlphaRec", "embeddings")])
def test_finite_difference_hypergradient_matches_double_backward(ml100k_root, model_name, space):
    trainer, model, batch, _ = build_trainer(ml100k_root, model_name, fd_epsilon=1e-3, balance_space=space)
    if model_name == "AlphaRec":
        # LeakyReLU's derivative jumps at 0: central differences then also count the units
        # whose pre-activation changes sign between theta -/+ eps v, a term the (almost
        # everywhere) exact Hessian lacks (see the next test). Slope 1 makes the activation
        # smooth (the identity), which isolates the maths under test (two layers, propagation,
        # normalisation, InfoNCE).
        model.projector[1].negative_slope = 1.0
    step, (dz, second_order) = hypergradient(trainer, batch, xi=0.05)
    dz_exact, second_exact = exact_second_order(trainer, model, batch, step, xi=0.05)
    # Row 0 is the all-zero padding item: the double backward of its normalisation is 0/0.
    dz, second_order, dz_exact, second_exact = dz[1:], second_order[1:], dz_exact[1:], second_exact[1:]
    torch.testing.assert_close(dz, dz_exact, rtol=1e-4, atol=1e-7)
    # Central differences, step eps * v with eps = fd_epsilon/||v||: truncation O(fd_epsilon^2),
    # plus float32 round-off of about 1e-7/fd_epsilon = 1e-4 at 1e-3. 3e-3 leaves margin yet
    # fails for a wrong sign, a missing alpha, a one-sided difference or a wrong eps.
    relative = float((second_order - second_exact).norm() / second_exact.norm())
    assert second_exact.norm() > 0
    assert relative < 3e-3, relative


def test_finite_difference_term_in_the_shipped_configuration(ml100k_root):
    """AlphaRec with its LeakyReLU(0.01) and the yaml's fd_epsilon = 0.01, against double backward.

    Measured on this batch (h = 108): relative error 1.33, cosine 0.63 between the two second-order
    terms (at fd_epsilon 1e-3: 3.5 and 0.29). The same code matches to < 3e-3 when the activation
    is smooth (previous test), so the gap is the kink's: central differences count the units
    whose pre-activation changes sign between theta -/+ eps v, which the almost-everywhere
    Hessian lacks. The second-order term itself is 0.35% of dZ here (ALGORITHMS.md 9.2), so
    the difference moves Z's gradient by about 0.5%: the term is noise-sized on this data.
    """
    trainer, model, batch, _ = build_trainer(ml100k_root, "AlphaRec", hidden_multiplier=0.28125)
    assert trainer.fd_epsilon == 0.01 and isinstance(model.projector[1], torch.nn.LeakyReLU)
    step, (dz, second_order) = hypergradient(trainer, batch, xi=0.05)
    _dz_exact, second_exact = exact_second_order(trainer, model, batch, step, xi=0.05)
    got, want, dz = second_order[1:], second_exact[1:], dz[1:]
    relative = float((got - want).norm() / want.norm())
    cosine = float((got * want).sum() / (got.norm() * want.norm()))
    print(f"shipped configuration: relative error {relative:.3e}, cosine {cosine:.3f}, "
          f"|xi hZ|/|dZ| {float(want.norm() / dz.norm()):.3e}")
    assert cosine > 0.3, cosine  # same direction, roughly (a wrong sign gives a negative cosine)
    assert relative < 2.5, relative
    assert float((got - want).norm() / dz.norm()) < 1e-2


def test_first_order_z_gradient_comes_from_the_balance_passes(ml100k_root):
    trainer, model, batch, _ = build_trainer(ml100k_root, xi=0)
    step = trainer.balanced_step(batch, want_entry=True)
    layer = model.z_entry_layer()
    from_passes = step.entry_grad @ layer.weight.detach()
    alpha = step.full_alpha(trainer.n_groups)
    per_sample = model(*batch)
    losses, present, _ = group_losses(per_sample, trainer.item_group[batch[1]], trainer.n_groups)
    (expected,) = torch.autograd.grad((alpha[present] * losses).sum(), [model.item_table])
    torch.testing.assert_close(from_passes, expected, rtol=1e-4, atol=1e-8)
    # And the hypergradient with xi = 0 has no second-order term.
    _step, (dz, second_order) = hypergradient(trainer, batch, xi=0.0)
    assert float(second_order.abs().max()) == 0.0
    torch.testing.assert_close(dz, expected, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("space", ["params", "embeddings"])
def test_theta_step_is_the_gradient_of_the_balanced_loss(ml100k_root, space):
    trainer, model, batch, _ = build_trainer(ml100k_root, "AlphaRec", fair_group="genre", balance_space=space,
                                             hidden_multiplier=0.28125)
    step = trainer.balanced_step(batch, want_entry=True)
    assert len(step.losses) > 2
    alpha = step.full_alpha(trainer.n_groups)
    per_sample = model(*batch)
    losses, present, _ = group_losses(per_sample, trainer.item_group[batch[1]], trainer.n_groups)
    direct = torch.autograd.grad((alpha[present] * losses).sum(), [*trainer.theta(), model.item_table])
    for got, want in zip([*step.theta_grad, step.entry_grad @ model.z_entry_layer().weight.detach()],
                         direct, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert step.result.alpha.sum() >= trainer.min_group_share - 1e-6  # the safeguard


def test_one_balance_per_iteration(ml100k_root, monkeypatch):
    """Section 3.3: w is solved once per iteration, for both levels (not at theta, theta' and
    again at theta with the new Z)."""
    trainer, model, _batch, train_data = build_trainer(ml100k_root, "AlphaRec", hidden_multiplier=0.28125)
    calls = []
    real_balance = bifair_module.balance
    monkeypatch.setattr(bifair_module, "balance", lambda *a, **k: calls.append(1) or real_balance(*a, **k))
    table = model.item_table.detach().clone()
    for index, interaction in enumerate(train_data):
        trainer.train_step(interaction)
        trainer.after_step()
        if index == 2:
            break
    assert len(calls) == 3
    assert not torch.equal(model.item_table.detach(), table)  # the outer step ran with that alpha


def test_balance_favours_a_disadvantaged_group_and_closes_the_gap(ml100k_root):
    """A planted disadvantaged group: the unpopular items' stage-I vectors get noise, so their
    group loss is higher. The balance weights that group more, and after 40 steps from the same
    seed the group-loss gap is smaller under BiFair than under the plain loss."""

    def train(trainer_name):
        trainer, model, _batch, train_data = build_trainer(
            ml100k_root, "LLMLinear", trainer=trainer_name, train_batch_size=512, num_negatives=32,
            min_group_share=0.0)
        unpopular = trainer.item_group == 1
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            noise = torch.randn(model.item_table.shape, generator=generator)
            model.item_table[unpopular] += 0.05 * noise[unpopular]
        torch.manual_seed(1)
        probe = [model.sample_batch(next(iter(train_data))) for _ in range(4)]
        torch.manual_seed(2)
        batches = iter(train_data)
        alphas = []
        for _ in range(40):
            try:
                interaction = next(batches)
            except StopIteration:
                batches = iter(train_data)
                interaction = next(batches)
            trainer.train_step(interaction)
            trainer.after_step()
            if trainer_name == "BiFair":
                alphas.append(trainer.epoch_log["balance_alpha"][-1])
        with torch.no_grad():
            losses = torch.stack([
                group_losses(model(*b), trainer.item_group[b[1]], trainer.n_groups)[0] for b in probe
            ]).mean(0)
        return losses, alphas

    plain_losses, _ = train("Plain")
    fair_losses, alphas = train("BiFair")
    assert plain_losses[1] > plain_losses[0]  # the planted group is the disadvantaged one
    mean_alpha = torch.stack(alphas).mean(0)
    assert mean_alpha[1] > mean_alpha[0], mean_alpha
    plain_gap = float(plain_losses[1] - plain_losses[0])
    fair_gap = float(fair_losses[1] - fair_losses[0])
    assert abs(fair_gap) < 0.5 * plain_gap, (fair_gap, plain_gap)


@pytest.mark.parametrize("trainer_name, z_lr, changes", [
    ("BiFair", 1e-3, True), ("PlainLearnZ", 1e-3, True), ("Plain", 1e-3, False),
    ("BiFair", 0, False), ("PlainLearnZ", 0, False), ("Separate", 0, False),
])
def test_z_changes_only_where_it_is_learned(ml100k_root, trainer_name, z_lr, changes):
    trainer, model, _batch, train_data = build_trainer(
        ml100k_root, "LLMLinear", trainer=trainer_name, z_learning_rate=z_lr)
    table = model.item_table.detach().clone()
    weight = model.projector.weight.detach().clone()
    for index, interaction in enumerate(train_data):
        trainer.train_step(interaction)
        trainer.after_step()
        if index == 1:
            break
    assert not torch.equal(model.projector.weight.detach(), weight)
    assert torch.equal(model.item_table.detach(), table) is not changes
    if not changes:
        assert not model.item_table.requires_grad  # frozen Z stays a buffer


def test_min_norm_direction_descends_on_every_group(ml100k_root):
    """Eq. 10 with min_group_share 0: d = sum alpha_n g_n is the min-norm point of the hull of
    {g_n, -grad H}, so d . g_n >= |d|^2 >= 0 for every group whenever d != 0."""
    trainer, model, batch, _ = build_trainer(ml100k_root, "AlphaRec", fair_group="genre", min_group_share=0.0,
                                             hidden_multiplier=0.28125, fw_max_iter=100000, fw_tol=1e-12)
    per_sample, entry, user_emb, item_emb = trainer.forward_from_entry(batch)
    losses, present, _ = group_losses(per_sample, trainer.item_group[batch[1]], trainer.n_groups)
    grads = trainer.group_gradients(losses, trainer.theta()).double()
    step = trainer.balanced_step(batch, want_entry=False)
    direction = torch.cat([g.reshape(-1) for g in step.theta_grad]).double()
    assert direction.norm() > 0
    assert len(losses) > 2
    products = grads @ direction
    assert float(products.min()) >= -1e-8 * float(grads.norm(dim=1).max() * direction.norm()), products


def test_z_changes_only_in_rows_the_batch_touches(ml100k_root):
    trainer, model, batch, _ = build_trainer(ml100k_root, "LLMLinear", xi=0)
    users, pos_items, neg_items = batch
    before = model.item_table.detach().clone()
    step = trainer.balanced_step(batch, want_entry=True)
    trainer.z_step(step.entry_grad @ model.z_entry_layer().weight.detach())
    changed = torch.nonzero((model.item_table.detach() != before).any(dim=1)).squeeze(1)
    user_items = model.user_mean.to_dense()[users].nonzero()[:, 1]
    touched = torch.unique(torch.cat([pos_items, neg_items.flatten(), user_items]))
    assert changed.numel() > 0
    assert set(changed.tolist()) <= set(touched.tolist())
    assert changed.numel() < model.item_table.shape[0] - 1  # the batch does not touch every item


@pytest.mark.parametrize("num_negatives", [256, 16])  # dense-score path and gather path
def test_group_embedding_gradients_equal_one_backward_per_group(ml100k_root, num_negatives):
    from recbole_bifair.trainer.balancing import group_gradients

    trainer, model, batch, _ = build_trainer(ml100k_root, "AlphaRec", fair_group="genre",
                                             num_negatives=num_negatives, hidden_multiplier=0.28125)
    per_sample, user_emb, item_emb = model(*batch, return_embeddings=True)
    groups = trainer.item_group[batch[1]]
    losses, present, _ = group_losses(per_sample, groups, trainer.n_groups)
    expected = group_gradients(losses, [user_emb, item_emb], method="loop")
    index = torch.full((trainer.n_groups + 1,), -1, dtype=torch.long)
    index[present] = torch.arange(len(present))
    fast = model.group_embedding_gradients(user_emb, item_emb, *batch, index[groups], len(present))
    assert len(present) > 5
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-6)


def test_plain_learn_z_uses_the_row_sparse_optimiser_with_its_schedule(ml100k_root):
    trainer, model, _batch, train_data = build_trainer(ml100k_root, "LLMLinear", trainer="PlainLearnZ",
                                                       z_learning_rate=1e-3)
    assert isinstance(trainer.z_optimizer, RowSparseAdamW)
    assert trainer.z_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert len(trainer.schedulers) == 2  # theta's and Z's polynomial decay
    trainer.train_step(next(iter(train_data)))
    trainer.after_step()
    assert trainer.z_optimizer.param_groups[0]["lr"] < 1e-3


@pytest.mark.parametrize("key, value, message", [
    ("fd_epsilon", 0, "fd_epsilon"),
    ("fw_max_iter", 0, "fw_max_iter"),
    ("z_learning_rate", -1e-4, "z_learning_rate"),
    ("xi", "often", "xi must be"),
    ("virtual_base", "later", "virtual_base"),
])
def test_meaningless_values_are_refused(ml100k_root, key, value, message):
    from recbole_bifair.errors import PluginError

    with pytest.raises(PluginError, match=message):
        build_trainer(ml100k_root, "LLMLinear", **{key: value})


def test_explicit_values_are_kept(ml100k_root):
    trainer, _model, _batch, _ = build_trainer(ml100k_root, "LLMLinear", min_group_share=0, xi=0,
                                               balance_entropy=False, z_weight_decay=0.0)
    assert (trainer.min_group_share, trainer.xi_mode, trainer.balance_entropy) == (0, 0, False)
    assert trainer.z_weight_decay == 0.0


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


def test_z_learning_rate_zero_leaves_the_stage_one_table(ml100k_root, tmp_path):
    """The issue's check: one BiFair epoch with z_learning_rate 0 leaves Z equal to stage I."""
    import numpy as np

    from recbole_bifair.quick_start import load_data_and_model

    results = train_and_read(["--model=AlphaRec", "--trainer=BiFair", "--dataset=ml100k",
                              f"--data_path={ml100k_root}", "--epochs=1", "--z_learning_rate=0",
                              "--hidden_multiplier=0.28125", "--num_negatives=16"], tmp_path)
    _config, model, *_ = load_data_and_model(results["model_file"])
    vectors = np.load(ml100k_root / "ml100k" / "ml100k.minilm.npy")
    assert model.item_table.shape[0] - 1 == vectors.shape[0]
    stage_one = torch.as_tensor(vectors)
    assert torch.equal(torch.sort(model.item_table[1:], dim=0).values, torch.sort(stage_one, dim=0).values)


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
