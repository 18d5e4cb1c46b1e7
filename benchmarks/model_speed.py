"""Cost of the LLM-enhanced backbone (ALGORITHMS.md section 3; Sheng et al. 2024, AlphaRec).

Measured side by side in one process, medians of ``--repeats`` alternated epochs after a warm-up:

1. one AlphaRec training epoch per variant (each ``--hidden_multipliers`` width, the spec's
   m = 8 first, times each ``--negative_scores`` method and ``--precisions`` entry) against one
   epoch of RecBole's LightGCN, same embedding size (64), batch (4096) and number of training
   samples (the train interactions); AlphaRec uses K = 256 sampled negatives per sample,
   LightGCN 1 (BPR);
2. each AlphaRec epoch against a FLOP lower bound: the multiply-adds of one step as the model
   computes it (first layer over the I item rows only, since each row of M sums to 1; second
   layer over all U+I rows; their backward without the first layer's input gradient; the
   sparse user mean of the hidden rows; the propagation; the negative scores: B K products
   when sampled, a GEMM over the batch's distinct users x I when dense), divided by the
   measured fp32 GEMM rate of this machine;
3. the negative scores alone (forward + backward of one batch), dense vs sampled vs the
   [B, K, D] gather, beside the cost model's estimates (``negative_scores: auto`` picks the
   cheaper estimate);
4. full-sort evaluation with the fairness metrics (pop/genre CV and MIN) vs with only
   Recall/NDCG/Hit (``--eval_repeats 0`` skips it).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/model_speed.py [--dataset games]
    ... --hidden_multipliers 0.28125 --negative_scores auto gather     # before/after the kernels
    ... --hidden_multipliers 8 --precisions fp32 bf16                  # the bf16 speed-up
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from recbole.utils import init_seed

from recbole_bifair.model.negative_scores import negative_scores, score_cost
from recbole_bifair.quick_start import build_config, build_data, build_trainer
from recbole_bifair.registry import get_model

BATCH = 4096


def gemm_gflops(size: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def build(model: str, dataset: str, **settings):
    config_dict = {"embedding_size": 64, "train_batch_size": BATCH, "trainer": "Trainer", **settings}  # RecBole's loop
    config = build_config(model, dataset, config_dict=config_dict)
    init_seed(config["seed"], True)
    _dataset, train_data, valid_data, _test = build_data(config)
    net = get_model(model)(config, train_data._dataset)
    trainer = build_trainer(config, net)
    trainer.eval_collector.data_collect(train_data)
    return net, trainer, train_data, valid_data


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def expected_distinct(n_users: int, draws: int) -> float:
    """Expected number of distinct users among ``draws`` uniform draws from ``n_users``."""
    return n_users * (1 - (1 - 1 / n_users) ** draws)


def alpharec_step_flops(model, batch_size: int) -> float:
    """Dense FLOPs (2 x multiply-adds) of one AlphaRec training step, a lower bound."""
    rows, d, h, out = model.n_users + model.n_items, model.llm_dim, model.hidden_size, model.embedding_size
    nnz = model.norm_adj_matrix._nnz()
    mlp_forward = model.n_items * d * h + rows * h * out
    mlp_backward = model.n_items * d * h + rows * 2 * h * out  # weight grads, input grad of the second layer
    propagation = 2 * model.n_layers * nnz * out  # forward and backward
    user_mean = 2 * model.user_mean._nnz() * h  # M (Z W1) forward and backward
    method, distinct = batch_method(model, batch_size)
    if method == "dense":  # forward + 2 backward GEMMs over the distinct users
        scores = 3 * distinct * model.n_items * out
    else:
        scores = 3 * batch_size * model.num_negatives * out
    return 2.0 * (mlp_forward + mlp_backward + propagation + user_mean + scores)


def batch_method(model, batch_size: int) -> tuple[str, int]:
    """(negative-score method of a typical batch, its distinct users) under the model's setting."""
    distinct = round(expected_distinct(len(model.users_with_items), batch_size))
    users = torch.arange(distinct).repeat(math.ceil(batch_size / distinct))[:batch_size]
    negatives = torch.zeros(batch_size, model.num_negatives, dtype=torch.long)
    return model.score_method(users, negatives), distinct


