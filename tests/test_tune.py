"""Tests for the Ray Tune search (recbole_bifair.tune, run_hyper.py).

The space-file checks are plain unit tests. The search tests run the real driver in a
subprocess with a real local Ray (2 CPUs, 1 CPU and 1 thread per trial) on the prepared ml100k
with BPR for 2 epochs, and read the run folder it leaves.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from recbole_bifair.tune import (
    SearchError,
    SpaceError,
    best_row,
    load_space,
    parse_overrides,
    resolve_search,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUN_HYPER = PROJECT_ROOT / "run_hyper.py"
SHIPPED_SPACES = sorted((PROJECT_ROOT / "properties" / "hyper").glob("*.yaml"))
LOCAL_RAY = ["--num_cpus=2", "--cpus_per_trial=1", "--max_concurrent=2", "--verbose=0"]


def hyper_command(args: list[str]) -> list[str]:
    return [sys.executable, str(RUN_HYPER), *args]


def hyper_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                PYTHONWARNINGS="ignore", **extra)


def run_hyper(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python run_hyper.py ARGS`` to the end."""
    return subprocess.run(hyper_command(args), cwd=cwd, env=hyper_env(), capture_output=True,
                          text=True, timeout=timeout)


def read_trials(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "trials.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_space(folder: Path, text: str, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# Space files (no Ray)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED_SPACES, ids=lambda p: p.name)
def test_shipped_space_files_parse(path):
    space = load_space(path)
    assert "learning_rate" in space.entries
    assert space.entries["learning_rate"][0] == "loguniform"
    assert set(space.to_ray()) == set(space.entries) | set(space.fixed)


def test_shipped_spaces_cover_the_models_and_bifair_keys():
    names = {p.stem for p in SHIPPED_SPACES}
    assert {"AlphaRec", "LLMLinear", "BiFair", "BPR"} <= names
    bifair = load_space(PROJECT_ROOT / "properties" / "hyper" / "BiFair.yaml").entries
    # The keys of properties/trainer/BiFair.yaml: xi = lr (second order) or 0 (first order).
    assert {"learning_rate", "z_learning_rate", "min_group_share", "xi"} <= set(bifair)
    assert bifair["xi"] == ("choice", ["lr", 0])
    low, high = bifair["min_group_share"][1]
    assert 0 <= low < high < 1  # w_n >= share / N keeps the simplex non-empty


def test_space_entries_read_naturally(tmp_path):
    space = load_space(write_space(tmp_path, (
        "learning_rate: {loguniform: [1e-4, 1.0e-2]}\n"
        "n_layers: {choice: [1, 2, 3]}\n"
        "dropout: {uniform: [0.0, 0.5]}\n"
        "size: {randint: [16, 129]}\n"
        "decay: {quniform: [0.0, 0.1, 0.01]}\n"
        "epochs: 3\n"
    )))
    assert space.entries["learning_rate"] == ("loguniform", [1e-4, 1e-2])
    assert space.entries["n_layers"] == ("choice", [1, 2, 3])
    assert space.fixed == {"epochs": 3}
    assert not space.is_grid and resolve_search("auto", space) == "random"
    from ray.tune.search.sample import Categorical, Float, Integer

    ray_space = space.to_ray()
    assert isinstance(ray_space["learning_rate"], Float)
    assert isinstance(ray_space["n_layers"], Categorical)
    assert isinstance(ray_space["size"], Integer)
    assert ray_space["epochs"] == 3


def test_plain_lists_make_a_grid(tmp_path):
    space = load_space(write_space(tmp_path, "learning_rate: [0.001, 0.01]\nembedding_size: [32, 64]\n"))
    assert space.is_grid and resolve_search("auto", space) == "grid"
    assert space.to_ray()["learning_rate"] == {"grid_search": [0.001, 0.01]}
    assert space.to_ray(grid_as_choice=True)["learning_rate"].categories == [0.001, 0.01]


def test_grid_search_refuses_distributions(tmp_path):
    space = load_space(write_space(tmp_path, "a: [1, 2]\nlearning_rate: {uniform: [0.1, 0.2]}\n"))
    with pytest.raises(SpaceError, match="learning_rate"):
        resolve_search("grid", space)


@pytest.mark.parametrize("text, entry, words", [
    ("learning_rate: {logunifrom: [1.0e-4, 1.0e-2]}\n", "learning_rate", "unknown distribution"),
    ("learning_rate: {uniform: [0.1]}\n", "learning_rate", "takes [low, high]"),
    ("learning_rate: {quniform: [0.1, 0.2]}\n", "learning_rate", "takes [low, high, q]"),
    ("learning_rate: {uniform: [0.2, 0.1]}\n", "learning_rate", "must be below"),
    ("learning_rate: {loguniform: [0.0, 0.1]}\n", "learning_rate", "positive lower bound"),
    ("n_layers: {randint: [1.5, 4]}\n", "n_layers", "integers"),
    ("n_layers: {choice: []}\n", "n_layers", "at least one option"),
    ("lr: {uniform: [a, b]}\n", "lr", "numbers"),
    ("lr: {uniform: [0.1, 0.2], choice: [1]}\n", "lr", "exactly one distribution"),
    ("lr:\n", "lr", "no value"),
])
def test_malformed_entries_name_file_and_entry(tmp_path, text, entry, words):
    path = write_space(tmp_path, text)
    with pytest.raises(SpaceError) as raised:
        load_space(path)
    message = str(raised.value)
    assert str(path) in message and repr(entry) in message and words in message
    assert "\n" not in message


@pytest.mark.parametrize("text, words", [
    ("- learning_rate\n- n_layers\n", "non-empty mapping"),
    ("", "non-empty mapping"),
    ("a: [1, 2\n", "not valid yaml"),
    ("epochs: 3\n", "no entry to tune"),
])
def test_malformed_files(tmp_path, text, words):
    path = write_space(tmp_path, text)
    with pytest.raises(SpaceError, match=words):
        load_space(path)


def test_missing_space_file(tmp_path):
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "nope.yaml")


