"""run_compare.py: rows searched on seed 0, other seeds run, resumable after a kill; and the
shipped search spaces name keys their trainer/model knows.

The command runs for real (local Ray, 2 CPUs) on the prepared ml100k with 1 epoch per run:
the plugin's LLMLinear with the Plain trainer, and RecBole's BPR as a stock row.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbole_bifair.tune.compare_report import pareto_front

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUN_COMPARE = PROJECT_ROOT / "run_compare.py"
SPACES = sorted((PROJECT_ROOT / "properties" / "hyper").glob("*.yaml"))
MODELS = {"AlphaRec", "LLMLinear", "BPR", "LightGCN"}  # spaces of models; the others are trainers


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                PYTHONWARNINGS="ignore")


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_spaces_name_known_keys(path, ml100k_root):
    from recbole_bifair.tune import check_space_keys, driver_config, load_space

    model, trainer = (path.stem, None) if path.stem in MODELS else ("AlphaRec", path.stem)
    config = driver_config(model, "ml100k", [], {"data_path": str(ml100k_root),
                                                 **({"trainer": trainer} if trainer else {})})
    assert check_space_keys(load_space(path), config) == []


def test_pareto_front():
    # (CV, Recall): b beats a on both; c is fairer but less accurate; d is beaten by b.
    points = [(0.8, 0.20), (0.7, 0.25), (0.5, 0.10), (0.75, 0.24)]
    assert pareto_front(points) == [2, 1]


def compare_args(output: Path, ml100k_root: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(RUN_COMPARE), "--dataset=ml100k", "--model=LLMLinear", "--methods", "Plain",
        "--baselines", "BPR", "--seeds", "0", "1", "--num_samples=2", f"--output={output}", "--num_cpus=2",
        "--select=fair:pop_cv@20:0.05", "--epochs=1", f"--data_path={ml100k_root}", *extra,
    ]  # fmt: skip


def trial_starts(output: Path) -> dict[str, int]:
    """Trial folder -> how many times it started."""
    return {str(p.parent.relative_to(output)): len(p.read_text().split())
            for p in output.glob("*/*/trial_function_*/trial_starts.txt")}  # fmt: skip


def test_compare_resumes_after_a_kill_and_never_redoes_finished_work(tmp_path, ml100k_root):
    output = tmp_path / "cmp"
    driver = subprocess.Popen(compare_args(output, ml100k_root), cwd=tmp_path, env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not (output / "searches" / "Plain" / "best_test_results.json").is_file():
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the first search never finished"
            time.sleep(0.2)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait(timeout=60)
    first_search = {k: v for k, v in trial_starts(output).items() if k.startswith("searches/Plain")}
    assert len(first_search) == 2 and set(first_search.values()) == {1}

    done = subprocess.run(compare_args(output, ml100k_root), cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    starts = trial_starts(output)
    assert {k: starts[k] for k in first_search} == first_search  # the finished search was not redone
    for name in ("comparison.md", "comparison.csv", "comparison.png"):
        assert (output / name).stat().st_size > 0
    with open(output / "comparison.csv", newline="", encoding="utf-8") as handle:
        table = {r["row"]: r for r in csv.DictReader(handle)}
    assert set(table) == {"Plain", "BPR"} and all(r["seeds"] == "0 1" for r in table.values())
    for row in ("Plain", "BPR"):
        runs = [json.loads((output / "runs" / f"{row}.seed{s}.json").read_text()) for s in (0, 1)]
        assert [r["seed"] for r in runs] == [0, 1] and runs[0]["params"] == runs[1]["params"]
        assert all(0 <= r["test"]["recall@20"] <= 1 and "pop_cv@20" in r["valid"] for r in runs)
        mean = sum(r["test"]["recall@20"] for r in runs) / 2
        assert float(table[row]["recall@20_mean"]) == pytest.approx(mean, abs=1e-6)
        # The seed-0 run is the trial the fair rule picked from the search's valid metrics.
        best = json.loads((output / "searches" / row / "best_test_results.json").read_text())
        assert best["select"].startswith("lowest valid pop_cv@20 within 5%")
        assert runs[0]["trial_id"] == best["trial_id"] and runs[0]["test"] == best["test"]
    assert "searched on seed 0" in (output / "comparison.md").read_text()

    # Once more: nothing left to do, no trial starts again.
    again = subprocess.run(compare_args(output, ml100k_root), cwd=tmp_path, env=env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert trial_starts(output) == starts

    # Other settings in the same folder are refused with one line.
    other = subprocess.run(compare_args(output, ml100k_root, "--num_samples=3"), cwd=tmp_path, env=env(),
                           capture_output=True, text=True, timeout=600)
    assert other.returncode == 2
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "num_samples" in lines[0]


def test_num_samples_zero_runs_the_shipped_defaults_on_every_seed(tmp_path, ml100k_root):
    output = tmp_path / "defaults"
    argv = [a for a in compare_args(output, ml100k_root) if not a.startswith("--num_samples")]
    done = subprocess.run([*argv, "--num_samples=0"], cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (output / "searches").exists()  # no search ran
    for row in ("Plain", "BPR"):
        runs = [json.loads((output / "runs" / f"{row}.seed{s}.json").read_text()) for s in (0, 1)]
        assert [r["seed"] for r in runs] == [0, 1] and all(r["params"] == {} for r in runs)
        assert all(0 <= r["test"]["recall@20"] <= 1 for r in runs)
        assert runs[0]["test"] != runs[1]["test"]  # two seeds, two trainings
    assert "shipped defaults (no search" in (output / "comparison.md").read_text()
