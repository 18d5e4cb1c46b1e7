"""Table 2 of Zhang et al. 2025 (BiFair), Section 4.3: item-group fairness of the fairness
methods on the AlphaRec backbone, for popularity groups and genre groups.

Methods (paper row -> trainer): AlphaRec -> Plain, MultiFR, Reweight, PopDRO, DRORec, ITFR,
Separate, BiFair. Each (dataset, group kind, method, config, seed) is trained through
``run_recbole.py`` in its own process; the checkpoint is selected on **valid** Recall@20 (early
stopping on valid) and its **test** metrics are read from the results JSON
``benchmarks/results/table2/<dataset>.<group>.<method>.<config-tag>.seed<k>.json``.

Stages (``--stage all`` runs grid, final and table in that order; per group kind, pop first):

- ``grid``: every config of each method's small grid (``GRIDS``) with seed 0 (with
  ``--transfer_from DATASET``: only the config chosen on DATASET, for data too large to grid).
- ``final``: the config chosen on seed 0's VALID metrics (rule below) with the other seeds.
- ``probe``: extra BiFair runs with seed 0 (``PROBES``: the cut min_group_share 0.5, xi = 0,
  outer batch = next), for the investigation; never selected into the table.
- ``table``: ``table2.md`` (mean +- std over seeds of the chosen config, test metrics) and the
  accuracy-vs-CV scatter ``<dataset>_recall_vs_cv.png``.

Selection rule (per dataset, group kind and method, seed 0, valid split): among the configs
whose valid Recall@20 is within ``--within`` (2%) of the method's best valid Recall@20, the one
with the lowest valid CV@20 of the group kind being balanced.

Runs go cheap methods first and popularity groups before genre groups, so a partial result is
still a complete popularity table. The Plain and PlainLearnZ trainers do not depend on the groups
(they only log them), so their popularity runs also fill their genre rows. Runs whose JSON exists are skipped
(resumable); ``--max_minutes`` bounds the whole command (runs that would start after it are
skipped and listed as not run).

    python benchmarks/table2.py --datasets ml100k --groups pop genre --seeds 0 1 2 --epochs 30 \
        --eval_step 3 --stopping_step 4 [--methods AlphaRec DRORec ...] [--stage grid|final|probe|table|all]
        [--max_minutes 45] [--jobs 2 --threads 1] [--hidden_multiplier 0.28125]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "table2"
#: Paper row name -> trainer, cheapest first (the order the runs go in).
METHODS = {
    "AlphaRec": "Plain", "Reweight": "Reweight", "DRORec": "DRORec", "MultiFR": "MultiFR",
    "PopDRO": "PopDRO", "ITFR": "ITFR", "Separate": "Separate", "BiFair": "BiFair",
    "PlainLearnZ": "PlainLearnZ",
}  # fmt: skip
#: Small grids of each method's main knob(s), inside the paper's ranges; the first is the default.
GRIDS: dict[str, list[dict]] = {
    "AlphaRec": [{}],
    "PlainLearnZ": [{"z_learning_rate": 0.001}],  # BiFair's chosen Z learning rate
    "Reweight": [{}],
    "DRORec": [{"dro_eta": 0.01}, {"dro_eta": 0.1}],
    "MultiFR": [{"multifr_min_group_weight": 0.0}],
    "PopDRO": [{"popdro_step_size": 0.17}],
    "ITFR": [{"itfr_eta": 0.05}],
    "Separate": [{"z_learning_rate": 0.0001, "min_group_share": 0.2}],
    "BiFair": [
        {"z_learning_rate": 0.0001, "min_group_share": 0.2},
        {"z_learning_rate": 0.001, "min_group_share": 0.2},
    ],
}
#: Configs cut for the budget (run with ``--stage probe`` if time allows; never selected):
#: MultiFR min group weight 0.1, PopDRO step 0.5, ITFR eta 0.2, BiFair min_group_share 0.5.
#: BiFair probes for the investigation: xi = 0 and outer batch = next at the default.
PROBES = [
    {"z_learning_rate": 0.0001, "min_group_share": 0.5},
    {"z_learning_rate": 0.0001, "min_group_share": 0.2, "xi": 0},
    {"z_learning_rate": 0.0001, "min_group_share": 0.2, "outer_batch": "next"},
]
#: Genre groups (18 on ml100k): BiFair and Separate balance in the output-embedding space
#: (``balance_space: embeddings``, MGDA-UB: one backward for all groups) instead of over theta's
#: 18 group gradients; the order puts BiFair right after the cheap methods, and the grids are
#: cut to the default config (budget).
GROUP_EXTRA = {
    ("genre", "BiFair"): {"balance_space": "embeddings"},
    ("genre", "Separate"): {"balance_space": "embeddings"},
}
GENRE_ORDER = [
    "AlphaRec", "PlainLearnZ", "Reweight", "DRORec", "BiFair", "Separate", "MultiFR", "PopDRO", "ITFR",
]  # fmt: skip
#: Methods whose loss ignores the groups (they only log them): one set of runs serves both kinds.
GROUP_FREE = {"AlphaRec", "PlainLearnZ"}
GENRE_GRID_CUT = 1  # configs per method tried on genre groups
COLUMNS = [
    ("R@20", "recall@20"),
    ("N@20", "ndcg@20"),
    ("CV@20", "{g}_cv@20"),
    ("MIN@20", "{g}_min@20"),
]


#: ``--transfer_from``: dataset -> (source dataset, selection tolerance); its grid is replaced by
#: the config chosen on the source dataset's valid split.
TRANSFER: dict[str, tuple[str, float]] = {}


#: games (14.5k items, 26k graph rows): BiFair and Separate run the cheap variant of the balance,
#: first order in the output-embedding space (2.2x a plain epoch on ml100k, against 7.4x for the
#: literal params space with xi = lr: 45 s against about 150 s per epoch here). On ml100k the
#: second-order term was 0.4-1.2% of dZ and xi = 0 landed within seed noise (table2.md).
DATASET_EXTRA = {
    ("games", "BiFair"): {"balance_space": "embeddings", "xi": 0},
    ("games", "Separate"): {"balance_space": "embeddings", "xi": 0},
}


def grid(dataset: str, group: str, method: str) -> list[dict]:
    if dataset in TRANSFER:  # no grid here: the config chosen on the source dataset's valid split
        source, within = TRANSFER[dataset]
        chosen = choose(source, group, method, within)
        return [] if chosen is None else [{**chosen, **DATASET_EXTRA.get((dataset, method), {})}]
    configs = GRIDS[method] if group == "pop" else GRIDS[method][:GENRE_GRID_CUT]
    return [{**c, **GROUP_EXTRA.get((group, method), {})} for c in configs]



def order(group: str, methods: list[str]) -> list[str]:
    return methods if group == "pop" else [m for m in GENRE_ORDER if m in methods]


def tag(config: dict) -> str:
    return "default" if not config else "_".join(f"{k}{v}" for k, v in config.items())


def result_path(dataset: str, group: str, method: str, config: dict, seed: int) -> Path:
    if method in GROUP_FREE:
        group = "pop"  # the plain loss ignores the groups: one set of runs serves both tables
    return RESULTS / f"{dataset}.{group}.{method}.{tag(config)}.seed{seed}.json"


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_one(dataset: str, group: str, method: str, config: dict, seed: int, args) -> dict | None:
    path = result_path(dataset, group, method, config, seed)
    if path.exists():
        return load(path)
    if time.monotonic() > args.deadline:
        print(f"  skipped (budget) {path.name}", flush=True)
        return None
    env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1"
    )
    command = [
        sys.executable, str(ROOT / "run_recbole.py"), "--model=AlphaRec", f"--dataset={dataset}",
        f"--trainer={METHODS[method]}", f"--fair_group={group}", f"--seed={seed}",
        f"--epochs={args.epochs}", f"--eval_step={args.eval_step}", f"--stopping_step={args.stopping_step}",
        f"--hidden_multiplier={args.hidden_multiplier}", f"--results_file={path}",
        f"--checkpoint_dir={args.checkpoint_dir}/{path.stem}",
    ] + [f"--{k}={v}" for k, v in config.items()]  # fmt: skip
    start = time.monotonic()
    log = RESULTS / "logs" / f"{path.stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    if done.returncode != 0:
        print(f"  FAILED {path.name} (see {log})", file=sys.stderr, flush=True)
        return None
    result = load(path)
    print(f"  {path.name}: {time.monotonic() - start:.0f} s, valid R@20 {result['valid'].get('recall@20', math.nan):.4f}"
          f" {group} CV {result['valid'].get(f'{group}_cv@20', math.nan):.4f}", flush=True)  # fmt: skip
    return result


def choose(dataset: str, group: str, method: str, within: float) -> dict | None:
    """The selection rule on seed 0's valid metrics; None if no grid run exists."""
    done = [(c, load(result_path(dataset, group, method, c, 0))) for c in grid(dataset, group, method)]
    done = [(c, r) for c, r in done if r is not None]
    if not done:
        return None
    best = max(r["valid"]["recall@20"] for _, r in done)
    near = [(c, r) for c, r in done if r["valid"]["recall@20"] >= (1 - within) * best]
    return min(near, key=lambda cr: cr[1]["valid"].get(f"{group}_cv@20", math.inf))[0]