def test_overrides_are_typed_like_recbole():
    assert parse_overrides(["--epochs=2", "--learning_rate=1e-3", "--topk=[10,20]", "--x=true",
                            "--data_path=/tmp/a", "--gpu_id="]) == {
        "epochs": 2, "learning_rate": 1e-3, "topk": [10, 20], "x": True, "data_path": "/tmp/a", "gpu_id": "",
    }
    with pytest.raises(SearchError, match="--key=value"):
        parse_overrides(["--epochs", "2"])


def test_best_row_uses_the_validation_score_and_mode():
    from recbole_bifair.tune import TrialRow

    rows = [TrialRow(f"t{i}", "COMPLETED", s, 1, 2, {}, "", "m.pth") for i, s in enumerate([0.2, 0.3, math.nan])]
    assert best_row(rows, "max").trial_id == "t1"
    assert best_row(rows, "min").trial_id == "t0"
    rows[1].model_file = None  # no checkpoint: cannot be evaluated on test
    assert best_row(rows, "max").trial_id == "t0"


@pytest.mark.parametrize("package", ["optuna", "hyperopt"])
def test_missing_optional_searcher_is_one_clear_line(package):
    import importlib.util

    from recbole_bifair.tune import make_search_alg

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    settings = type("S", (), {"search": package, "metric": "recall@20", "mode": "max"})()
    with pytest.raises(SearchError, match=f"pip install {package}") as raised:
        make_search_alg(settings)
    assert "\n" not in str(raised.value)


