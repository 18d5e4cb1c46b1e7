"""What a search leaves: ``trials.csv``, ``best_config.yaml`` and ``best_test_results.json`` in
the run folder (each written atomically), and the one-line summary.

Each trial gets one status in trials.csv and the summary:

- ``COMPLETED``: it trained to its end (its summary file exists);
- ``STOPPED``: the scheduler (ASHA) stopped it early, from its validation reports (ASHA writes
  the ids it stops into ``early_stopped.txt``: tune/scheduler.py);
- ``ERROR``: it failed (after ``--max_failures`` retries); ``--resume`` runs it again;
- ``INTERRUPTED``: it was running when the search was interrupted (Ctrl-C, a lost driver);
- ``NOT_STARTED``: the search was interrupted before it started.

An interrupted search writes trials.csv and raises :class:`SearchInterrupted` instead of
picking a trial.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recbole_bifair.data.atomic import atomic_write
from recbole_bifair.quick_start import finite_json
from recbole_bifair.tune.ray_compat import result_dir, trial_ids
from recbole_bifair.tune.selection import SelectRule, parse_select, select_trial
from recbole_bifair.tune.settings import PER_TRIAL_KEYS, SearchError, SearchSettings
from recbole_bifair.tune.space import load_space, read_yaml
from recbole_bifair.tune.trial import (
    CHECKPOINT_FOLDER,
    TRIAL_STARTS_FILE,
    TRIAL_SUMMARY_FILE,
    evaluate_on_test,
)

TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
BEST_TEST = "best_test_results.json"
EARLY_STOPPED_FILE = "early_stopped.txt"

COMPLETED, STOPPED, ERROR, INTERRUPTED, NOT_STARTED = (
    "COMPLETED", "STOPPED", "ERROR", "INTERRUPTED", "NOT_STARTED",
)  # fmt: skip
#: Status -> the word the summary line uses, in the summary's order.
STATUS_WORDS = {
    COMPLETED: "completed", STOPPED: "early-stopped", ERROR: "errored",
    INTERRUPTED: "interrupted", NOT_STARTED: "never started",
}  # fmt: skip


class SearchInterrupted(SearchError):
    """The search ended before every trial did (Ctrl-C or a lost driver); the message counts
    the trials by status. Nothing is selected; ``--resume`` continues the search."""


@dataclass
class TrialRow:
    """One line of trials.csv; ``valid`` holds every valid metric at the best evaluation."""

    trial_id: str
    status: str
    best_valid_score: float
    best_epoch: int | None
    epochs: int
    params: dict[str, Any]
    trial_dir: str
    model_file: str | None
    valid: dict[str, float] = field(default_factory=dict)


def trial_status(completed: bool, started: bool, errored: bool, stopped_early: bool) -> str:
    """One trial's status from its files (summary, start marker), its error and ASHA's record."""
    if completed:
        return COMPLETED
    if errored:
        return ERROR
    if stopped_early:
        return STOPPED
    return INTERRUPTED if started else NOT_STARTED


def early_stopped(run_dir: Path) -> set[str]:
    """The ids of the trials ASHA stopped in the search of ``run_dir``."""
    path = run_dir / EARLY_STOPPED_FILE
    return set(path.read_text(encoding="utf-8").split()) if path.is_file() else set()


def status_counts(rows: list[TrialRow], planned: int = 0) -> str:
    """``5 completed, 3 early-stopped``: the trials counted by status; trials Ray had not yet
    created (``planned`` minus the rows) count as never started."""
    counts = {status: sum(r.status == status for r in rows) for status in STATUS_WORDS}
    counts[NOT_STARTED] += max(0, planned - len(rows))
    return ", ".join(f"{counts[status]} {word}" for status, word in STATUS_WORDS.items() if counts[status])


def planned_trials(settings: SearchSettings, space) -> int:
    """How many trials the search makes: ``num_samples`` per grid point (optuna/hyperopt
    sample grid axes as choices: ``num_samples``)."""
    grid = 1
    if settings.search in ("random", "grid"):
        for dist, args in space.entries.values():
            grid *= len(args) if dist == "grid_search" else 1
    return settings.num_samples * grid


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


def read_trial_summary(trial_dir: Path | None) -> dict[str, Any] | None:
    """The summary a completed trial left in its folder, or None."""
    path = trial_dir / TRIAL_SUMMARY_FILE if trial_dir else None
    return json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else None


def trial_row(result, settings: SearchSettings, tuned: list[str], stopped: set[str] = frozenset(),
              ray_id: str | None = None) -> TrialRow:
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
    valid = {}
    if best_index is not None:
        valid = {str(c): float(frame[c].iloc[best_index]) for c in frame.columns if "@" in str(c)}
    summary = read_trial_summary(trial_dir)
    started = bool(trial_dir) and (trial_dir / TRIAL_STARTS_FILE).is_file()
    config = result.config or {}
    trial_id = (result.metrics or {}).get("trial_id") or ray_id or (trial_dir.name if trial_dir else "?")
    return TrialRow(
        trial_id=trial_id,
        status=trial_status(summary is not None, started, result.error is not None, trial_id in stopped),
        best_valid_score=scores[best_index] if best_index is not None else math.nan,
        best_epoch=epochs_seen[best_index] if best_index is not None else None,
        epochs=summary["epochs"] if summary else (max(epochs_seen) if epochs_seen else 0),
        params={name: _plain(config.get(name)) for name in tuned},
        trial_dir=str(trial_dir) if trial_dir else "",
        model_file=summary["model_file"] if summary else (_latest_checkpoint(trial_dir) if trial_dir else None),
        valid=valid,
    )


def collect_rows(settings: SearchSettings, result_grid, tuned: list[str], run_dir: Path) -> list[TrialRow]:
    """Every trial of ``result_grid`` as a row, sorted by trial id."""
    stopped = early_stopped(run_dir)
    rows = [trial_row(result, settings, tuned, stopped, ray_id)
            for result, ray_id in zip(result_grid, trial_ids(result_grid), strict=True)]  # fmt: skip
    return sorted(rows, key=lambda r: r.trial_id)


def write_trials_csv(rows: list[TrialRow], tuned: list[str], path: Path, metric: str,
                     extra_metrics: tuple[str, ...] = ()) -> None:
    """trials.csv: one line per trial, tuned keys as columns (``extra_metrics``: more valid
    metrics at the best evaluation, e.g. the fairness metric of ``--select=fair:...``)."""
    header = ["trial_id", "status", f"best_valid_{metric}", "best_epoch", "epochs",
              *(f"valid_{name}" for name in extra_metrics), *tuned, "trial_dir"]  # fmt: skip
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([
                row.trial_id, row.status, row.best_valid_score, row.best_epoch, row.epochs,
                *(row.valid.get(name, math.nan) for name in extra_metrics),
                *(row.params[name] for name in tuned), row.trial_dir,
            ])


def best_row(rows: list[TrialRow], mode: str) -> TrialRow:
    """The trial with the best validation score that left a checkpoint (first one on ties)."""
    return select_trial(rows, SelectRule(), mode)


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
    with atomic_write(path) as tmp:
        tmp.write_text(header + body, encoding="utf-8")


def write_json(payload: dict[str, Any], path: Path) -> None:
    """A JSON file written atomically (non-finite numbers become null)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(finite_json(_plain(payload)), indent=2), encoding="utf-8")


