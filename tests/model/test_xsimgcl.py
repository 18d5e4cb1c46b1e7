"""XSimGCL (Yu et al., TKDE 2023): noise, views, loss terms, and training through run_recbole.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import train_and_read
from recbole.utils import init_seed

from recbole_bifair.model.xsimgcl import info_nce
from recbole_bifair.quick_start import build_config, build_data, build_trainer, evaluate_saved
from recbole_bifair.registry import get_model

torch.set_num_threads(1)


def build(data_root, **settings):
    config = build_config("XSimGCL", "ml100k", config_dict={"data_path": str(data_root), "seed": 2020, **settings})
    init_seed(config["seed"], True)
    _dataset, train_data, valid_data, _test = build_data(config)
    return config, get_model("XSimGCL")(config, train_data._dataset), train_data, valid_data


@pytest.fixture(scope="module")
def xsimgcl(ml100k_root):
    return build(ml100k_root)


def test_paper_defaults(xsimgcl):
    config, model, _train, _valid = xsimgcl
    assert (model.n_layers, model.eps, model.cl_weight, model.cl_tau, model.layer_cl) == (2, 0.2, 0.2, 0.2, 1)
    assert model.reg_weight == pytest.approx(1e-4)
    assert config["train_neg_sample_args"]["sample_num"] == 1


def test_clean_forward_is_lightgcn_without_ego_layer(xsimgcl):
    _config, model, _train, _valid = xsimgcl
    adjacency = model.norm_adj_matrix.to_dense()
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    expected = (adjacency @ ego + adjacency @ adjacency @ ego) / 2
    user_final, item_final, user_cl, item_cl = model.forward()
    torch.testing.assert_close(torch.cat([user_final, item_final]).detach(), expected, rtol=1e-4, atol=1e-6)
    assert user_cl is None and item_cl is None


def test_perturbed_views_have_noise_of_size_eps(xsimgcl):
    _config, model, _train, _valid = xsimgcl
    adjacency = model.norm_adj_matrix
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    _uf, _if, user_cl, item_cl = model.forward(perturbed=True)
    noise = torch.cat([user_cl, item_cl]).detach() - torch.sparse.mm(adjacency, ego)  # layer 1 = layer_cl
    has_edges = torch.sparse.mm(adjacency, torch.ones(len(ego), 1)).squeeze(1) > 0
    norms = noise[has_edges].norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, model.eps), rtol=1e-4, atol=1e-5)
    clean = torch.sparse.mm(adjacency, ego)[has_edges]
    signs_agree = (torch.sign(noise[has_edges]) == torch.sign(clean)) | (clean == 0)
    assert signs_agree.all()  # noise lies in the embedding's own orthant


def test_info_nce_against_loop():
    one, two = torch.randn(5, 4), torch.randn(5, 4)
    expected = torch.stack([
        -torch.log(torch.exp(F.cosine_similarity(one[i], two[i], dim=0) / 0.2)
                   / sum(torch.exp(F.cosine_similarity(one[i], two[j], dim=0) / 0.2) for j in range(5)))
        for i in range(5)
    ]).mean()  # fmt: skip
    torch.testing.assert_close(info_nce(one, two, 0.2), expected)


def test_loss_is_finite_and_cl_term_counts(xsimgcl):
    _config, model, train_data, _valid = xsimgcl
    batch = next(iter(train_data))
    torch.manual_seed(0)
    with_cl = model.calculate_loss(batch)
    model.cl_weight, saved = 0.0, model.cl_weight
    torch.manual_seed(0)
    without_cl = model.calculate_loss(batch)
    model.cl_weight = saved
    assert torch.isfinite(with_cl) and with_cl > without_cl
    with_cl.backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0


def test_trains_on_ml100k_and_reloads(ml100k_root, tmp_path):
    config, model, train_data, valid_data = build(ml100k_root)
    trainer = build_trainer(config, model)
    trainer.eval_collector.data_collect(train_data)
    untrained = float(trainer.evaluate(valid_data, load_best_model=False)["recall@20"])
    results = train_and_read(
        ["--model=XSimGCL", "--dataset=ml100k", f"--data_path={ml100k_root}", "--epochs=2", "--eval_step=2",
         "--seed=2020", "--learning_rate=0.002"],
        tmp_path,
    )  # fmt: skip
    assert results["valid"]["recall@20"] > untrained + 0.01
    reloaded = evaluate_saved(results["model_file"], "test")
    for key, value in results["test"].items():
        assert reloaded[key] == pytest.approx(value, abs=1e-6), key