def negative_score_seconds(model, repeats: int = 3) -> dict[str, float]:
    """Forward + backward seconds of the [B, K] negative scores of one sampled batch, per method."""
    users, _pos, negatives = model.sample_batch({model.USER_ID: torch.zeros(BATCH, dtype=torch.long)})
    user_emb = torch.randn(model.n_users, model.embedding_size, requires_grad=True)
    item_emb = torch.randn(model.n_items, model.embedding_size, requires_grad=True)

    def run(method):
        scores = negative_scores(
            method, user_emb, F.normalize(user_emb[users], dim=-1), F.normalize(item_emb, dim=-1), users, negatives
        )
        torch.autograd.grad(scores.sum(), [user_emb, item_emb])

    seconds = {method: [] for method in ("dense", "sampled", "gather")}
    for _ in range(repeats + 1):
        for method in seconds:
            seconds[method].append(timed(run, method))
    return {method: statistics.median(values[1:]) for method, values in seconds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--eval_repeats", type=int, default=9,
        help="alternated evaluations of each kind (short and noisy on a shared CPU: take many); 0 = skip",
    )  # fmt: skip
    parser.add_argument(
        "--hidden_multipliers", nargs="+", type=float, default=[8.0, 1.0, 0.28125],
        help="AlphaRec widths h = m d to time against LightGCN (the first is the spec's, m = 8 for "
        "BERT-size encoders, and is the one the evaluation timing uses)",
    )  # fmt: skip
    parser.add_argument("--negative_scores", nargs="+", default=["auto"], help="methods to time side by side")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], help="fp32 and/or bf16, side by side")
    parser.add_argument("--score_repeats", type=int, default=3, help="timings of the negative scores alone; 0 = skip")
    args = parser.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}")

    variants = {}  # (multiplier, method, precision) -> (model, trainer, train data)
    for multiplier, method, precision in itertools.product(args.hidden_multipliers, args.negative_scores, args.precisions):
        model, trainer, train, valid = build(
            "AlphaRec", args.dataset, hidden_multiplier=multiplier, negative_scores=method, precision=precision
        )
        variants[multiplier, method, precision] = (model, trainer, train)
    valid_data = valid
    alpharec, alpharec_trainer, alpharec_train = next(iter(variants.values()))
    _lightgcn, lightgcn_trainer, lightgcn_train, _ = build("LightGCN", args.dataset)
    epoch_times = {**{key: [] for key in variants}, "LightGCN": []}
    rates = []  # the GEMM rate, measured in every round too: the CPU's load moves
    for repeat in range(args.repeats + 1):  # the first round warms up
        rates.append(gemm_gflops())
        for key, (_model, trainer, train) in variants.items():
            seconds = timed(trainer._train_epoch, train, repeat)
            if repeat:
                epoch_times[key].append(seconds)
        seconds = timed(lightgcn_trainer._train_epoch, lightgcn_train, repeat)
        if repeat:
            epoch_times["LightGCN"].append(seconds)
    lightgcn_epoch = statistics.median(epoch_times["LightGCN"])
    peak = statistics.median(rates)
    print(f"fp32 GEMM 2048^3 (median of the rounds): {peak:.0f} GFLOP/s (min {min(rates):.0f}, max {max(rates):.0f})")
    samples = len(alpharec_train._dataset)
    steps = math.ceil(samples / BATCH)
    print(f"train samples per epoch {samples} ({steps} steps of <= {BATCH}); users {alpharec.n_users - 1}, "
          f"items {alpharec.n_items - 1}, d = {alpharec.llm_dim}, K = {alpharec.num_negatives}; "
          f"LightGCN epoch {lightgcn_epoch:.3f} s")  # fmt: skip
    fp32_epochs = {}
    for (multiplier, method, precision), (model, _trainer, _train) in variants.items():
        epoch = statistics.median(epoch_times[multiplier, method, precision])
        chosen, distinct = batch_method(model, BATCH)
        flops = steps * alpharec_step_flops(model, BATCH)
        bound = flops / (peak * 1e9)
        line = (f"AlphaRec h = {model.hidden_size} (m {multiplier}), negative_scores {method} -> {chosen}, {precision}: "
                f"epoch {epoch:.3f} s, {epoch / lightgcn_epoch:.2f}x LightGCN; FLOP bound {flops / 1e9:.1f} GFLOP "
                f"= {bound:.3f} s, measured / bound {epoch / bound:.2f}")  # fmt: skip
        if precision == "fp32":
            fp32_epochs[multiplier, method] = epoch
        elif (multiplier, method) in fp32_epochs:
            line += f"; {precision} / fp32 epoch {epoch / fp32_epochs[multiplier, method]:.2f}x"
        print(line)

    if args.score_repeats > 0:
        print_negative_score_seconds(alpharec, args.score_repeats)
    if args.eval_repeats > 0:
        print_evaluation_ratio(args, alpharec, alpharec_trainer, valid_data)
    return 0


def print_negative_score_seconds(alpharec, repeats: int) -> None:
    seconds = negative_score_seconds(alpharec, repeats)
    distinct = round(expected_distinct(len(alpharec.users_with_items), BATCH))
    dims = (alpharec.n_items, alpharec.num_negatives, alpharec.embedding_size)
    estimate = {"dense": score_cost("dense", distinct, *dims), "sampled": score_cost("sampled", BATCH, *dims)}
    print(f"negative scores of one batch (B {BATCH}, ~{distinct} distinct users), forward + backward: " + ", ".join(
        f"{method} {value * 1e3:.1f} ms" + (f" (cost model {estimate[method] * 1e3:.1f} ms)" if method in estimate else "")
        for method, value in seconds.items()
    ))  # fmt: skip


def print_evaluation_ratio(args, alpharec, alpharec_trainer, valid_data) -> None:
    _, overall_trainer, overall_train, overall_valid = build(
        "AlphaRec", args.dataset, metrics=["Recall", "NDCG", "Hit"], hidden_multiplier=args.hidden_multipliers[0]
    )
    overall_trainer.model.load_state_dict(alpharec.state_dict())
    eval_times = {"fair": [], "overall": []}
    for repeat in range(args.eval_repeats + 1):
        a = timed(alpharec_trainer.evaluate, valid_data, load_best_model=False)
        b = timed(overall_trainer.evaluate, overall_valid, load_best_model=False)
        if repeat:
            eval_times["fair"].append(a)
            eval_times["overall"].append(b)
    fair, overall = statistics.median(eval_times["fair"]), statistics.median(eval_times["overall"])
    print(f"full-sort valid evaluation seconds: with fairness metrics {fair:.4f}  Recall/NDCG/Hit only "
          f"{overall:.4f}  ratio {fair / overall:.2f}x (target <= 1.15x)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
