"""Bad inputs end with one clear `error: ...` line (exit 2, no traceback); unsafe files are refused.

Unknown model/trainer/dataset/metric names are covered in test_run_recbole.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from recbole.utils import init_seed

from recbole_bifair.checkpoint import CheckpointError, load_checkpoint, resume_path
from recbole_bifair.data.encode import sidecar_path
from recbole_bifair.errors import NonFiniteLossError
from recbole_bifair.quick_start import build_config, build_data, build_trainer
from recbole_bifair.registry import get_model

TOY_YAML = """USER_ID_FIELD: user_id
ITEM_ID_FIELD: item_id
load_col:
  inter: [user_id, item_id]
  item: [item_id, class]
benchmark_filename: [train, valid, test]
genre_field: class
title_field: movie_title
"""


def copy_dataset(source: Path, root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for path in source.iterdir():
        if path.name.startswith("ml100k.") and path.suffix in (".inter", ".item"):
            shutil.copy(path, folder / path.name.replace("ml100k.", f"{name}.", 1))
    return folder


def rewrite_item_file(item_file: Path, drop: str | None = None, genre: str | None = None) -> None:
    lines = item_file.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    column = next(i for i, h in enumerate(header) if h.startswith("class:"))
    rows = []
    for number, line in enumerate(lines):
        cells = line.split("\t")
        if drop:
            del cells[column]
        elif genre and number:
            cells[column] = genre
        rows.append("\t".join(cells))
    item_file.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def toy_root(ml100k_root, tmp_path_factory):
    """Copies of ml100k with one defect each, and a yaml that loads them."""
    root = tmp_path_factory.mktemp("toys")
    source = ml100k_root / "ml100k"
    (copy_dataset(source, root, "nosplit") / "nosplit.valid.inter").unlink()
    rewrite_item_file(copy_dataset(source, root, "nogenre") / "nogenre.item", drop="class")
    rewrite_item_file(copy_dataset(source, root, "onegenre") / "onegenre.item", genre="Drama")
    (root / "toy.yaml").write_text(TOY_YAML, encoding="utf-8")
    return root


def assert_one_line_error(done, *expected: str) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), done.stderr[-2000:]
    for text in expected:
        assert text in line, line
    return line


def toy_cli(toy_root, dataset, *args, tmp_path):
    return run_cli([f"--dataset={dataset}", f"--data_path={toy_root}", f"--config_files={toy_root / 'toy.yaml'}",
                    "--epochs=1", *args], cwd=tmp_path, timeout=180)


# ----------------------------------------------------------------------------- config keys


def test_misspelled_key_on_the_command_line(ml100k_root, tmp_path):
    done = run_cli(["--model=BPR", "--dataset=ml100k", f"--data_path={ml100k_root}", "--z_learnig_rate=1e-3"],
                   cwd=tmp_path, timeout=120)
    assert_one_line_error(done, "'z_learnig_rate'", "on the command line", "did you mean 'z_learning_rate'")


def test_misspelled_key_in_a_yaml_file(ml100k_root, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("learnig_rate: 0.01\n", encoding="utf-8")
    done = run_cli(["--model=BPR", "--dataset=ml100k", f"--data_path={ml100k_root}", f"--config_files={config}"],
                   cwd=tmp_path, timeout=120)
    assert_one_line_error(done, "'learnig_rate'", "mine.yaml", "did you mean 'learning_rate'")


def test_misspelled_key_check_passes_known_and_unrelated_keys():
    from recbole_bifair.config import check_misspelled_keys, known_config_keys

    known = known_config_keys()
    assert {"z_learning_rate", "learning_rate", "fair_group", "stopping_step", "results_file"} <= known
    check_misspelled_keys({"x": {"z_learning_rate": 1, "my_model_knob": 2}}, known)  # no error


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("--epochs=-1", ["epochs = -1", "on the command line", "an integer >= 1"]),
        ("--num_negatives=0", ["num_negatives = 0", "an integer >= 1"]),
        ("--learning_rate=abc", ["learning_rate = 'abc'", "a number >= 0"]),
        ("--topk=0", ["topk = 0", "an integer >= 1 or a list of them"]),
        ("--train_batch_size=0", ["train_batch_size = 0", "an integer >= 1"]),
        ("--fair_group=size", ["fair_group = 'size'", "one of pop, genre"]),
        ("--min_group_share=1.5", ["min_group_share = 1.5", "a number in [0, 1]"]),
    ],
)
def test_bad_value_of_a_known_key(arg, expected, ml100k_root, tmp_path):
    """Checked before any work: no dataset is read, no model built, nothing trained."""
    done = run_cli(["--model=AlphaRec", "--trainer=BiFair", "--dataset=ml100k", f"--data_path={ml100k_root}", arg],
                   cwd=tmp_path, timeout=120)
    assert_one_line_error(done, *expected)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert not (tmp_path / "saved").exists()


def test_bad_value_in_a_yaml_file_names_the_file(ml100k_root, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("xi: fast\n", encoding="utf-8")
    done = run_cli(["--model=LLMLinear", "--trainer=BiFair", "--dataset=ml100k", f"--data_path={ml100k_root}",
                    f"--config_files={config}"], cwd=tmp_path, timeout=120)
    assert_one_line_error(done, "xi = 'fast'", "mine.yaml", "one of lr or a number >= 0")


def test_every_default_passes_the_value_check():
    """Each plugin yaml and RecBole's yaml (overall and every model) hold allowed values
    (properties/hyper/ holds search spaces, not values)."""
    import recbole
    import yaml
    from recbole.config import Config

    from recbole_bifair.config import PROPERTIES_DIR
    from recbole_bifair.config_check import RULES

    loader = Config._build_yaml_loader(None)
    folders = [PROPERTIES_DIR, Path(recbole.__file__).parent / "properties"]
    refused = [
        f"{path.name}: {key} = {value!r}"
        for folder in folders for path in sorted(folder.rglob("*.yaml")) if path.parent.name != "hyper"
        for key, value in (yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}).items()
        if key in RULES and not RULES[key].accepts(value)
    ]
    assert refused == []


def test_value_rules_on_edge_cases():
    from recbole_bifair.config_check import RULES

    refused = {"epochs": [True, 2.5, "3", 0], "learning_rate": [float("nan"), float("inf"), -1e-3, None],
               "topk": [[], [5, 0], True], "xi": ["LR", -1], "balance_norm": [None, "L2"],
               "show_progress": ["yes", 1], "pop_top_fraction": [0, 1, 1.0]}
    accepted = {"epochs": [1, 500], "learning_rate": [0, 1e-3, 1], "topk": [10, [5, 10, 20]],
                "xi": ["lr", 0, 0.5], "balance_norm": ["loss+"], "show_progress": [None, True, False],
                "pop_top_fraction": [0.1], "hidden_multiplier": ["auto", 0.28], "learner": ["Adam", "adamw"]}
    assert [(k, v) for k, values in refused.items() for v in values if RULES[k].accepts(v)] == []
    assert [(k, v) for k, values in accepted.items() for v in values if not RULES[k].accepts(v)] == []


def test_explicit_zero_and_false_are_kept(ml100k_root):
    """An explicit 0 / False is the user's value, never replaced by a default."""
    from recbole_bifair.quick_start import build_config

    config = build_config("LLMLinear", "ml100k", config_dict={
        "data_path": str(ml100k_root), "trainer": "BiFair", "eval_step": 0, "stopping_step": 0, "xi": 0,
        "min_group_share": 0, "z_learning_rate": 0, "show_progress": False, "progress_log_steps": 0,
    })
    for key in ("eval_step", "stopping_step", "xi", "min_group_share", "z_learning_rate", "progress_log_steps"):
        assert config[key] == 0, key
    assert config["show_progress"] is False


