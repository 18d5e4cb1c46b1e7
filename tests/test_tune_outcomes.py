"""How a search ends: each trial's status, the --select rule, Ctrl-C and the --resume command.

The rule and status tests are plain unit tests on hand-made trial tables; the two search tests
run run_hyper.py with a real local Ray (2 CPUs, one trial at a time) on the prepared ml100k
with BPR (about 0.1 s an epoch).
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbole_bifair.tune import (
    COMPLETED,
    ERROR,
    INTERRUPTED,
    NOT_STARTED,
    STOPPED,
    SearchError,
    SelectRule,
    TrialRow,
    parse_select,
    select_trial,
    status_counts,
    trial_status,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUN_HYPER = PROJECT_ROOT / "run_hyper.py"


def row(trial_id: str, recall: float, cv: float, model_file: str | None = "m.pth") -> TrialRow:
    return TrialRow(trial_id, COMPLETED, recall, 1, 1, {}, "", model_file,
                    valid={"recall@20": recall, "pop_cv@20": cv, "pop_min@20": 1 - cv})


# A hand-made trial table: best valid Recall@20 is t2 (0.300); within 2% (>= 0.294): t1, t2, t4.
TABLE = [
    row("t0", 0.280, 0.10),  # the fairest, but 6.7% below the best Recall: out
    row("t1", 0.295, 0.40),
    row("t2", 0.300, 0.50),
    row("t3", 0.299, 0.05, model_file=None),  # no checkpoint: can never be picked
    row("t4", 0.294, 0.30),  # exactly at the 2% edge: in, and the fairest of those in
    row("t5", math.nan, 0.01),  # never evaluated
]


def test_metric_rule_picks_the_best_valid_score():
    assert select_trial(TABLE, parse_select("metric"), "max").trial_id == "t2"
    assert select_trial(TABLE, SelectRule(), "min").trial_id == "t0"


def test_fair_rule_picks_the_lowest_cv_within_the_tolerance():
    assert select_trial(TABLE, parse_select("fair:pop_cv@20:0.02"), "max").trial_id == "t4"
    assert select_trial(TABLE, parse_select("fair:pop_cv@20:0.0"), "max").trial_id == "t2"
    assert select_trial(TABLE, parse_select("fair:pop_cv@20:0.1"), "max").trial_id == "t0"
    # A MIN metric is bigger-is-better: the highest within 2% (t4: 0.7).
    assert select_trial(TABLE, parse_select("fair:pop_min@20:0.02"), "max").trial_id == "t4"
    # A smaller-is-better valid metric: within 2% above the lowest score.
    assert select_trial(TABLE, parse_select("fair:pop_cv@20:0.02"), "min").trial_id == "t0"


def test_fair_rule_needs_the_fairness_metric():
    rows = [TrialRow("a", COMPLETED, 0.3, 1, 1, {}, "", "m.pth", valid={"recall@20": 0.3})]
    with pytest.raises(SearchError, match="pop_cv@20"):
        select_trial(rows, parse_select("fair:pop_cv@20:0.02"), "max")
    with pytest.raises(SearchError, match="no trial finished"):
        select_trial([row("x", 0.3, 0.1, model_file=None)], SelectRule(), "max")


@pytest.mark.parametrize("text", ["fair", "fair:pop_cv@20", "fair:pop_cv:0.02", "fair:pop_cv@20:x",
                                  "fair:pop_cv@20:1.5", "lowest", "fair:pop_cv@20:0.02:1"])
def test_bad_select_values_are_one_line(text):
    with pytest.raises(SearchError, match="--select") as raised:
        parse_select(text)
    assert "\n" not in str(raised.value)


def test_each_status_is_told_apart():
    #            completed, started, errored, stopped_early
    assert trial_status(True, True, False, True) == COMPLETED
    assert trial_status(False, True, True, False) == ERROR
    assert trial_status(False, True, False, True) == STOPPED
    assert trial_status(False, True, False, False) == INTERRUPTED
    assert trial_status(False, False, False, False) == NOT_STARTED
    rows = [TrialRow(str(i), s, 0.1, 1, 1, {}, "", None)
            for i, s in enumerate([COMPLETED, COMPLETED, STOPPED, ERROR, INTERRUPTED, NOT_STARTED])]
    assert status_counts(rows) == "2 completed, 1 early-stopped, 1 errored, 1 interrupted, 1 never started"
    assert status_counts(rows[:2], planned=4) == "2 completed, 2 never started"


# ------------------------------------------------------------------------------------------
# Real searches
# ------------------------------------------------------------------------------------------


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                PYTHONWARNINGS="ignore")


def statuses(run_dir: Path) -> list[str]:
    import csv

    with open(run_dir / "trials.csv", newline="", encoding="utf-8") as handle:
        return [r["status"] for r in csv.DictReader(handle)]


def test_asha_stops_are_told_from_completed_trials(tmp_path, ml100k_root):
    # One at a time: the second learning rate is hopeless, so ASHA stops it at the first rung.
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: [0.01, 1.0e-7]\n", encoding="utf-8")
    done = subprocess.run([
        sys.executable, str(RUN_HYPER), "--model=BPR", f"--space={space}", "--scheduler=asha",
        "--grace_period=1", "--reduction_factor=2", "--max_concurrent=1", "--num_cpus=2", "--verbose=0",
        f"--storage={tmp_path}", "--name=asha", "--epochs=3", f"--data_path={ml100k_root}",
    ], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert statuses(tmp_path / "asha") == [COMPLETED, STOPPED]
    assert "2 trials (1 completed, 1 early-stopped)" in done.stdout


def test_a_failing_trial_is_retried_then_reported_as_errored(tmp_path, ml100k_root):
    # train_batch_size 0 passes the driver (space values are the trials') and fails in the
    # trial's Config check, on every attempt: one start plus --max_failures=1 retry.
    space = tmp_path / "space.yaml"
    space.write_text("train_batch_size: [2048, 0]\n", encoding="utf-8")
    done = subprocess.run([
        sys.executable, str(RUN_HYPER), "--model=BPR", f"--space={space}", "--scheduler=fifo", "--max_failures=1",
        "--num_cpus=2", "--verbose=0", f"--storage={tmp_path}", "--name=fail", "--epochs=1",
        f"--data_path={ml100k_root}",
    ], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert statuses(tmp_path / "fail") == [COMPLETED, ERROR]
    assert "2 trials (1 completed, 1 errored)" in done.stdout and "train_batch_size=2048" in done.stdout
    failed = next((tmp_path / "fail").glob("trial_function_*_1_*"))
    assert len((failed / "trial_starts.txt").read_text().split()) == 2


def test_ctrl_c_prints_the_resume_command_and_tells_unfinished_trials_apart(tmp_path, ml100k_root):
    space = tmp_path / "space.yaml"
    space.write_text("epochs: [2, 40, 3]\n", encoding="utf-8")
    run_dir = tmp_path / "int"
    driver = subprocess.Popen([
        sys.executable, str(RUN_HYPER), "--model=BPR", f"--space={space}", "--scheduler=fifo",
        "--max_concurrent=1", "--num_cpus=2", "--verbose=0", f"--storage={tmp_path}", "--name=int",
        "--stopping_step=100", f"--data_path={ml100k_root}",
    ], cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(list(run_dir.glob("trial_function_*/trial_starts.txt"))) < 2:
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the second trial never started"
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)  # Ctrl-C at the driver
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
    assert driver.returncode == 130, err[-3000:]
    assert "Tuner.restore" not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: 3 trials (1 completed, 1 interrupted, 1 never started)"), last
    # Ray 2.6 creates the third trial only when it can start it: no row yet, counted above.
    found = statuses(run_dir)
    assert found[:2] == [COMPLETED, INTERRUPTED] and set(found[2:]) <= {NOT_STARTED}
    assert not (run_dir / "best_config.yaml").exists()

    # The printed command continues the search to its end.
    command = shlex.split(last.split("continue with: ", 1)[1])
    assert command[:2] == ["python", "run_hyper.py"]
    done = subprocess.run([sys.executable, str(RUN_HYPER), *command[2:], "--verbose=0"], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert statuses(run_dir) == [COMPLETED] * 3
    assert "3 trials (3 completed)" in done.stdout
