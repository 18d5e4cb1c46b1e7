"""What ``precision: bf16`` changes in accuracy and fairness (recbole_bifair/model/precision.py).

AlphaRec (ALGORITHMS.md section 3) trained with ``precision: fp32`` and ``bf16`` on the same
seeds, each run through ``run_recbole.py`` in its own process (one thread each, the fp32 and
bf16 runs of a seed side by side), the checkpoint chosen on valid Recall@20; prints test
Recall@20 and pop CV@20 per seed, the means and the bf16 - fp32 differences, and the seconds per
epoch of each. JSON and logs go to ``benchmarks/results/precision/`` (reused when present), the
model files to /tmp.

    python benchmarks/precision_accuracy.py --dataset ml100k --seeds 0 1 2 --epochs 30 --eval_step 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "precision"
CHECKPOINTS = Path("/tmp/precision_accuracy_saved")  # model files stay out of the checkout
PRECISIONS = ("fp32", "bf16")


def command(args, precision: str, seed: int, path: Path) -> list[str]:
    return [
        sys.executable, str(ROOT / "run_recbole.py"), "--model=AlphaRec", f"--dataset={args.dataset}",
        f"--precision={precision}", f"--seed={seed}", f"--epochs={args.epochs}", f"--eval_step={args.eval_step}",
        f"--stopping_step={args.stopping_step}", f"--hidden_multiplier={args.hidden_multiplier}",
        f"--results_file={path}", f"--checkpoint_dir={CHECKPOINTS / path.stem}",
    ]  # fmt: skip


def run_seed(args, seed: int) -> dict[str, dict]:
    """Both precisions of one seed, side by side; their results JSON."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    paths = {precision: RESULTS / f"{args.dataset}.{precision}.seed{seed}.json" for precision in PRECISIONS}
    running = []
    for precision, path in paths.items():
        if not path.exists():
            log = open(RESULTS / "logs" / f"{path.stem}.log", "w")  # noqa: SIM115 (closed below)
            process = subprocess.Popen(command(args, precision, seed, path), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((process, log, path))
    for process, log, path in running:
        if process.wait() != 0:
            raise SystemExit(f"error: {path.stem} failed, see {log.name}")
        log.close()
    return {precision: json.loads(path.read_text()) for precision, path in paths.items()}


def seconds_per_epoch(result: dict) -> float:
    """Median training seconds per epoch of the run."""
    return statistics.median(result["timing"]["epoch_seconds"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eval_step", type=int, default=3)
    parser.add_argument("--stopping_step", type=int, default=4)
    parser.add_argument("--hidden_multiplier", default="auto", help="auto = the spec's h = 8d = 3072 for MiniLM")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    rows = {precision: [] for precision in PRECISIONS}
    print(f"{args.dataset}, AlphaRec h multiplier {args.hidden_multiplier}, {args.epochs} epochs (eval every "
          f"{args.eval_step}, patience {args.stopping_step}), {args.threads} thread(s) per run, test metrics @20")  # fmt: skip
    print("| seed | precision | R@20 | pop CV@20 | s/epoch |\n|---|---|---|---|---|")
    for seed in args.seeds:
        results = run_seed(args, seed)
        for precision, result in results.items():
            test = result["test"]
            row = (test["recall@20"], test["pop_cv@20"], seconds_per_epoch(result))
            rows[precision].append(row)
            print(f"| {seed} | {precision} | {row[0]:.4f} | {row[1]:.4f} | {row[2]:.2f} |", flush=True)
    means = {precision: [statistics.mean(column) for column in zip(*rows[precision], strict=True)] for precision in rows}
    for precision, (recall, cv, seconds) in means.items():
        print(f"mean {precision}: R@20 {recall:.4f}  pop CV@20 {cv:.4f}  s/epoch {seconds:.2f}")
    (recall32, cv32, sec32), (recall16, cv16, sec16) = means["fp32"], means["bf16"]
    print(f"bf16 - fp32: R@20 {recall16 - recall32:+.4f} ({(recall16 / recall32 - 1) * 100:+.1f}%), pop CV@20 "
          f"{cv16 - cv32:+.4f}; s/epoch bf16 / fp32 {sec16 / sec32:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
