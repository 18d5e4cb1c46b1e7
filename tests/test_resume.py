"""Kill a training with SIGKILL, resume it with --resume, and get the uninterrupted run's metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import PROJECT_ROOT, run_cli, train_and_read

from recbole_bifair.checkpoint import load_checkpoint


def start_and_kill(args: list[str], cwd, after_epoch: int, timeout: float = 300):
    """Run run_recbole.py ARGS; SIGKILL it once its resume file holds ``after_epoch``; return the file."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "run_recbole.py"), *args],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()[-2000:]}"
            resume_files = list((cwd / "saved").glob("*.resume")) if (cwd / "saved").is_dir() else []
            if resume_files and load_checkpoint(resume_files[0])["epoch"] >= after_epoch:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return resume_files[0]
            time.sleep(0.02)
        pytest.fail("no resume checkpoint in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "args, epochs",
    [
        (["--model=LightGCN", "--learning_rate=0.01"], 8),
        (["--model=LLMLinear", "--trainer=BiFair", "--num_negatives=16"], 3),
    ],
    ids=["LightGCN", "LLMLinear-BiFair"],
)
def test_killed_run_resumes_to_the_same_metrics(args, epochs, ml100k_root, tmp_path):
    common = [*args, "--dataset=ml100k", f"--data_path={ml100k_root}", f"--epochs={epochs}", "--seed=7"]
    (tmp_path / "whole").mkdir()
    whole = train_and_read(common, tmp_path / "whole")

    (tmp_path / "killed").mkdir()
    resume_file = start_and_kill(common, tmp_path / "killed", after_epoch=0)
    state = load_checkpoint(resume_file)
    assert state["resume"] and 0 <= state["epoch"] < epochs - 1
    assert {"optimizer", "rng", "train_generator", "best_model_file", "best_valid_result"} <= set(state)
    if "BiFair" in " ".join(args):
        assert {"schedulers", "z_optimizer", "global_step"} <= set(state)
        assert "item_table" in state["state_dict"]

    resumed_results = tmp_path / "killed" / "results.json"
    done = run_cli([*common, f"--resume={resume_file}", f"--results_file={resumed_results}"],
                   cwd=tmp_path / "killed")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resumed = json.loads(resumed_results.read_text())
    assert len(resumed["timing"]["epoch_seconds"]) == len(whole["timing"]["epoch_seconds"])
    assert resumed["best_valid_score"] == pytest.approx(whole["best_valid_score"], abs=1e-6)
    assert resumed["test"].keys() == whole["test"].keys()
    for key, value in whole["test"].items():
        assert resumed["test"][key] == pytest.approx(value, abs=1e-6), key
    assert resumed["model_file"] == str(resume_file.with_suffix("").resolve())
