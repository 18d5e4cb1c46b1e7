"""``run`` and ``load_data_and_model`` for plugin and stock RecBole models alike.

RecBole's own quick start resolves models and trainers by name through ``recbole.utils`` and
so can never run a plugin class; these mirror it with the plugin's Config, registry, fair
evaluation and safe checkpoints.
"""

from __future__ import annotations

import json
import math
from logging import getLogger
from pathlib import Path
from time import perf_counter
from typing import Any

from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed

from recbole_bifair.checkpoint import load_checkpoint, restore_model
from recbole_bifair.config import BiFairConfig, cuda_fallback_warning, trainer_name
from recbole_bifair.data.atomic import atomic_write
from recbole_bifair.errors import ConfigKeyError, DataError, UnknownNameError
from recbole_bifair.progress import log_progress
from recbole_bifair.registry import get_model, get_trainer
from recbole_bifair.trainer.fair_evaluation import with_fair_evaluation

DEFAULT_DATASET = "ml100k"


# The paper's Amazon datasets, which a fresh clone does not hold: how to make each from the
# public review dumps (README, "The paper's datasets from the Amazon review dumps"). The
# committed properties/dataset/games.yaml describes the shared games subset, hence --overwrite.
PROTOCOL_OPTIONS = {"games": "--tau 0.2 --overwrite", "movies": "--tau 0.15", "books": "--tau 0.15"}


def prepare_commands(name: str) -> str:
    """The two commands that turn a downloaded Amazon dump into the prepared dataset ``name``."""
    return (
        f"`python -m recbole_bifair.data.amazon --category {name} --input DUMP_DIR --output "
        f"dataset_atomic/{name}_raw` then `python -m recbole_bifair.data.protocol --input "
        f"dataset_atomic/{name}_raw --name {name} {PROTOCOL_OPTIONS[name]}`"
    )


def check_dataset(config) -> None:
    """Refuse a dataset that is neither prepared under data_path nor the embedded default.

    The paper's Amazon datasets (games, movies, books) get the commands that prepare them from
    the public review dumps; any other name gets the list of prepared datasets.
    """
    folder = Path(config["data_path"])
    name = config["dataset"]
    if folder.is_dir() or name == DEFAULT_DATASET:
        return
    if name in PROTOCOL_OPTIONS:
        raise DataError(
            f"dataset {name!r} is not prepared under {folder.parent}; download its Amazon review "
            f"dump into DUMP_DIR (README: the paper's datasets) and run {prepare_commands(name)}"
        )
    root = folder.parent
    prepared = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    available = prepared if DEFAULT_DATASET in prepared else [*prepared, f"{DEFAULT_DATASET} (prepared on first use)"]
    raise UnknownNameError("dataset", name, available)


def ensure_dataset(config) -> None:
    """Prepare the embedded default dataset on first use."""
    folder = Path(config["data_path"])
    check_dataset(config)
    if folder.is_dir():
        return
    from recbole_bifair.data.protocol import ML100K_OPTIONS, ProtocolOptions, prepare_ml100k, report

    prepared = prepare_ml100k(folder.parent, DEFAULT_DATASET)
    getLogger().info("prepared the default dataset\n" + report(prepared, ProtocolOptions(**ML100K_OPTIONS)))


def _item_fields(item_file: Path) -> set[str]:
    with item_file.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    return {column.split(":")[0] for column in header}


def check_dataset_files(config) -> None:
    """One-line errors for missing split files and item fields the run needs (before RecBole reads them)."""
    folder, name = Path(config["data_path"]), config["dataset"]
    parts = config["benchmark_filename"]
    expected = [f"{name}.{part}.inter" for part in parts] if parts else [f"{name}.inter"]
    missing = [file for file in expected if not (folder / file).is_file()]
    if missing:
        raise DataError(
            f"{folder}: dataset {name!r} lacks {', '.join(missing)} (benchmark_filename: {parts}); "
            f"prepare it with `python -m recbole_bifair.data.protocol --input RAW_DIR --name {name}` "
            "or fix benchmark_filename"
        )
    item_file = folder / f"{name}.item"
    fields = _item_fields(item_file) if item_file.is_file() else set()
    genre_field = config["genre_field"]
    needs_genre = config["fair_group"] == "genre" or any(
        str(metric).lower().startswith("genre_") for metric in config["metrics"]
    )
    if needs_genre and genre_field and genre_field not in fields:
        where = f"{item_file} has no field {genre_field!r}" if item_file.is_file() else f"{item_file} is missing"
        raise DataError(
            f"{where} (genre_field, needed by fair_group: genre or the Genre_* metrics); fix "
            "genre_field in the dataset yaml, or use fair_group: pop and drop the Genre_* metrics"
        )
    title_field = config["title_field"]
    if callable(getattr(get_model(config["model"]), "prepare_inputs", None)) and title_field and \
            title_field not in fields and not config["item_embedding_file"]:
        where = f"{item_file} has no field {title_field!r}" if item_file.is_file() else f"{item_file} is missing"
        raise DataError(
            f"{where} (title_field, the item text the LLM encodes); set title_field to one of its "
            f"fields ({', '.join(sorted(fields)) or 'none'}) or give item_embedding_file"
        )


def check_topk(config, dataset) -> None:
    """``topk`` cannot exceed the number of items (RecBole fails deep in torch.topk)."""
    n_items = dataset.item_num - 1  # internal id 0 is padding
    too_big = [k for k in config["topk"] if k > n_items]
    if too_big:
        raise ConfigKeyError(
            f"topk {too_big} exceeds the {n_items} items of dataset {config['dataset']!r}; "
            f"use a topk of at most {n_items}"
        )