def test_malformed_space_on_the_command_line(tmp_path):
    path = write_space(tmp_path, "learning_rate: {loguniform: [1.0e-2, 1.0e-4]}\n")
    done = run_hyper(["--model=BPR", f"--space={path}", f"--storage={tmp_path}"], cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(path) in lines[0] and "'learning_rate'" in lines[0]
    assert not (tmp_path / "BPR_ml100k").exists()


# ------------------------------------------------------------------------------------------
# Real searches (local Ray, 2 CPUs)
# ------------------------------------------------------------------------------------------


def test_search_of_a_stock_model_writes_outputs_and_picks_best_on_valid(tmp_path, ml100k_root):
    space = PROJECT_ROOT / "properties" / "hyper" / "BPR.yaml"
    done = run_hyper([
        "--model=BPR", "--dataset=ml100k", f"--space={space}", "--num_samples=2", "--scheduler=asha",
        f"--storage={tmp_path}", "--name=search", *LOCAL_RAY,
        "--epochs=2", f"--data_path={ml100k_root}",
    ], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "search"
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("best ") and "valid recall@20=" in summary and str(run_dir) in summary

    rows = read_trials(run_dir)
    # ASHA may stop the worse trial at its last evaluation (a rung at 2 evaluations).
    assert len(rows) == 2 and all(r["status"] in ("COMPLETED", "STOPPED") and r["epochs"] == "2" for r in rows)
    scores = {r["trial_id"]: float(r["best_valid_recall@20"]) for r in rows}
    best = json.loads((run_dir / "best_test_results.json").read_text())
    assert best["trial_id"] == max(scores, key=scores.get)
    assert best["best_valid_score"] == pytest.approx(max(scores.values()))
    assert best["valid_metric"] == "recall@20" and 0 <= best["test"]["recall@20"] <= 1
    assert {"ndcg@20", "pop_cv@20"} <= set(best["test"])
    # Each trial trained in its own checkpoint folder; the best state is the file tested.
    assert Path(best["model_file"]).parent.name == "checkpoint_dir"
    assert Path(best["model_file"]).parent.parent.name.startswith(f"trial_function_{best['trial_id']}")
    assert Path(best["model_file"]).parent.parent.parent == run_dir  # not a Ray staging copy (ray>=2.7)

    config = yaml.load((run_dir / "best_config.yaml").read_text(), Loader=yaml.SafeLoader)
    best_row_csv = next(r for r in rows if r["trial_id"] == best["trial_id"])
    assert config["learning_rate"] == pytest.approx(float(best_row_csv["learning_rate"]))
    assert config["embedding_size"] == int(best_row_csv["embedding_size"])
    assert config["epochs"] == 2 and config["data_path"] == str(ml100k_root)
    assert "gpu_id" not in config and "checkpoint_dir" not in config

    # best_config.yaml is accepted by the plugin's Config (what run_recbole.py --config_files uses).
    from recbole_bifair.config import BiFairConfig
    from recbole_bifair.tune import command_line, cuda_visible_devices_kept

    with command_line(), cuda_visible_devices_kept():
        loaded = BiFairConfig("BPR", "ml100k", [str(run_dir / "best_config.yaml")], {"gpu_id": ""})
    assert loaded["learning_rate"] == pytest.approx(config["learning_rate"])
    assert loaded["epochs"] == 2


def _experiment_state_has_terminated_trial(run_dir: Path) -> bool:
    for path in glob.glob(str(run_dir / "experiment_state-*.json")):
        try:
            if "TERMINATED" in Path(path).read_text(encoding="utf-8"):
                return True
        except OSError:
            continue
    return False


def _trial_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("trial_function_*") if p.is_dir())


def _started_trials(run_dir: Path) -> int:
    return sum((d / "trial_starts.txt").is_file() for d in _trial_dirs(run_dir))


def test_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path, ml100k_root):
    # Two grid points run one at a time; the second trains longer, so the driver can be killed
    # while it runs, right after the first is recorded as finished.
    space = write_space(tmp_path, "epochs: [2, 40]\n")
    args = [
        "--model=BPR", "--dataset=ml100k", f"--space={space}", "--scheduler=fifo", "--max_concurrent=1",
        f"--storage={tmp_path}", "--name=resumable", "--num_cpus=2", "--cpus_per_trial=1", "--verbose=0",
        "--stopping_step=100", f"--data_path={ml100k_root}",
    ]
    run_dir = tmp_path / "resumable"
    driver = subprocess.Popen(hyper_command(args), cwd=tmp_path, env=hyper_env(TUNE_GLOBAL_CHECKPOINT_S="0"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        # Also wait for the second trial to start: newer Ray (seen on 2.60) records the first
        # trial as TERMINATED a few seconds before it starts the next one, which Ray 2.6 did not.
        while not (_experiment_state_has_terminated_trial(run_dir) and _started_trials(run_dir) == 2):
            assert driver.poll() is None, f"driver ended early: {driver.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    assert not (run_dir / "trials.csv").exists()
    first, second = _trial_dirs(run_dir)
    assert (first / "trial_summary.json").is_file() and not (second / "trial_summary.json").exists()
    first_results = (first / "result.json").read_bytes()

    done = run_hyper(["--resume", "--name=resumable", f"--storage={tmp_path}", "--num_cpus=2", "--verbose=0"],
                     cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _trial_dirs(run_dir) == [first, second]
    assert (first / "result.json").read_bytes() == first_results  # the finished trial was not rerun
    assert len((first / "trial_starts.txt").read_text().split()) == 1
    assert len((second / "trial_starts.txt").read_text().split()) == 2
    rows = read_trials(run_dir)
    assert sorted((r["epochs"], r["status"]) for r in rows) == [("2", "COMPLETED"), ("40", "COMPLETED")]
    for name in ("best_config.yaml", "best_test_results.json"):
        assert (run_dir / name).is_file()
