"""What each part of BiFair contributes (issue 11, item 7): ml100k, popularity and genre groups,
3 seeds, the Table 2 budget, one run per (method, group kind, seed).

    .venv/bin/python benchmarks/ablation.py [--jobs 2] [--seeds 0 1 2] [--groups pop genre]
    .venv/bin/python benchmarks/ablation.py --table      # render results/ablation/ablation.md

Rows (every one the AlphaRec backbone, the same sampler, loss, optimiser and Z optimiser):

- ``Plain``: the plain InfoNCE loss (the paper's "AlphaRec" row);
- ``PlainLearnZ``: the plain loss with Z learnable (row-sparse AdamW, ``z_learning_rate``);
- ``Balanced-Z-frozen``: BiFair's balanced loss with ``z_learning_rate: 0`` (theta only);
- ``BiFair-first-order``: BiFair with ``xi: 0``;
- ``BiFair``: the default (one balance per iteration, xi = lr, params space);
- ``Separate``: balanced loss on theta, then on Z (Section 4.5);
- ``MultiFR``: MGDA over the group gradients with BiFair's floor ``min_group_share``.

The plain trainers ignore the groups, so their popularity runs fill their genre rows. Each run
is its own ``run_recbole.py`` process (one torch thread), its results JSON and log written under
``benchmarks/results/ablation/``; a run whose JSON exists is skipped (resumable after a kill:
rerun the same command). The table reads each BiFair-family log's per-epoch balance line:
w[N] (the entropy element's weight) and sum(alpha) in the first and last epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "ablation"
#: The Table 2 budget (benchmarks/README.md), fixed for every run.
BUDGET = ["--epochs=30", "--eval_step=3", "--stopping_step=4", "--hidden_multiplier=0.28125"]
METHODS = {
    "Plain": ["--trainer=Plain"],
    "PlainLearnZ": ["--trainer=PlainLearnZ"],
    "Balanced-Z-frozen": ["--trainer=BiFair", "--z_learning_rate=0"],
    "BiFair-first-order": ["--trainer=BiFair", "--xi=0"],
    "BiFair": ["--trainer=BiFair"],
    "Separate": ["--trainer=Separate"],
    "MultiFR": ["--trainer=MultiFR"],
}
GROUP_FREE = {"Plain", "PlainLearnZ"}
BALANCE_LINE = re.compile(r"epoch (\d+); .*? w\[N\] ([0-9.]+) sum\(alpha\) ([-0-9.]+)")
SECOND_ORDER = re.compile(r"\|xi hZ\|/\|dZ\| mean ([0-9.e+-]+)")


def run_name(method: str, group: str, seed: int) -> str:
    return f"{'pop' if method in GROUP_FREE else group}.{method}.seed{seed}"


def run_one(method: str, group: str, seed: int, data_path: str | None) -> str:
    name = run_name(method, group, seed)
    results = RESULTS / f"{name}.json"
    if results.exists():
        return f"{name}: done before"
    command = [sys.executable, str(ROOT / "run_recbole.py"), "--model=AlphaRec", "--dataset=ml100k",
               f"--fair_group={group}", f"--seed={seed}", *BUDGET, *METHODS[method],
               f"--results_file={results}", "--checkpoint_dir=/tmp/ablation_saved", "--show_progress=False"]
    if data_path:
        command.append(f"--data_path={data_path}")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    with open(RESULTS / f"{name}.log", "w") as log:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"{name}: rc {done.returncode}"


def balance_summary(log_file: Path) -> str:
    """'w[N] a -> b, sum(alpha) c -> d' from the first and last epoch's balance line."""
    if not log_file.exists():
        return ""
    lines = [m.groups() for m in BALANCE_LINE.finditer(log_file.read_text())]
    ratios = [float(m) for m in SECOND_ORDER.findall(log_file.read_text())]
    if not lines:
        return ""
    (_e0, w0, s0), (_e1, w1, s1) = lines[0], lines[-1]
    text = f"{float(w0):.3f} -> {float(w1):.3f} | {float(s0):.3f} -> {float(s1):.3f}"
    if ratios and any(ratios):
        text += f" | {statistics.mean(ratios):.1e}"
    else:
        text += " | "
    return text


def mean_std(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(seeds: list[int]) -> str:
    lines = ["# Ablation: what each part of BiFair contributes (ml100k, Table 2 budget)", ""]
    for group in ("pop", "genre"):
        lines += [f"## {group} groups (test split; mean ± std over seeds {', '.join(map(str, seeds))})", "",
                  f"| method | seeds | Recall@20 | NDCG@20 | {group} CV@20 | {group} MIN@20 | s/epoch |",
                  "|---|---|---|---|---|---|---|"]
        for method in METHODS:
            runs = []
            for seed in seeds:
                path = RESULTS / f"{run_name(method, group, seed)}.json"
                if path.exists():
                    runs.append(json.loads(path.read_text()))
            test = [r["test"] for r in runs]
            epoch = [statistics.median(r["timing"]["epoch_seconds"]) for r in runs if r.get("timing", {}).get("epoch_seconds")]
            lines.append(
                f"| {method} | {len(runs)} | {mean_std([t['recall@20'] for t in test])} | "
                f"{mean_std([t['ndcg@20'] for t in test])} | {mean_std([t[f'{group}_cv@20'] for t in test])} | "
                f"{mean_std([t[f'{group}_min@20'] for t in test])} | "
                f"{statistics.mean(epoch) if epoch else float('nan'):.2f} |"
            )
        lines.append("")
    lines += ["## Balance log (first -> last epoch)", "",
              "| run | w[N] | sum(alpha) | mean xi hZ/dZ |", "|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.log")):
        summary = balance_summary(path)
        if summary:
            lines.append(f"| {path.stem} | {summary} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--groups", nargs="+", default=["pop", "genre"], choices=["pop", "genre"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--data_path", help="folder holding the prepared ml100k (default: the config's)")
    parser.add_argument("--table", action="store_true", help="only render the table")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.table:
        todo = []
        for seed in args.seeds:  # seed-major: a partial run still covers every method
            for group in args.groups:
                for method in args.methods:
                    if method in GROUP_FREE and group != "pop":
                        continue
                    todo.append((method, group, seed))
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(lambda job: run_one(*job, args.data_path), todo):
                print(line, flush=True)
    text = table(args.seeds)
    temporary = RESULTS / "ablation.md.tmp"
    temporary.write_text(text)
    temporary.replace(RESULTS / "ablation.md")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