def prepare_model_inputs(config, dataset) -> None:
    """Build what a model needs beyond the dataset (e.g. the stage-I item embeddings)."""
    model_class = get_model(config["model"])
    prepare = getattr(model_class, "prepare_inputs", None)
    if callable(prepare):
        prepare(config, dataset)


def build_config(model: str, dataset: str, config_file_list=None, config_dict=None) -> BiFairConfig:
    """The Config, with the trainer name and dataset checked before any work is done."""
    config = BiFairConfig(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    get_trainer(config["MODEL_TYPE"], config["model"], config["trainer"])
    check_dataset(config)
    return config


def build_data(config):
    """Dataset and the train/valid/test dataloaders (preparing the default dataset if needed)."""
    ensure_dataset(config)
    check_dataset_files(config)
    dataset = create_dataset(config)
    check_topk(config, dataset)
    prepare_model_inputs(config, dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def build_trainer(config, model):
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"], config["trainer"])
    return with_fair_evaluation(trainer_class)(config, model)


def _flat(result) -> dict[str, float]:
    return {str(key): float(value) for key, value in (result or {}).items()}


def run(
    model: str,
    dataset: str = DEFAULT_DATASET,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
    saved: bool = True,
    results_file: str | Path | None = None,
    resume: str | Path | None = None,
    callback_fn=None,
    evaluation_hooks: list | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset``, select on valid, test the best state; return the results.

    The results dict holds ``model``, ``trainer``, ``dataset``, ``seed``, ``best_valid_score``,
    ``valid`` and ``test`` (flat metric dicts), ``per_group`` (test group utilities),
    ``timing`` (seconds per epoch, per evaluation, total) and ``model_file``.
    ``evaluation_hooks`` are called as ``hook(epoch_idx, valid_result)`` after each validation.
    """
    start = perf_counter()
    config = build_config(model, dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    cuda_warning = cuda_fallback_warning(config)
    if cuda_warning:
        logger.warning(cuda_warning)
    data, train_data, valid_data, test_data = build_data(config)
    logger.info(data)
    if not config["show_progress"]:  # no bars (stderr is not a terminal): log lines instead
        for loader, label in ((train_data, "train"), (valid_data, "valid"), (test_data, "test")):
            log_progress(loader, label, config["progress_log_steps"], config["progress_log_seconds"])
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(net)
    trainer = build_trainer(config, net)
    trainer.evaluation_hooks.extend(evaluation_hooks or [])
    if resume:
        trainer.resume_checkpoint(resume)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"], callback_fn=callback_fn
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    eval_seconds = trainer.eval_seconds
    results = {
        "model": config["model"],
        "trainer": trainer_name(type(trainer)),
        "dataset": config["dataset"],
        "seed": config["seed"],
        "best_valid_score": float(best_valid_score),
        "valid": _flat(best_valid_result),
        "test": _flat(test_result),
        "per_group": trainer.per_group_utilities(),
        "timing": {
            "epoch_seconds": trainer.epoch_seconds,
            "eval_seconds": eval_seconds,
            "eval_seconds_mean": sum(eval_seconds) / len(eval_seconds) if eval_seconds else math.nan,
            "total_seconds": perf_counter() - start,
        },
        "model_file": str(Path(trainer.saved_model_file).resolve()) if saved else None,
    }
    logger.info("test result: " + json.dumps(results["test"]))
    selection = getattr(trainer, "fair_selection", None)
    if selection is not None and saved and selection.chosen() is not None:
        chosen = selection.chosen()
        fair_test = trainer.evaluate(test_data, load_best_model=True, model_file=chosen.path)
        results["fair_selection"] = {
            "rule": f"lowest valid {selection.metric} within {selection.tolerance:.0%} of the best valid score",
            "epoch": chosen.epoch, "valid": _flat(chosen.valid), "test": _flat(fair_test),
            "model_file": str(Path(chosen.path).resolve()),
        }
        logger.info("fair-selection test result: " + json.dumps(results["fair_selection"]["test"]))
    if results_file:
        write_results(results, results_file)
    return results


def finite_json(value: Any) -> Any:
    """``value`` with NaN/inf floats turned into None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


def write_results(results: dict, path: str | Path) -> None:
    """Write the results JSON atomically (non-finite numbers become null)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(finite_json(results), indent=2), encoding="utf-8")


def load_data_and_model(model_file: str | Path):
    """Rebuild config, dataset, dataloaders and the trained model from a plugin checkpoint.

    Returns ``(config, model, dataset, train_data, valid_data, test_data)`` like RecBole's.
    """
    checkpoint = load_checkpoint(model_file)
    saved = checkpoint["config"]
    config = build_config(saved["model"], saved["dataset"], config_dict=saved["external"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset, train_data, valid_data, test_data = build_data(config)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    restore_model(model, checkpoint)
    return config, model, dataset, train_data, valid_data, test_data


def evaluate_saved(model_file: str | Path, split: str = "test") -> dict[str, float]:
    """Reload a checkpoint and evaluate it on ``split`` (test or valid) with the plugin's metrics."""
    config, model, _dataset, train_data, valid_data, test_data = load_data_and_model(model_file)
    trainer = build_trainer(config, model)
    trainer.load_best_state(model_file)
    trainer.eval_collector.data_collect(train_data)
    data = test_data if split == "test" else valid_data
    return _flat(trainer.evaluate(data, load_best_model=False))