def run_batch(tasks: list[tuple], args) -> None:
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda t: run_one(*t, args), tasks))


def stats(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}"


def chosen_runs(dataset: str, group: str, method: str, args) -> tuple[dict | None, list[dict]]:
    """The config chosen for ``method`` and the results of its seeds that exist."""
    config = choose(dataset, group, method, args.within)
    if config is None:
        return None, []
    runs = [load(result_path(dataset, group, method, config, seed)) for seed in args.seeds]
    return config, [run for run in runs if run is not None]


def table(args) -> str:
    lines = [
        f"Test metrics @20 (mean ± std over seeds, ddof 0) of each method's config chosen on seed 0's valid split "
        f"(lowest valid CV@20 within {100 * args.within:g}% of the method's best valid Recall@20). AlphaRec backbone, "
        f"hidden_multiplier {args.hidden_multiplier}, max {args.epochs} epochs (polynomial decay over them), valid "
        f"every {args.eval_step}, patience {args.stopping_step} evaluations, {args.threads} thread(s) per run.",
        "",
    ]
    for dataset in args.datasets:
        if dataset in TRANSFER:
            extra = "; ".join(f"{m}: {tag(c)}" for (d, m), c in DATASET_EXTRA.items() if d == dataset)
            lines += [f"{dataset}: no grid; each method runs the config chosen on {TRANSFER[dataset][0]}'s valid split"
                      + (f", with {extra}" if extra else "") + ".", ""]  # fmt: skip
        for group in args.groups:
            lines += [f"### {dataset}, {group} groups", "",
                      "| method | config | seeds | " + " | ".join(h for h, _ in COLUMNS) + " | epochs | s/epoch |",
                      "|---" * (len(COLUMNS) + 5) + "|"]  # fmt: skip
            for method in args.methods:
                config, runs = chosen_runs(dataset, group, method, args)
                if not runs:
                    lines.append(f"| {method} | not run |" + " |" * (len(COLUMNS) + 3))
                    continue
                cells = [
                    stats([r["test"].get(key.format(g=group), math.nan) for r in runs])
                    for _, key in COLUMNS
                ]
                epochs = [len(r["timing"]["epoch_seconds"]) for r in runs]
                per_epoch = sum(sum(r["timing"]["epoch_seconds"]) for r in runs) / max(
                    1, sum(epochs)
                )
                lines.append(f"| {method} | {tag(config)} | {len(runs)} | " + " | ".join(cells)
                             + f" | {min(epochs)}-{max(epochs)} | {per_epoch:.2f} |")  # fmt: skip
            lines.append("")
            lines += grid_lines(dataset, group, args)
    return "\n".join(lines + balance_lines(args))


