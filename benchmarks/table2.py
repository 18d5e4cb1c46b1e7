"""Table 2 of Zhang et al. 2025 (BiFair), Section 4.3, through ``run_compare.py``: the fairness
methods on the AlphaRec backbone, popularity and genre groups, at the Table 2 budget.

One ``run_compare.py`` per (dataset, group kind), output in
``benchmarks/results/table2/<dataset>.<group>/`` (comparison.md, .csv, .png, runs/*.json):
each method is searched on seed 0 over ``properties/hyper/<Trainer>.yaml`` (valid metrics only,
no transfer between datasets), picked by the lowest valid CV@20 of the balanced group kind
within 2% of the best valid Recall@20 (``--select=fair:<group>_cv@20:0.02``), then run on the
other seeds. The searching, selecting, resuming and reporting are run_compare.py's; this script
only fixes the paper's rows and the budget:

- AlphaRec backbone, ``hidden_multiplier`` 0.28125 (h = 108, the prototype's width);
- at most 30 epochs (polynomial decay over them), valid every 3, patience 4 evaluations.

    python benchmarks/table2.py --datasets ml100k games --groups pop genre --seeds 0 1 2 \
        --num_samples 8 [--methods Plain BiFair ...] [--dry_run] [-- --key=value ...]

Rerunning the same command resumes every comparison where it stopped. Arguments after ``--``
go to every run_compare.py (e.g. ``-- --address=auto --cpus_per_trial=2``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "table2"
#: The paper's rows as trainers (the paper's "AlphaRec" row is the Plain trainer), cheapest
#: first, and PlainLearnZ, the control that learns Z with the plain loss.
METHODS = ["Plain", "Reweight", "DRORec", "MultiFR", "PopDRO", "ITFR", "Separate", "BiFair", "PlainLearnZ"]
#: Stock RecBole ID-based models, the paper's Table 1 comparison (LLM-enhanced vs ID-based).
BASELINES = ["LightGCN", "BPR"]
#: The Table 2 budget, fixed for every run.
BUDGET = ["--epochs=30", "--eval_step=3", "--stopping_step=4", "--hidden_multiplier=0.28125"]


def command(dataset: str, group: str, args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The run_compare.py command of one (dataset, group kind)."""
    return [
        sys.executable, str(ROOT / "run_compare.py"), f"--dataset={dataset}", "--model=AlphaRec",
        "--methods", *args.methods, "--baselines", *args.baselines, f"--fair_group={group}", "--seeds", *map(str, args.seeds),
        f"--num_samples={args.num_samples}", f"--select=fair:{group}_cv@20:{args.within}",
        f"--output={RESULTS / f'{dataset}.{group}'}", *BUDGET, *extra,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["ml100k"])
    parser.add_argument("--groups", nargs="+", default=["pop", "genre"], choices=["pop", "genre"])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--baselines", nargs="*", default=BASELINES, help="stock RecBole ID models (claim a)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num_samples", type=int, default=8, help="trials per method's search")
    parser.add_argument("--within", type=float, default=0.02, help="selection: Recall tolerance of the CV choice")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(own)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    for dataset in args.datasets:
        for group in args.groups:  # popularity groups first: a partial result is a whole table
            cmd = command(dataset, group, args, extra)
            print(shlex.join(cmd), flush=True)
            if not args.dry_run:
                done = subprocess.run(cmd, cwd=ROOT, env=env)
                if done.returncode != 0:
                    return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
