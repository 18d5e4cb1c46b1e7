"""One trial, run inside a Ray worker: train one configuration through
:func:`recbole_bifair.quick_start.run`, report the validation metrics after every evaluation
(never the test split), and leave a summary file; plus the best checkpoint's test evaluation.

The summary (``trial_summary.json``, written atomically when the trial has trained to its end)
holds ``model_file``, ``best_valid_score``, ``valid``, ``epochs``, ``seconds_per_epoch`` and
``node_id`` (the Ray node the trial ran on);
``test`` and ``per_group`` only when the settings ask for them (``record_test``: the seed runs
of ``run_compare.py``, whose configuration was already chosen on valid)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from recbole_bifair.data.atomic import atomic_write
from recbole_bifair.quick_start import finite_json
from recbole_bifair.tune.ray_compat import current_trial_dir, report
from recbole_bifair.tune.settings import SearchError, SearchSettings, command_line

TRIAL_SUMMARY_FILE = "trial_summary.json"
TRIAL_STARTS_FILE = "trial_starts.txt"
CHECKPOINT_FOLDER = "checkpoint_dir"


def visible_gpu_id() -> str:
    """The GPUs Ray gave this worker, as RecBole's ``gpu_id`` (``''`` on CPU)."""
    import ray

    return ",".join(str(g) for g in ray.get_gpu_ids())


def node_id() -> str:
    """The id of the Ray node this worker runs on (hex)."""
    import ray

    return str(ray.get_runtime_context().get_node_id())


def set_threads(cpus: float) -> None:
    """One OpenMP/torch thread per CPU the trial holds."""
    threads = str(max(1, int(cpus)))
    os.environ["OMP_NUM_THREADS"] = threads
    import torch

    torch.set_num_threads(int(threads))


def fresh_checkpoint_dir(trial_dir: Path) -> Path:
    """``<trial_dir>/checkpoint_dir``, emptied (a retried trial starts clean)."""
    folder = trial_dir / CHECKPOINT_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def validation_reporter(metric: str):
    """An evaluation hook that reports the validation metrics (and the epoch) to Ray Tune."""

    def hook(epoch_idx: int, valid_result: dict) -> None:
        metrics = {str(k).lower(): float(v) for k, v in (valid_result or {}).items()}
        metrics["epoch"] = int(epoch_idx) + 1
        if metric not in metrics:
            raise SearchError(f"validation result has no {metric!r}; got {sorted(metrics)}")
        report(metrics)

    return hook


def trial_function(params: dict[str, Any], settings: dict[str, Any]) -> None:
    """Train one configuration; report valid metrics per evaluation; leave a summary file.

    The test split's result from ``run`` is discarded: it is never reported or written.
    """
    search = SearchSettings(**settings)
    set_threads(search.cpus_per_trial)
    import recbole_bifair  # noqa: F401  (registers the plugin metrics in this worker)
    from recbole_bifair.quick_start import run

    trial_dir = current_trial_dir()
    os.chdir(trial_dir)  # RecBole writes log/ and log_tensorboard/ under the cwd
    with open(trial_dir / TRIAL_STARTS_FILE, "a", encoding="utf-8") as starts:
        starts.write(f"{time.time():.3f}\n")
    config_dict = search.trial_config_dict(params)
    config_dict.update(
        checkpoint_dir=str(fresh_checkpoint_dir(trial_dir)), gpu_id=visible_gpu_id(), show_progress=False
    )
    with command_line():
        results = run(
            search.model, search.dataset, config_file_list=search.config_files or None,
            config_dict=config_dict, saved=True, evaluation_hooks=[validation_reporter(search.metric)],
        )
    epoch_seconds = results["timing"]["epoch_seconds"]
    summary = {
        "model_file": results["model_file"],
        "best_valid_score": results["best_valid_score"],
        "valid": results["valid"],
        "epochs": len(epoch_seconds),
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        "node_id": node_id(),
    }
    if search.record_test:
        summary.update(test=results["test"], per_group=results["per_group"])
    with atomic_write(trial_dir / TRIAL_SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps(finite_json(summary), indent=2), encoding="utf-8")


def evaluate_on_test(model_file: str, run_dir: str) -> dict[str, float]:
    """Evaluate a saved best state on test, on the device Ray gave this task (RecBole's log
    goes to ``run_dir/log``)."""
    import recbole_bifair  # noqa: F401
    from recbole_bifair.quick_start import evaluate_saved

    os.chdir(run_dir)

    # The checkpoint remembers the trial's gpu_id; the command line outranks it.
    with command_line(f"--gpu_id={visible_gpu_id()}"):
        return evaluate_saved(model_file, "test")