def grid_lines(dataset: str, group: str, args) -> list[str]:
    lines = [f"Grid, seed 0, VALID metrics ({dataset}, {group} groups; * = chosen):", "",
             f"| method | config | valid R@20 | valid {group} CV@20 | valid {group} MIN@20 | test R@20 | test {group} CV@20 | epochs |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for method in args.methods:
        chosen = choose(dataset, group, method, args.within)
        configs = grid(dataset, group, method) + (PROBES if method == "BiFair" and group == "pop" else [])
        for config in configs:
            r = load(result_path(dataset, group, method, config, 0))
            if r is None:
                continue
            mark = "*" if config == chosen else ("probe" if config in PROBES else "")
            v, t = r["valid"], r["test"]
            lines.append(f"| {method} | {tag(config)} {mark} | {v['recall@20']:.4f} | {v.get(f'{group}_cv@20', math.nan):.4f} | "
                         f"{v.get(f'{group}_min@20', math.nan):.4f} | {t['recall@20']:.4f} | {t.get(f'{group}_cv@20', math.nan):.4f} | "
                         f"{len(r['timing']['epoch_seconds'])} |")  # fmt: skip
    return lines + [""]


BALANCE = re.compile(
    r"epoch (\d+) balance; outer: .*? w\[N\] ([\d.]+) sum\(alpha\) ([-\d.]+) \|combined grad\| ([\d.e+-]+);"
    r".*\|xi hZ\|/\|dZ\| mean ([\d.e+-]+) max ([\d.e+-]+)"
)


def balance_lines(args) -> list[str]:
    """BiFair's per-epoch log (outer balance: w[N], sum alpha, |combined grad|; |xi hZ|/|dZ|), summarised per run."""
    lines = ["BiFair balance log (outer level, per-epoch means; first -> last epoch, and the range of ‖xi hZ‖/‖dZ‖):", "",
             "| run | epochs | w[N] | sum(alpha) | combined-grad norm | mean ‖xi hZ‖/‖dZ‖ (min-max over epochs) | max per step |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for log in sorted((RESULTS / "logs").glob("*.BiFair.*.log")):
        rows = [m.groups() for m in BALANCE.finditer(log.read_text(errors="replace"))]
        if not rows:
            continue
        first, last = rows[0], rows[-1]
        means = [float(r[4]) for r in rows]
        lines.append(f"| {log.stem} | {len(rows)} | {float(first[1]):.3f} -> {float(last[1]):.3f} | "
                     f"{float(first[2]):.3f} -> {float(last[2]):.3f} | {float(first[3]):.2e} -> {float(last[3]):.2e} | "
                     f"{statistics.mean(means):.2e} ({min(means):.1e}-{max(means):.1e}) | {max(float(r[5]) for r in rows):.2e} |")  # fmt: skip
    return lines + [""]


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dataset in args.datasets:
        fig, axes = plt.subplots(
            1, len(args.groups), figsize=(5.5 * len(args.groups), 4.5), squeeze=False
        )
        for ax, group in zip(axes[0], args.groups, strict=True):
            for method in args.methods:
                config, runs = chosen_runs(dataset, group, method, args)
                if not runs:
                    continue
                xs = [r["test"][f"{group}_cv@20"] for r in runs]
                ys = [r["test"]["recall@20"] for r in runs]
                ax.errorbar(statistics.mean(xs), statistics.mean(ys), xerr=statistics.pstdev(xs), yerr=statistics.pstdev(ys),
                            fmt="o*"[method == "BiFair"], ms=12 if method == "BiFair" else 7, capsize=3, label=method, color=f"C{list(METHODS).index(method)}")  # fmt: skip
            ax.set_xlabel(f"test {group} CV@20 (lower is fairer)")
            ax.set_ylabel("test Recall@20")
            ax.set_title(f"{dataset}, {group} groups (mean ± std over seeds)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / f"{dataset}_recall_vs_cv.png", dpi=110)
        plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["ml100k"])
    parser.add_argument("--groups", nargs="+", default=["pop", "genre"], choices=["pop", "genre"])
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="paper row names"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--stage", default="all", choices=["grid", "final", "probe", "table", "all"]
    )
    parser.add_argument(
        "--epochs", type=int, default=30, help="maximum epochs per run (the LR decay spans them)"
    )
    parser.add_argument("--eval_step", type=int, default=3)
    parser.add_argument(
        "--stopping_step", type=int, default=4, help="evaluations without improvement"
    )
    parser.add_argument(
        "--hidden_multiplier",
        default="0.28125",
        help="AlphaRec MLP width h = m d (9/32: h = 108 for MiniLM)",
    )
    parser.add_argument(
        "--within", type=float, default=0.02, help="selection: Recall tolerance of the CV choice"
    )
    parser.add_argument(
        "--max_minutes", type=float, default=600.0, help="budget for the whole command"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument(
        "--checkpoint_dir",
        default=str(Path(tempfile.gettempdir()) / "table2_saved"),
        help="where the best checkpoints go (outside the repository by default)",
    )
    parser.add_argument(
        "--transfer_from", default=None, metavar="DATASET",
        help="run no grid on --datasets: each method uses the config chosen on DATASET's valid "
        "split (its seed-0 grid runs must exist); for data too large to grid here",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.transfer_from:
        TRANSFER.update({d: (args.transfer_from, args.within) for d in args.datasets if d != args.transfer_from})
    args.methods = [m for m in METHODS if m in args.methods]  # cheap first
    args.deadline = time.monotonic() + 60 * args.max_minutes
    RESULTS.mkdir(parents=True, exist_ok=True)
    seeds_left = [s for s in args.seeds if s != 0]
    for dataset in args.datasets:
        for group in args.groups:  # pop before genre
            if args.stage in ("grid", "all"):
                run_batch(
                    [
                        (dataset, group, m, c, 0)
                        for m in order(group, args.methods)
                        for c in grid(dataset, group, m)
                    ],
                    args,
                )
            if args.stage in ("final", "all"):
                tasks = []  # seed-major: a partial result has the same seeds for every method
                for s in seeds_left:
                    for m in order(group, args.methods):
                        chosen = choose(dataset, group, m, args.within)
                        if chosen is not None:
                            tasks.append((dataset, group, m, chosen, s))
                run_batch(tasks, args)
            if args.stage == "probe" and "BiFair" in args.methods:
                run_batch([(dataset, group, "BiFair", c, 0) for c in PROBES], args)
    text = table(args)
    (RESULTS / "table2.md").write_text(text + "\n", encoding="utf-8")
    plot(args)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
