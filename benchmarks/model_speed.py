"""Cost of the LLM-enhanced backbone (ALGORITHMS.md section 3; Sheng et al. 2024, AlphaRec).

Measured side by side in one process, medians of ``--repeats`` alternated runs:

1. one AlphaRec training epoch (at each ``--hidden_multipliers`` width, the spec's m = 8 first)
   vs one epoch of RecBole's LightGCN, same embedding size (64),
   same batch (4096) and number of training samples (the train interactions); AlphaRec uses
   K = 256 sampled negatives per sample, LightGCN 1 (BPR);
2. AlphaRec's epoch against a FLOP lower bound: the multiply-adds of one step as the model
   computes it (first layer over the I item rows only — users get M (Z W1) since each row of M
   sums to 1 — second layer over all U+I rows, their backward without the first layer's input
   gradient, the sparse user mean of the hidden rows, the propagation, the score GEMM), divided
   by the measured fp32 GEMM rate of this machine;
3. full-sort evaluation with the fairness metrics (pop/genre CV and MIN) vs with only
   Recall/NDCG/Hit.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/model_speed.py [--dataset ml100k]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from recbole.utils import init_seed

from recbole_bifair.quick_start import build_config, build_data, build_trainer
from recbole_bifair.registry import get_model


def gemm_gflops(size: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def build(model: str, dataset: str, **settings):
    config = build_config(model, dataset, config_dict={"embedding_size": 64, "train_batch_size": 4096, **settings})
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


def alpharec_step_flops(model, batch_size: int) -> float:
    """Dense FLOPs (2 x multiply-adds) of one AlphaRec training step, a lower bound."""
    rows, d, h, out = model.n_users + model.n_items, model.llm_dim, model.hidden_size, model.embedding_size
    nnz = model.norm_adj_matrix._nnz()
    mlp_forward = model.n_items * d * h + rows * h * out
    mlp_backward = model.n_items * d * h + rows * 2 * h * out  # weight grads, input grad of the second layer
    propagation = 2 * model.n_layers * nnz * out  # forward and backward
    user_mean = 2 * model.user_mean._nnz() * h  # M (Z W1) forward and backward
    k = model.num_negatives
    if model.n_items <= 8 * k:  # dense scores over the batch's distinct users (user-uniform: all of them)
        scores = 3 * min(batch_size, len(model.users_with_items)) * model.n_items * out  # forward + 2 backward
    else:
        scores = 3 * batch_size * k * out
    return 2.0 * (mlp_forward + mlp_backward + propagation + user_mean + scores)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--eval_repeats", type=int, default=9,
        help="alternated evaluations of each kind (short and noisy on a shared CPU: take many)",
    )  # fmt: skip
    parser.add_argument(
        "--hidden_multipliers", nargs="+", type=float, default=[8.0, 1.0, 0.28125],
        help="AlphaRec widths h = m d to time against LightGCN (the first is the spec's, m = 8 for "
        "BERT-size encoders, and is the one the evaluation timing uses)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}")
    peak = gemm_gflops()
    print(f"fp32 GEMM 2048^3: {peak:.0f} GFLOP/s")

    widths = {}  # hidden_multiplier -> (model, trainer, train data)
    for multiplier in args.hidden_multipliers:
        model, trainer, train, valid = build("AlphaRec", args.dataset, hidden_multiplier=multiplier)
        widths[multiplier] = (model, trainer, train)
    valid_data = valid
    alpharec, alpharec_trainer, alpharec_train = widths[args.hidden_multipliers[0]]
    _lightgcn, lightgcn_trainer, lightgcn_train, _ = build("LightGCN", args.dataset)
    epoch_times = {**{m: [] for m in widths}, "LightGCN": []}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for multiplier, (_model, trainer, train) in widths.items():
            seconds = timed(trainer._train_epoch, train, repeat)
            if repeat:
                epoch_times[multiplier].append(seconds)
        seconds = timed(lightgcn_trainer._train_epoch, lightgcn_train, repeat)
        if repeat:
            epoch_times["LightGCN"].append(seconds)
    lightgcn_epoch = statistics.median(epoch_times["LightGCN"])
    samples = len(alpharec_train._dataset)
    steps = math.ceil(samples / 4096)
    print(f"train samples per epoch {samples} ({steps} steps of <= 4096); d = {alpharec.llm_dim}, "
          f"K = {alpharec.num_negatives}; LightGCN epoch {lightgcn_epoch:.3f} s")  # fmt: skip
    for multiplier, (model, _trainer, _train) in widths.items():
        epoch = statistics.median(epoch_times[multiplier])
        flops = steps * alpharec_step_flops(model, 4096)
        bound = flops / (peak * 1e9)
        print(f"AlphaRec hidden_multiplier {multiplier} (h = {model.hidden_size}): epoch {epoch:.3f} s, "
              f"ratio to LightGCN {epoch / lightgcn_epoch:.2f}x (target <= 1.5x); FLOP lower bound "
              f"{flops / 1e9:.1f} GFLOP -> {bound:.3f} s at {peak:.0f} GFLOP/s, measured / bound = {epoch / bound:.2f}")  # fmt: skip

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
