"""Table 1 of Zhang et al. 2025 (BiFair), Section 4.2: accuracy and item-group fairness of the
backbones (MF, MultVAE, LightGCN, SGL, XSimGCL, Linear, AlphaRec) under one protocol.

Each (dataset, model) is trained through ``run_recbole.py`` in its own process; the checkpoint
is selected on **valid** Recall@20 (early stopping on valid), and the table reports its **test**
Recall/NDCG/HR@20 and popularity/genre CV@20 and MIN@20 (ALGORITHMS.md section 7). Results:
``benchmarks/results/table1/<dataset>.<model>.json`` and ``table1.md``.

    python benchmarks/table1.py [--datasets ml100k games] [--epochs 50] [--eval_step 5]
        [--stopping_step 10] [--max_minutes 20] [--threads 2] [--models BPR AlphaRec ...]

``--max_minutes`` is a budget for the whole command: runs that would start after it are
skipped and listed as not run. The games data must be prepared first (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "table1"
#: Paper row name -> model name here.
MODELS = {
    "MF": "BPR", "MultVAE": "MultiVAE", "LightGCN": "LightGCN", "SGL": "SGL",
    "XSimGCL": "XSimGCL", "Linear": "LLMLinear", "AlphaRec": "AlphaRec",
}  # fmt: skip
COLUMNS = [
    ("R@20", "recall@20"), ("N@20", "ndcg@20"), ("HR@20", "hit@20"), ("pop CV", "pop_cv@20"),
    ("pop MIN", "pop_min@20"), ("genre CV", "genre_cv@20"), ("genre MIN", "genre_min@20"),
]  # fmt: skip


def run_one(dataset: str, model: str, args, results_file: Path) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    command = [
        sys.executable, str(ROOT / "run_recbole.py"), f"--model={model}", f"--dataset={dataset}",
        f"--epochs={args.epochs}", f"--eval_step={args.eval_step}", f"--stopping_step={args.stopping_step}",
        f"--results_file={results_file}", f"--checkpoint_dir={args.checkpoint_dir}", f"--seed={args.seed}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  FAILED {dataset} {model}:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(results_file.read_text())


def row(name: str, result: dict | None) -> str:
    if result is None:
        return f"| {name} | " + " | ".join("not run" for _ in COLUMNS) + " | | |"
    cells = [f"{result['test'].get(key, float('nan')):.4f}" for _, key in COLUMNS]
    timing = result["timing"]
    epochs = len(timing["epoch_seconds"])
    per_epoch = sum(timing["epoch_seconds"]) / max(1, epochs)
    return f"| {name} | " + " | ".join(cells) + f" | {epochs} | {per_epoch:.2f} |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["ml100k"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="paper row names")
    parser.add_argument("--epochs", type=int, default=50, help="maximum epochs per run")
    parser.add_argument("--eval_step", type=int, default=5)
    parser.add_argument("--stopping_step", type=int, default=10, help="evaluations without improvement")
    parser.add_argument("--max_minutes", type=float, default=30.0, help="budget for the whole command")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--checkpoint_dir", default=str(Path(tempfile.gettempdir()) / "table1_saved"),
                        help="where the best checkpoints go (outside the repository by default)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 60 * args.max_minutes
    lines = [
        f"Test metrics @20, checkpoint selected on valid Recall@20; max {args.epochs} epochs, valid every "
        f"{args.eval_step}, patience {args.stopping_step} evaluations, {args.threads} thread(s), seed {args.seed}.",
        "",
    ]
    for dataset in args.datasets:
        lines += [f"### {dataset}", "", "| model | " + " | ".join(h for h, _ in COLUMNS) + " | epochs | s/epoch |",
                  "|---" * (len(COLUMNS) + 3) + "|"]  # fmt: skip
        for name in args.models:
            result = None
            if time.monotonic() < deadline:
                start = time.monotonic()
                result = run_one(dataset, MODELS[name], args, RESULTS / f"{dataset}.{MODELS[name]}.json")
                print(f"{dataset} {name}: {time.monotonic() - start:.0f} s", flush=True)
            lines.append(row(name, result))
            print(lines[-1], flush=True)
        lines.append("")
    text = "\n".join(lines)
    (RESULTS / "table1.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
