"""Ray-version gates: every place where the Tune API differs between Ray releases.

Ray 2.6 is pinned (RecBole 1.2.1 declares ``ray<=2.6.3``); 2.7+ moved the session API and the
trial folders, 2.41+ moved Tune's API to ``ray.tune``. Checked on 2.6.3, 2.9.3, 2.40.0 and
2.60.0. Nothing outside this module asks which Ray is installed.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any


def ray_version() -> tuple[int, int]:
    """``(major, minor)`` of the installed Ray."""
    import ray

    major, minor = (int(part) for part in re.findall(r"\d+", ray.__version__)[:2])
    return major, minor


def report(metrics: dict[str, Any]) -> None:
    """Report one result from inside a trial.

    ray>=2.41 ``ray.tune.report`` (``ray.train.report`` in a Tune trial warns, then errors
    once Train V2 is the default); 2.7-2.40 ``ray.train.report``; 2.6 ``ray.air.session``.
    """
    if ray_version() >= (2, 41):
        from ray import tune

        tune.report(metrics)
    elif ray_version() >= (2, 7):
        from ray import train

        train.report(metrics)
    else:
        from ray.air import session

        session.report(metrics)


def current_trial_dir() -> Path:
    """The running trial's folder in the run folder (``<storage>/<name>/<trial>``).

    ray>=2.7 stages a trial's files in a local copy (``~/ray_results`` in 2.7-2.9, under
    ``/tmp/ray/session_*`` from 2.10) that ``get_trial_dir()`` returns and Ray syncs to the
    storage path: files written there would leave ``model_file`` pointing outside the run
    folder, and a resumed trial would start from an empty copy. So from 2.7 the trial writes
    straight into its folder on storage (``trial_fs_path``, a local path: ``run_config``
    always gets a local folder), made here as Ray may not have made it yet (2.9 does not).
    The context is ``ray.tune.get_context`` from 2.41, ``ray.train.get_context`` in 2.7-2.40;
    2.6 has no staging (``ray.air.session``).
    """
    if ray_version() >= (2, 7):
        if ray_version() >= (2, 41):
            from ray.tune import get_context
        else:
            from ray.train import get_context

        trial_dir = Path(get_context().get_storage().trial_fs_path)
        trial_dir.mkdir(parents=True, exist_ok=True)
        return trial_dir
    from ray.air import session

    return Path(session.get_trial_dir())


def air_config_classes() -> tuple[type, type]:
    """``(RunConfig, FailureConfig)`` from where this Ray version keeps them for Tune.

    ray>=2.41 ``ray.tune`` (``ray.train.RunConfig`` became Train V2's, which refuses Tune-only
    options such as ``verbose``); 2.7-2.40 ``ray.train``; 2.6 ``ray.air``.
    """
    if ray_version() >= (2, 41):
        from ray.tune import FailureConfig, RunConfig
    elif ray_version() >= (2, 7):
        from ray.train import FailureConfig, RunConfig
    else:
        from ray.air import FailureConfig, RunConfig
    return RunConfig, FailureConfig


def keep_results_in_storage(storage: Path) -> None:
    """ray 2.7-2.9 keep a local copy of every run in ``~/ray_results/<name>`` and sync it to
    the storage path, so an earlier run of the same name (in any storage) leaks its trials into
    this one. Making the storage folder that local cache turns the copy off, as in 2.6. From
    2.10 the copy is a per-session staging folder under ``/tmp/ray/session_*`` instead."""
    if (2, 7) <= ray_version() < (2, 10):
        os.environ["RAY_AIR_LOCAL_CACHE_DIR"] = str(storage)


def result_dir(result) -> Path | None:
    """A trial's folder from its ``ray.air.Result`` (ray>=2.7 ``Result.path``, the trial folder
    under the storage path; 2.6 ``Result.log_dir``, gone in later releases); None for a trial
    that never started (Ray 2.6 gives it no folder)."""
    folder = result.path if ray_version() >= (2, 7) else result.log_dir
    return Path(folder) if folder else None


def trial_ids(result_grid) -> list[str | None]:
    """The trial id of each result of ``result_grid``, in its order (None where unknown).

    A trial that never reported has no ``trial_id`` in its ``Result.metrics`` (and in 2.6 no
    folder); ``ResultGrid`` builds its results from the trials of the ``ExperimentAnalysis``
    it keeps, in that order (2.6 to 2.60), and those know their ids.
    """
    trials = getattr(getattr(result_grid, "_experiment_analysis", None), "trials", None)
    if trials is None or len(trials) != len(result_grid):
        return [None] * len(result_grid)
    return [str(trial.trial_id) for trial in trials]


def can_restore(run_dir: Path) -> bool:
    """Ray left a restorable experiment in ``run_dir``: ``Tuner.can_restore`` (the Tuner's own
    file) and the trials' state (``experiment_state-*.json``, written from the first trial's
    start on, in every version checked). A run killed between the two has no trial to
    restore: ``Tuner.restore`` would start over, without the original ``param_space``."""
    from ray import tune

    return tune.Tuner.can_restore(str(run_dir)) and any(run_dir.glob("experiment_state-*.json"))


def quiet_output(verbose: int) -> None:
    """At ``verbose=0`` print nothing: Ray 2.6-2.9's new output engine (the default there) still
    prints an experiment header box; its legacy engine (``RAY_AIR_NEW_OUTPUT=0``) prints nothing
    at verbosity 0. Later releases ignore the variable. A value the user set is kept."""
    if verbose == 0:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


class _NoRestoreHint(logging.Filter):
    """Drops Ray's own "resume with ``Tuner.restore(...)``" advice (the project's ``--resume``
    command is printed instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Tuner.restore" in message or "Resume experiment with" in message)


def hide_restore_hint() -> None:
    """Keep Ray's ``Tuner.restore`` hint (logged by ``ray.tune`` after Ctrl-C or a failed run)
    off the console: the filter sits on the handlers of the ``ray`` and root loggers, which
    every ``ray.tune.*`` record passes through, whatever module logs it in this Ray version."""
    for logger in (logging.getLogger("ray"), logging.getLogger()):
        for handler in logger.handlers:
            if not any(isinstance(f, _NoRestoreHint) for f in handler.filters):
                handler.addFilter(_NoRestoreHint())


def run_config(storage: Path, name: str, max_failures: int, verbose: int):
    """The Tuner's RunConfig: run folder ``storage/name``, retries, trial output to files."""
    run_config_class, failure_config_class = air_config_classes()
    where = {"storage_path": str(storage)} if ray_version() >= (2, 6) else {"local_dir": str(storage)}
    return run_config_class(
        name=name,
        failure_config=failure_config_class(max_failures=max_failures),
        log_to_file=True,
        verbose=verbose,
        **where,
    )