# ----------------------------------------------------------------------------- data


def test_dataset_without_split_files(toy_root, tmp_path):
    done = toy_cli(toy_root, "nosplit", "--model=BPR", tmp_path=tmp_path)
    assert_one_line_error(done, "nosplit.valid.inter", "recbole_bifair.data.protocol")


def test_item_file_without_the_genre_field(toy_root, tmp_path):
    done = toy_cli(toy_root, "nogenre", "--model=BPR", tmp_path=tmp_path)
    assert_one_line_error(done, "nogenre.item has no field 'class'", "genre_field")


def test_item_file_without_the_title_field(toy_root, tmp_path):
    done = toy_cli(toy_root, "nogenre", "--model=LLMLinear", "--trainer=Plain", "--title_field=title",
                   "--metrics=['Recall']", tmp_path=tmp_path)
    assert_one_line_error(done, "nogenre.item has no field 'title'", "title_field")


def test_single_genre_is_an_error_for_training_and_a_warning_for_metrics(toy_root, tmp_path):
    done = toy_cli(toy_root, "onegenre", "--model=LLMLinear", "--trainer=Plain", "--fair_group=genre",
                   "--metrics=['Recall']", tmp_path=tmp_path)
    assert_one_line_error(done, "fair_group: genre needs at least 2 genres", "'class'", "fair_group: pop")
    done = toy_cli(toy_root, "onegenre", "--model=BPR", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "has 1 distinct value(s)" in done.stdout + done.stderr


def test_genre_groups_on_a_dataset_without_genres(toy_root, tmp_path):
    done = toy_cli(toy_root, "onegenre", "--model=LLMLinear", "--trainer=Plain", "--fair_group=genre",
                   "--genre_field=~", "--metrics=['Recall']", tmp_path=tmp_path)
    assert_one_line_error(done, "genre_field", "fair_group: pop")


def test_topk_larger_than_the_item_count(ml100k_root, tmp_path):
    done = run_cli(["--model=BPR", "--dataset=ml100k", f"--data_path={ml100k_root}", "--topk=[5000]"],
                   cwd=tmp_path, timeout=120)
    assert_one_line_error(done, "topk [5000]", "items of dataset 'ml100k'")


def test_embedding_file_with_nan_through_the_command_line(ml100k_root, tmp_path):
    source = ml100k_root / "ml100k" / "ml100k.minilm.npy"
    if not source.is_file():  # built on first use by an LLM model run
        from recbole_bifair.data.encode import ensure_item_embeddings

        ensure_item_embeddings(ml100k_root / "ml100k" / "ml100k.item", source, model="minilm",
                               title_field="movie_title")
    bad = tmp_path / "bad.npy"
    vectors = np.load(source)
    vectors[3, 7] = np.nan
    np.save(bad, vectors)
    shutil.copy(sidecar_path(source), sidecar_path(bad))
    done = run_cli(["--model=LLMLinear", "--trainer=Plain", "--dataset=ml100k", f"--data_path={ml100k_root}",
                    f"--item_embedding_file={bad}", "--epochs=1"], cwd=tmp_path, timeout=180)
    assert_one_line_error(done, str(bad), "NaN/Inf")


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("args", [["--model=BPR"], ["--model=LLMLinear", "--trainer=Plain"]], ids=["stock", "plugin"])
def test_non_finite_loss_names_the_epoch_and_keeps_the_checkpoint(args, ml100k_root, tmp_path):
    # The one-line error through the command line; with lr 1e30 the loss may explode in epoch 0,
    # before any checkpoint (the next test poisons the weights after one, deterministically).
    done = run_cli([*args, "--dataset=ml100k", f"--data_path={ml100k_root}", "--epochs=3",
                    "--learning_rate=1e30", "--metrics=['Recall']", "--num_negatives=16"], cwd=tmp_path, timeout=180)
    line = assert_one_line_error(done, "training loss became", "at epoch", "lower learning_rate")
    if "no checkpoint was written yet" not in line:
        assert ".resume" in line
        kept = sorted((tmp_path / "saved").glob("*.resume"))
        assert kept and load_checkpoint(kept[0])["resume"]


@pytest.mark.parametrize("model_name", ["BPR", "LLMLinear"], ids=["stock", "plugin"])
def test_loss_turning_nan_after_a_checkpoint_keeps_the_last_good_state(model_name, ml100k_root, tmp_path):
    """Deterministic: epoch 0 trains and writes its checkpoints, then the weights are poisoned."""
    settings = {"data_path": str(ml100k_root), "epochs": 3, "eval_step": 1, "metrics": ["Recall"],
                "topk": [20], "valid_metric": "Recall@20", "checkpoint_dir": str(tmp_path), "num_negatives": 16}
    config = build_config(model_name, "ml100k", config_dict=settings)
    init_seed(config["seed"], True)
    _dataset, train_data, valid_data, _test = build_data(config)
    trainer = build_trainer(config, get_model(model_name)(config, train_data._dataset).to(config["device"]))

    def poison(epoch_idx, _valid_score):
        if epoch_idx == 0:
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    parameter.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError) as raised:
        trainer.fit(train_data, valid_data, saved=True, callback_fn=poison)
    message = str(raised.value)
    resume = resume_path(trainer.saved_model_file)
    assert "at epoch 1" in message and f"--resume={resume}" in message and "lower learning_rate" in message
    kept = load_checkpoint(resume)
    assert kept["resume"] and kept["epoch"] == 0
    assert all(torch.isfinite(value).all() for value in kept["state_dict"].values() if value.is_floating_point())


