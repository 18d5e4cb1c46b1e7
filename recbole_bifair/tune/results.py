"""What a finished search leaves: ``trials.csv``, ``best_config.yaml`` and
``best_test_results.json`` in the run folder, and the one-line summary."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from recbole_bifair.quick_start import finite_json
from recbole_bifair.tune.ray_compat import result_dir
from recbole_bifair.tune.settings import PER_TRIAL_KEYS, SearchError, SearchSettings
from recbole_bifair.tune.space import load_space, read_yaml
from recbole_bifair.tune.trial import CHECKPOINT_FOLDER, TRIAL_SUMMARY_FILE, evaluate_on_test

TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
BEST_TEST = "best_test_results.json"


@dataclass
class TrialRow:
    """One line of trials.csv."""

    trial_id: str
    status: str
    best_valid_score: float
    best_epoch: int | None
    epochs: int
    params: dict[str, Any]
    trial_dir: str
    model_file: str | None


def _plain(value: Any) -> Any:
    """numpy scalars and tuples as plain Python values (for yaml, json and csv)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _latest_checkpoint(trial_dir: Path) -> str | None:
    files = sorted((trial_dir / CHECKPOINT_FOLDER).glob("*.pth"), key=lambda p: p.stat().st_mtime)
    return str(files[-1]) if files else None


def trial_row(result, settings: SearchSettings, tuned: list[str]) -> TrialRow:
    """Summarise one Ray result: best validation score over its reports, epochs, status."""
    trial_dir = result_dir(result)
    frame = result.metrics_dataframe
    scores, epochs_seen = [], []
    if frame is not None and settings.metric in frame:
        scores = [float(s) for s in frame[settings.metric]]
        epochs_seen = [int(e) for e in frame["epoch"]] if "epoch" in frame else list(range(1, len(scores) + 1))
    best_index = None
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if finite:
        pick = max if settings.mode == "max" else min
        best_index = pick(finite, key=lambda i: scores[i])
    summary_path = trial_dir / TRIAL_SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
    status = "COMPLETED" if summary else ("ERROR" if result.error else "STOPPED")
    config = result.config or {}
    return TrialRow(
        trial_id=(result.metrics or {}).get("trial_id") or trial_dir.name,
        status=status,
        best_valid_score=scores[best_index] if best_index is not None else math.nan,
        best_epoch=epochs_seen[best_index] if best_index is not None else None,
        epochs=summary["epochs"] if summary else (max(epochs_seen) if epochs_seen else 0),
        params={name: _plain(config.get(name)) for name in tuned},
        trial_dir=str(trial_dir),
        model_file=summary["model_file"] if summary else _latest_checkpoint(trial_dir),
    )


def write_trials_csv(rows: list[TrialRow], tuned: list[str], path: Path, metric: str) -> None:
    """trials.csv: one line per trial, tuned keys as columns."""
    header = ["trial_id", "status", f"best_valid_{metric}", "best_epoch", "epochs", *tuned, "trial_dir"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([
                row.trial_id, row.status, row.best_valid_score, row.best_epoch, row.epochs,
                *(row.params[name] for name in tuned), row.trial_dir,
            ])


def best_row(rows: list[TrialRow], mode: str) -> TrialRow:
    """The trial with the best validation score that left a checkpoint (first one on ties)."""
    usable = [r for r in rows if r.model_file and math.isfinite(r.best_valid_score)]
    if not usable:
        raise SearchError("no trial finished an evaluation with a saved checkpoint; see the trial folders")
    sign = 1.0 if mode == "max" else -1.0
    return max(usable, key=lambda r: sign * r.best_valid_score)


def best_config(settings: SearchSettings, row: TrialRow) -> dict[str, Any]:
    """The best trial's settings as one yaml mapping: fixed keys (files, command line, space),
    then the tuned ones; per-trial keys (device, checkpoint folder) left out."""
    config: dict[str, Any] = {}
    for path in settings.config_files:
        config.update(read_yaml(Path(path)) or {})
    config.update(settings.trial_config_dict(row.params))
    for key in PER_TRIAL_KEYS:
        config.pop(key, None)
    return _plain(config)


def write_best_config(settings: SearchSettings, row: TrialRow, path: Path) -> None:
    """best_config.yaml, usable as ``run_recbole.py --config_files=best_config.yaml``."""
    command = f"python run_recbole.py --model={settings.model} --dataset={settings.dataset} --config_files={path}"
    header = f"# best trial {row.trial_id}: valid {settings.metric} = {row.best_valid_score:.6f}\n# {command}\n"
    body = yaml.safe_dump(best_config(settings, row), sort_keys=False, default_flow_style=False)
    path.write_text(header + body, encoding="utf-8")


def run_best_on_test(settings: SearchSettings, model_file: str, run_dir: Path) -> dict[str, float]:
    """Evaluate the best checkpoint on test in a Ray task holding a trial's resources."""
    import ray

    task = ray.remote(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial, max_retries=0)
    return ray.get(task(evaluate_on_test).remote(model_file, str(run_dir)))


def finish(settings: SearchSettings, result_grid, run_dir: Path) -> str:
    """Write the three outputs and return the one-line summary."""
    tuned = list(load_space(settings.space_file).entries)
    rows = [trial_row(result, settings, tuned) for result in result_grid]
    rows.sort(key=lambda r: r.trial_id)
    write_trials_csv(rows, tuned, run_dir / TRIALS_CSV, settings.metric)
    best = best_row(rows, settings.mode)
    write_best_config(settings, best, run_dir / BEST_CONFIG)
    test = run_best_on_test(settings, best.model_file, run_dir)
    payload = {
        "model": settings.model, "trainer": settings.trainer, "dataset": settings.dataset,
        "trial_id": best.trial_id, "params": best.params, "valid_metric": settings.metric,
        "best_valid_score": best.best_valid_score, "best_epoch": best.best_epoch,
        "model_file": best.model_file, "test": test,
    }
    (run_dir / BEST_TEST).write_text(json.dumps(finite_json(payload), indent=2), encoding="utf-8")
    counts = ", ".join(f"{sum(r.status == s for r in rows)} {s.lower()}"
                       for s in ("COMPLETED", "STOPPED", "ERROR") if any(r.status == s for r in rows))
    params = " ".join(f"{k}={v}" for k, v in best.params.items())
    return (
        f"best {best.trial_id} ({params}): valid {settings.metric}={best.best_valid_score:.4f}, "
        f"test {settings.metric}={test.get(settings.metric, math.nan):.4f}; "
        f"{len(rows)} trials ({counts}); outputs in {run_dir}"
    )