def run_best_on_test(settings: SearchSettings, model_file: str, run_dir: Path) -> dict[str, float]:
    """Evaluate the best checkpoint on test in a Ray task holding a trial's resources."""
    import ray

    task = ray.remote(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial, max_retries=0)
    return ray.get(task(evaluate_on_test).remote(model_file, str(run_dir)))


def finish(settings: SearchSettings, result_grid, run_dir: Path) -> str:
    """Write trials.csv; unless the search was interrupted (:class:`SearchInterrupted`), pick a
    trial by ``settings.select``, write best_config.yaml and best_test_results.json, and return
    the one-line summary."""
    space = load_space(settings.space_file)
    tuned = list(space.entries)
    rule = parse_select(settings.select)
    rows = collect_rows(settings, result_grid, tuned, run_dir)
    extra = (rule.fair_metric,) if rule.fair_metric else ()
    write_trials_csv(rows, tuned, run_dir / TRIALS_CSV, settings.metric, extra)
    planned = max(planned_trials(settings, space), len(rows))
    if planned > len(rows) or any(r.status in (INTERRUPTED, NOT_STARTED) for r in rows):
        raise SearchInterrupted(f"{planned} trials ({status_counts(rows, planned)}); trials.csv in {run_dir}")
    best = select_trial(rows, rule, settings.mode)
    write_best_config(settings, best, run_dir / BEST_CONFIG)
    test = run_best_on_test(settings, best.model_file, run_dir)
    write_json({
        "model": settings.model, "trainer": settings.trainer, "dataset": settings.dataset,
        "trial_id": best.trial_id, "params": best.params, "valid_metric": settings.metric,
        "select": rule.describe(settings.metric), "best_valid_score": best.best_valid_score,
        "best_epoch": best.best_epoch, "valid": best.valid, "model_file": best.model_file, "test": test,
    }, run_dir / BEST_TEST)  # fmt: skip
    params = " ".join(f"{k}={v}" for k, v in best.params.items())
    picked = f" [{rule.describe(settings.metric)}: valid {rule.fair_metric}={best.valid[rule.fair_metric]:.4f}]" if rule.fair_metric else ""
    return (
        f"best {best.trial_id} ({params}): valid {settings.metric}={best.best_valid_score:.4f}{picked}, "
        f"test {settings.metric}={test.get(settings.metric, math.nan):.4f}; "
        f"{len(rows)} trials ({status_counts(rows)}); outputs in {run_dir}"
    )
