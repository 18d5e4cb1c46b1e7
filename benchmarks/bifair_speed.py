"""BiFair's cost against AlphaRec with the plain loss, side by side in one run (issues 5 and 11).

    .venv/bin/python benchmarks/bifair_speed.py [--dataset ml100k] [--epochs 2] [--repeats 2]

Each variant runs in its own subprocess (so its peak memory is its own): build the data and
the AlphaRec model, run ``--epochs`` training epochs with the given trainer, report the
seconds per epoch (the first epoch is a warm-up and is dropped when there are several) and
the peak resident memory. Variants are interleaved ``--repeats`` times (A B C ... A B C) so
that load from other processes hits them alike; the medians are compared as ratios to the
plain loss. ``--profile VARIANT`` prints where one BiFair epoch spends its time instead.
Threads: 2, OMP_WAIT_POLICY=PASSIVE (see RECBOLE_NOTES.md: timing on a shared CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "plain-pop": {"trainer": "Plain", "fair_group": "pop"},
    "bifair-pop": {"trainer": "BiFair", "fair_group": "pop"},
    "bifair-pop-first-order": {"trainer": "BiFair", "fair_group": "pop", "xi": 0},
    "bifair-pop-z-frozen": {"trainer": "BiFair", "fair_group": "pop", "z_learning_rate": 0},
    "bifair-pop-embeddings": {"trainer": "BiFair", "fair_group": "pop", "balance_space": "embeddings"},
    "bifair-pop-embeddings-first-order": {"trainer": "BiFair", "fair_group": "pop",
                                          "balance_space": "embeddings", "xi": 0},
    "multifr-pop": {"trainer": "MultiFR", "fair_group": "pop"},
    "plain-genre": {"trainer": "Plain", "fair_group": "genre"},
    "bifair-genre": {"trainer": "BiFair", "fair_group": "genre"},
    "bifair-genre-first-order": {"trainer": "BiFair", "fair_group": "genre", "xi": 0},
    "bifair-genre-embeddings": {"trainer": "BiFair", "fair_group": "genre", "balance_space": "embeddings"},
}


def build(variant: str, dataset: str, epochs: int, hidden_multiplier: str = "auto"):
    from recbole_bifair.quick_start import build_config, build_data, build_trainer
    from recbole_bifair.registry import get_model

    settings = dict(VARIANTS[variant])
    config = build_config("AlphaRec", dataset, config_dict={
        **settings, "epochs": epochs, "checkpoint_dir": tempfile.mkdtemp(), "show_progress": False,
        "hidden_multiplier": hidden_multiplier,
    })
    _dataset, train_data, _valid, _test = build_data(config)
    model = get_model("AlphaRec")(config, train_data._dataset)
    trainer = build_trainer(config, model)
    trainer.setup_training(train_data)
    return trainer, train_data


def measure(variant: str, dataset: str, epochs: int, hidden_multiplier: str) -> dict:
    import logging

    import torch

    torch.set_num_threads(2)
    logging.disable(logging.INFO)
    trainer, train_data = build(variant, dataset, epochs, hidden_multiplier)
    for epoch in range(epochs):
        trainer._train_epoch(train_data, epoch)
    seconds = trainer.epoch_seconds[1:] if len(trainer.epoch_seconds) > 1 else trainer.epoch_seconds
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "epoch_seconds": seconds, "steps": len(train_data), "peak_rss_mb": peak_mb}


def profile(variant: str, dataset: str, hidden_multiplier: str) -> None:
    import torch
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(2)
    trainer, train_data = build(variant, dataset, 2, hidden_multiplier)
    trainer._train_epoch(train_data, 0)
    with torch_profile() as prof:
        trainer._train_epoch(train_data, 1)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


def run_variant(variant: str, dataset: str, epochs: int, hidden_multiplier: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--dataset", dataset, "--epochs", str(epochs),
         "--hidden_multiplier", hidden_multiplier],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--hidden_multiplier", default="auto", help="AlphaRec's width h = m d (auto: 8 for MiniLM)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help="print a profile of one epoch of this variant")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.dataset, args.epochs, args.hidden_multiplier)))
        return 0
    if args.profile:
        profile(args.profile, args.dataset, args.hidden_multiplier)
        return 0
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for variant in args.variants:
            runs[variant].append(run_variant(variant, args.dataset, args.epochs, args.hidden_multiplier))
    print(f"dataset {args.dataset}, hidden_multiplier {args.hidden_multiplier}, {args.epochs} epochs per run (first dropped), {args.repeats} interleaved repeats, 2 threads")
    print(f"{'variant':40} {'s/epoch':>8} {'x plain':>8} {'peak MB':>8} {'x plain':>8}")
    base = {}
    for variant, results in runs.items():
        seconds = statistics.median(s for r in results for s in r["epoch_seconds"])
        peak = statistics.median(r["peak_rss_mb"] for r in results)
        group = variant.split("-")[1]
        if variant.startswith("plain-"):
            base[group] = (seconds, peak)
        ref_seconds, ref_peak = base.get(group, (float("nan"), float("nan")))
        print(f"{variant:40} {seconds:8.2f} {seconds / ref_seconds:8.2f} {peak:8.0f} {peak / ref_peak:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
