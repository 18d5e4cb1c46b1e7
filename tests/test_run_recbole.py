"""End to end through run_recbole.py: stock models, fairness keys, reload, one-line errors."""

import json
import math

import pytest
from helpers import run_cli, train_and_read

FAIRNESS_KEYS = ("pop_cv@20", "pop_min@20", "genre_cv@20", "genre_min@20")
OVERALL_KEYS = ("recall@20", "ndcg@20", "hit@20")


@pytest.fixture(scope="module")
def lightgcn_run(ml100k_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lightgcn")
    results = train_and_read(
        ["--model=LightGCN", "--dataset=ml100k", f"--data_path={ml100k_root}", "--epochs=2",
         "--learning_rate=0.01"],
        tmp,
    )
    return results


def assert_complete(results, model):
    assert results["model"] == model
    assert results["dataset"] == "ml100k"
    for split in ("valid", "test"):
        for key in OVERALL_KEYS + FAIRNESS_KEYS:
            assert key in results[split], (split, key)
            assert math.isfinite(results[split][key]), (split, key, results[split][key])
    assert set(results["per_group"]) == {"pop@20", "genre@20"}
    assert set(results["per_group"]["pop@20"]) == {"popular", "unpopular"}
    assert len(results["timing"]["epoch_seconds"]) == 2
    assert results["timing"]["eval_seconds_mean"] > 0


def test_lightgcn_reports_every_key(lightgcn_run):
    assert_complete(lightgcn_run, "LightGCN")
    assert lightgcn_run["trainer"] == "Trainer"
    test = lightgcn_run["test"]
    # per_group is the data behind CV/MIN: recompute the headline figures from it.
    pop = list(lightgcn_run["per_group"]["pop@20"].values())
    mean = sum(pop) / 2
    std = math.sqrt(sum((v - mean) ** 2 for v in pop) / 2)
    assert test["pop_cv@20"] == pytest.approx(std / mean, abs=1e-5)
    assert test["pop_min@20"] == pytest.approx(min(pop), abs=1e-5)
    genre = sorted(lightgcn_run["per_group"]["genre@20"].values())
    quarter = max(1, len(genre) // 4)
    assert test["genre_min@20"] == pytest.approx(sum(genre[:quarter]) / quarter, abs=1e-5)


def test_reload_reproduces_test_metrics(lightgcn_run):
    from recbole_bifair.quick_start import evaluate_saved

    reproduced = evaluate_saved(lightgcn_run["model_file"])
    for key, value in lightgcn_run["test"].items():
        assert reproduced[key] == pytest.approx(value, abs=1e-6), key


def test_bpr_with_stock_item_metrics(ml100k_root, tmp_path):
    """Stock ItemCoverage/GiniIndex/AveragePopularity/TailPercentage crash in 1.2.1's collector."""
    results = train_and_read(
        ["--model=BPR", "--dataset=ml100k", f"--data_path={ml100k_root}", "--epochs=2",
         "--metrics=['Recall','NDCG','Hit','Pop_CV','Pop_MIN','Genre_CV','Genre_MIN',"
         "'ItemCoverage','GiniIndex','AveragePopularity','TailPercentage','Pop_CV_NDCG','Genre_MIN_Hit']"],
        tmp_path,
    )
    assert_complete(results, "BPR")
    for key in ("itemcoverage@20", "giniindex@20", "averagepopularity@20", "tailpercentage@20",
                "pop_cv_ndcg@20", "genre_min_hit@20"):
        assert math.isfinite(results["test"][key]), key
    assert 0 < results["test"]["itemcoverage@20"] <= 1


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model=NoSuchModel", "--dataset=ml100k"], "unknown model 'NoSuchModel'"),
        (["--model=BPR", "--trainer=NoSuchTrainer", "--dataset=ml100k"], "unknown trainer 'NoSuchTrainer'"),
        (["--model=BPR", "--dataset=no_such_data"], "unknown dataset 'no_such_data'"),
        (["--model=BPR", "--dataset=ml100k", "--metrics=['Recall','NoSuchMetric']"], "unknown metric 'NoSuchMetric'"),
    ],
)
def test_unknown_names_give_one_line(args, expected, ml100k_root, tmp_path):
    done = run_cli([*args, f"--data_path={ml100k_root}"], cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Available" in lines[0]
    assert "Traceback" not in done.stderr


def test_unknown_dataset_lists_each_dataset_once(ml100k_root, tmp_path):
    done = run_cli(["--model=BPR", "--dataset=no_such_data", f"--data_path={ml100k_root}"], cwd=tmp_path, timeout=120)
    line = done.stderr.strip().splitlines()[-1]
    names = [name.split(" (")[0] for name in line.split("Available datasets: ")[1].split(", ")]
    assert "ml100k" in names and len(names) == len(set(names)), line


@pytest.mark.parametrize("name", ["games", "movies", "books"])
def test_paper_dataset_before_preparation_names_the_commands(name, tmp_path):
    done = run_cli(["--model=BPR", f"--dataset={name}", f"--data_path={tmp_path}"], cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: dataset '{name}' is not prepared"), done.stderr
    assert f"python -m recbole_bifair.data.amazon --category {name} --input DUMP_DIR" in lines[0]
    assert f"python -m recbole_bifair.data.protocol --input dataset_atomic/{name}_raw --name {name}" in lines[0]


@pytest.fixture(scope="module")
def llm_default_run(ml100k_root, tmp_path_factory):
    """LLMLinear without --trainer, one epoch, progress lines every 2 batches (stderr is a pipe)."""
    tmp = tmp_path_factory.mktemp("llm_default")
    results = tmp / "results.json"
    done = run_cli(["--model=LLMLinear", "--dataset=ml100k", f"--data_path={ml100k_root}", "--epochs=1",
                    "--progress_log_steps=2", "--progress_log_seconds=0", f"--results_file={results}"],
                   cwd=tmp, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(results.read_text()), done.stderr


def test_llm_models_train_with_plain_by_default(llm_default_run):
    results, log = llm_default_run
    assert results["trainer"] == "Plain"
    assert "trainer = Plain" in log


def test_recbole_trainer_still_chosen_by_name(ml100k_root, tmp_path):
    results = train_and_read(["--model=LLMLinear", "--trainer=Trainer", "--dataset=ml100k",
                              f"--data_path={ml100k_root}", "--epochs=1", "--metrics=['Recall']"], tmp_path)
    assert results["trainer"] == "Trainer"


def test_log_shows_progress_and_what_the_run_uses(llm_default_run):
    _results, log = llm_default_run
    assert "train: batch 2/" in log and "s left" in log
    assert "'fixed files': ['ml100k.train.inter', 'ml100k.valid.inter', 'ml100k.test.inter']" in log
    assert "'RS'" not in log
    device = next(line for line in log.splitlines() if line.startswith("device = "))
    assert ("use_gpu = True" in log) == (device == "device = cuda")
    # RecBole's pandas and GradScaler deprecations are hidden on the command line
    assert "FutureWarning" not in log, [line for line in log.splitlines() if "Warning" in line]
