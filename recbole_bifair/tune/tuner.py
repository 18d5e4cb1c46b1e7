"""Building, restoring and running the Ray Tune ``Tuner`` of a search."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from recbole_bifair.tune.ray_compat import can_restore, hide_restore_hint, quiet_output, run_config
from recbole_bifair.tune.settings import SearchError, SearchSettings
from recbole_bifair.tune.space import SearchSpace
from recbole_bifair.tune.trial import trial_function


def make_trainable(settings: SearchSettings):
    """The trial function with its settings and per-trial resources."""
    from ray import tune

    trainable = tune.with_parameters(trial_function, settings=asdict(settings))
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def make_search_alg(settings: SearchSettings):
    """None for random/grid (Ray's variant generator; with ``search_seed`` a seeded one, which
    draws the same configurations on every run), else an Optuna or HyperOpt searcher."""
    if settings.search in ("random", "grid"):
        seed = getattr(settings, "search_seed", None)
        if seed is None:
            return None
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=settings.max_concurrent)
    try:
        if settings.search == "optuna":
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(metric=settings.metric, mode=settings.mode)
        import hyperopt  # noqa: F401
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(metric=settings.metric, mode=settings.mode)
    except ImportError:
        raise SearchError(
            f"--search={settings.search} needs the {settings.search} package: "
            f"pip install {settings.search}  (or pip install 'recbole-bifair[tune]')"
        ) from None


def make_scheduler(settings: SearchSettings, run_dir: Path):
    """ASHA over evaluations (training_iteration), recording whom it stops in ``run_dir``; or
    plain FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    from recbole_bifair.tune.scheduler import RecordingASHA

    if settings.scheduler == "fifo":
        return FIFOScheduler()
    return RecordingASHA(
        run_dir,
        time_attr="training_iteration",
        max_t=settings.max_evaluations + 1,  # ASHA stops a trial at max_t: let it finish itself
        grace_period=max(1, min(settings.grace_period, settings.max_evaluations)),
        reduction_factor=settings.reduction_factor,
    )


def build_tuner(settings: SearchSettings, space: SearchSpace, storage: Path, name: str, verbose: int):
    """A new Tuner for this search."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    search_alg = make_search_alg(settings)
    tune_config = tune.TuneConfig(
        metric=settings.metric,
        mode=settings.mode,
        search_alg=search_alg,
        scheduler=make_scheduler(settings, storage / name),
        num_samples=settings.num_samples,
        # a variant generator given as search_alg holds its own limit (Ray ignores this one)
        max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator) else settings.max_concurrent or None,
    )
    return tune.Tuner(
        make_trainable(settings),
        param_space=space.to_ray(grid_as_choice=settings.search in ("optuna", "hyperopt")),
        tune_config=tune_config,
        run_config=run_config(storage, name, settings.max_failures, verbose),
    )


def restore_tuner(settings: SearchSettings, run_dir: Path):
    """The interrupted Tuner of ``run_dir``: finished trials kept, unfinished/errored ones rerun."""
    from ray import tune

    if not can_restore(run_dir):
        raise SearchError(
            f"{run_dir}: no Ray Tune trial state there (stopped before the first trial started); "
            "nothing to resume: start the search again"
        )
    make_search_alg(settings)  # fail clearly if the searcher's package has gone
    return tune.Tuner.restore(str(run_dir), trainable=make_trainable(settings), resume_errored=True)


class SearchFailed(SearchError):
    """Ray Tune's run itself failed (not one trial: those are retried and reported)."""


def fit(tuner, verbose: int = 1):
    """``tuner.fit()`` with Ray's ``Tuner.restore(...)`` advice kept off the console (the
    project's ``--resume`` command is printed instead), nothing printed by Ray at ``verbose=0``,
    and Ray's failure as one SearchFailed."""
    from ray.tune import TuneError

    hide_restore_hint()
    quiet_output(verbose)
    try:
        return tuner.fit()
    except TuneError as error:
        cause = error.__cause__ or error
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise SearchFailed(f"the Ray Tune run failed: {first_line}") from None


def init_ray(address: str | None, num_cpus: int | None, cpus_per_trial: float) -> None:
    """Join the cluster at ``address``, or start a Ray of this process's own (``address="local"``:
    without it ``ray.init()`` joins any cluster started on this machine with ``ray start``);
    trials get ``OMP_NUM_THREADS`` = cpus per trial."""
    import ray

    env = {"OMP_NUM_THREADS": str(max(1, int(cpus_per_trial)))}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env},
                 log_to_driver=False)  # fmt: skip