def test_cuda_asked_for_without_cuda_warns_and_runs_on_cpu(ml100k_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    done = run_cli(["--model=BPR", "--dataset=ml100k", f"--data_path={ml100k_root}", "--epochs=1",
                    "--use_gpu=True", "--gpu_id=0"], cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CUDA was asked for" in done.stdout + done.stderr


# ----------------------------------------------------------------------------- safe loading


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_checkpoint_needing_unpickling_is_refused(tmp_path, ml100k_root):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"format": "recbole_bifair/1", "payload": _Evil(str(target))}, evil)
    with pytest.raises(CheckpointError, match="needs arbitrary unpickling") as caught:
        load_checkpoint(evil)
    assert str(evil) in str(caught.value) and not target.exists()
    done = run_cli(["--model=BPR", "--dataset=ml100k", f"--data_path={ml100k_root}", f"--resume={evil}"],
                   cwd=tmp_path, timeout=120)
    assert_one_line_error(done, str(evil), "refused")
    assert not target.exists()


def test_hugging_face_models_load_without_remote_code(monkeypatch):
    from recbole_bifair.data import encode

    seen = {}

    def fake_load(model, device, dtype, trust_remote_code):
        seen["trust_remote_code"] = trust_remote_code
        raise encode.ModelLoadError("stop")

    encode.clear_model_cache()
    monkeypatch.setattr(encode, "_load", fake_load)
    with pytest.raises(encode.ModelLoadError):
        encode.encode_texts(["a"], model="minilm", progress=False)
    assert seen["trust_remote_code"] is False
