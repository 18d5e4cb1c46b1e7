"""Hyper-parameter search with Ray Tune for plugin and stock RecBole models.

    python run_hyper.py --model=BPR --dataset=ml100k --space=properties/hyper/BPR.yaml \
        [--num_samples=N] [--scheduler=asha|fifo] [--search=random|grid|optuna|hyperopt] ...

How a search runs:

- The driver builds the run's Config once (so unknown names and bad keys fail before Ray
  starts), prepares the default dataset if needed, and resolves ``data_path`` and the config
  files to absolute paths.
- Each trial imports :mod:`recbole_bifair` (registering the plugin metrics in that worker),
  trains through :func:`recbole_bifair.quick_start.run` with its own ``checkpoint_dir`` inside
  the trial folder and its own device (``gpu_id`` = the GPU Ray gave it, ``''`` on CPU), and
  reports the validation metrics after every evaluation, so ASHA can stop bad trials early.
  The test split is never reported; selection uses the validation metric only.
- Only the best trial (best validation score) is evaluated on test, from its best checkpoint,
  in a Ray task with the same resources as a trial.
- The run folder ``<storage>/<name>/`` receives ``trials.csv``, ``best_config.yaml`` and
  ``best_test_results.json``; ``--resume`` continues an interrupted search there.

Ray-version differences (2.6 pinned; 2.7+ moved the session API and the trial folders, 2.41+
moved Tune's API to ``ray.tune``; checked on 2.6.3, 2.9.3, 2.40.0 and 2.60.0) are confined to
:func:`report`, :func:`current_trial_dir`, :func:`air_config_classes`, :func:`result_dir` and
:func:`keep_results_in_storage`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recbole_bifair.errors import PluginError
from recbole_bifair.quick_start import finite_json

SETTINGS_FILE = "search_settings.json"
TRIAL_SUMMARY_FILE = "trial_summary.json"
TRIAL_STARTS_FILE = "trial_starts.txt"
CHECKPOINT_FOLDER = "checkpoint_dir"
TRIALS_CSV = "trials.csv"
BEST_CONFIG = "best_config.yaml"
BEST_TEST = "best_test_results.json"
# Keys a trial sets for itself; never copied into best_config.yaml.
PER_TRIAL_KEYS = ("gpu_id", "checkpoint_dir", "show_progress")


class SpaceError(PluginError, ValueError):
    """A search-space file that is missing or malformed."""


class SearchError(PluginError):
    """A search that cannot start, resume or finish (bad options, no usable trial)."""


# --------------------------------------------------------------------------------------------
# Ray version gates
# --------------------------------------------------------------------------------------------


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


def result_dir(result) -> Path:
    """A finished trial's folder from its ``ray.air.Result`` (ray>=2.7 ``Result.path``, the
    trial folder under the storage path; 2.6 ``Result.log_dir``, gone in later releases)."""
    if ray_version() >= (2, 7):
        return Path(result.path)
    return Path(result.log_dir)


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


# --------------------------------------------------------------------------------------------
# Search-space files
# --------------------------------------------------------------------------------------------


def _yaml_loader() -> type:
    """A SafeLoader that reads ``1e-4`` as a float, as RecBole's config loader does."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return Loader


def read_yaml(path: Path) -> Any:
    """Parse a yaml file with RecBole's number rules."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bounds(args: list, log: bool = False, ints: bool = False) -> str | None:
    """Why ``[low, high, (q)]`` is not a valid range, or None."""
    if not all(_is_number(a) for a in args):
        return "bounds must be numbers"
    if ints and not all(_is_int(a) for a in args):
        return "bounds must be integers"
    low, high = args[0], args[1]
    if not low < high:
        return f"lower bound {low} must be below upper bound {high}"
    if log and low <= 0:
        return f"a log range needs a positive lower bound, got {low}"
    if len(args) == 3 and not args[2] > 0:
        return f"step q must be positive, got {args[2]}"
    return None


def _check_normal(args: list) -> str | None:
    if not all(_is_number(a) for a in args):
        return "mean and sd must be numbers"
    if not args[1] > 0:
        return f"sd must be positive, got {args[1]}"
    if len(args) == 3 and not args[2] > 0:
        return f"step q must be positive, got {args[2]}"
    return None


def _check_options(args: list) -> str | None:
    return None if args else "needs at least one option"


# name -> (allowed numbers of arguments (None: any), validator, ray.tune function, usage)
DISTRIBUTIONS: dict[str, tuple[tuple[int, ...] | None, Any, str, str]] = {
    "uniform": ((2,), _check_bounds, "uniform", "[low, high]"),
    "quniform": ((3,), _check_bounds, "quniform", "[low, high, q]"),
    "loguniform": ((2,), lambda a: _check_bounds(a, log=True), "loguniform", "[low, high]"),
    "qloguniform": ((3,), lambda a: _check_bounds(a, log=True), "qloguniform", "[low, high, q]"),
    "randint": ((2,), lambda a: _check_bounds(a, ints=True), "randint", "[low, high) integers"),
    "qrandint": ((3,), lambda a: _check_bounds(a, ints=True), "qrandint", "[low, high, q] integers"),
    "lograndint": ((2,), lambda a: _check_bounds(a, log=True, ints=True), "lograndint", "[low, high) integers"),
    "randn": ((2,), _check_normal, "randn", "[mean, sd]"),
    "qrandn": ((3,), _check_normal, "qrandn", "[mean, sd, q]"),
    "choice": (None, _check_options, "choice", "[option, ...]"),
    "grid_search": (None, _check_options, "grid_search", "[value, ...]"),
}


@dataclass
class SearchSpace:
    """A parsed space file: ``entries`` name -> (distribution, args); ``fixed`` constants."""

    path: str
    entries: dict[str, tuple[str, list]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def is_grid(self) -> bool:
        """True when every tuned entry is a grid (plain lists in the file)."""
        return bool(self.entries) and all(d == "grid_search" for d, _ in self.entries.values())

    def to_ray(self, grid_as_choice: bool = False) -> dict[str, Any]:
        """The Tuner's ``param_space`` (grids become choices for optuna/hyperopt)."""
        from ray import tune

        space: dict[str, Any] = dict(self.fixed)
        for name, (dist, args) in self.entries.items():
            if dist == "grid_search":
                space[name] = tune.choice(args) if grid_as_choice else tune.grid_search(args)
            elif dist == "choice":
                space[name] = tune.choice(args)
            else:
                space[name] = getattr(tune, DISTRIBUTIONS[dist][2])(*args)
        return space


def _parse_entry(path: Path, name: str, value: Any) -> tuple[str, list] | None:
    """``(distribution, args)`` for one entry, None for a fixed value; SpaceError if malformed."""
    where = f"{path}: entry {name!r}"
    if isinstance(value, list):
        value = {"grid_search": value}
    if not isinstance(value, dict):
        if value is None:
            raise SpaceError(f"{where} has no value")
        return None
    if len(value) != 1:
        raise SpaceError(f"{where} must name exactly one distribution, got {sorted(map(str, value))}")
    (dist, args), = value.items()
    if dist == "grid":
        dist = "grid_search"
    if dist not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {dist!r}; known: {', '.join(DISTRIBUTIONS)}")
    arities, check, _, usage = DISTRIBUTIONS[dist]
    if not isinstance(args, list) or (arities is not None and len(args) not in arities):
        raise SpaceError(f"{where}: {dist} takes {usage}, got {args!r}")
    problem = check(args)
    if problem:
        raise SpaceError(f"{where}: {dist} {args!r}: {problem}")
    return dist, args


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space yaml file (see docs/tuning.md for the format)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: search-space file not found")
    try:
        data = read_yaml(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise SpaceError(f"{path}: not valid yaml{line}") from None
    if not isinstance(data, dict) or not data:
        raise SpaceError(f"{path}: a search space must be a non-empty mapping of key: distribution")
    space = SearchSpace(path=str(path.resolve()))
    for name, value in data.items():
        parsed = _parse_entry(path, str(name), value)
        if parsed is None:
            space.fixed[str(name)] = value
        else:
            space.entries[str(name)] = parsed
    if not space.entries:
        raise SpaceError(f"{path}: no entry to tune (every value is fixed)")
    return space


# --------------------------------------------------------------------------------------------
# Settings of a search (made by the driver, saved for --resume, passed to every trial)
# --------------------------------------------------------------------------------------------


@dataclass
class SearchSettings:
    """Everything a trial and a resumed driver need, JSON-serialisable."""

    model: str
    dataset: str
    trainer: str | None
    config_files: list[str]
    overrides: dict[str, Any]
    data_path: str
    space_file: str
    metric: str
    mode: str
    max_evaluations: int
    cpus_per_trial: float
    gpus_per_trial: float
    search: str
    scheduler: str
    num_samples: int
    max_concurrent: int
    max_failures: int
    grace_period: int
    reduction_factor: float
    fixed_from_space: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """Write the settings into the run folder."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SETTINGS_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> SearchSettings:
        """Read the settings a previous run saved in ``folder``."""
        path = folder / SETTINGS_FILE
        if not path.is_file():
            raise SearchError(f"{folder}: no {SETTINGS_FILE} there; nothing to resume (check --storage and --name)")
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def trial_config_dict(self, params: dict[str, Any]) -> dict[str, Any]:
        """The config_dict of one trial, before its per-trial keys: fixed keys, then tuned ones."""
        config = dict(self.overrides)
        if self.trainer:
            config["trainer"] = self.trainer
        config.update(self.fixed_from_space)
        config.update(params)
        config["data_path"] = self.data_path
        return config


def parse_value(text: str) -> Any:
    """A command-line value the way RecBole reads it (Python literal, true/false, else text)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        return {"true": True, "false": False}.get(lowered, text)


def parse_overrides(rest: list[str]) -> dict[str, Any]:
    """``--key=value`` arguments as a dict; anything else is an error."""
    overrides: dict[str, Any] = {}
    for arg in rest:
        if not arg.startswith("--") or "=" not in arg:
            raise SearchError(f"unrecognised argument {arg!r}; config keys are given as --key=value")
        key, value = arg[2:].split("=", 1)
        overrides[key] = parse_value(value)
    return overrides


@contextlib.contextmanager
def command_line(*args: str) -> Iterator[None]:
    """Temporarily make ``sys.argv`` hold only ``args`` (RecBole's Config reads every
    ``--key=value`` in sys.argv: the driver's own options and Ray's worker flags must not leak)."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_bifair", *args]
    try:
        yield
    finally:
        sys.argv = saved


@contextlib.contextmanager
def cuda_visible_devices_kept() -> Iterator[None]:
    """Undo RecBole's write of ``gpu_id`` into CUDA_VISIBLE_DEVICES (Ray must see every GPU)."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def driver_config(model: str, dataset: str, config_files: list[str], config_dict: dict[str, Any]):
    """Build the run's Config in the driver (CPU only, no sys.argv, environment untouched)."""
    from recbole_bifair.quick_start import build_config

    with command_line(), cuda_visible_devices_kept():
        return build_config(model, dataset, config_files or None, {**config_dict, "gpu_id": ""})


def check_space_keys(space: SearchSpace, config) -> list[str]:
    """Tuned keys the run's Config does not know (likely typos); returned as warnings."""
    known = set(config.final_config_dict)
    return [
        f"warning: {space.path}: entry {name!r} is not a known config key of this model/trainer"
        for name in space.entries if name not in known
    ]


def make_settings(args: argparse.Namespace, overrides: dict[str, Any], space: SearchSpace) -> SearchSettings:
    """Check names and keys with a real Config, prepare the data, fix paths: the run's settings."""
    from recbole_bifair.quick_start import ensure_dataset
    from recbole_bifair.registry import get_trainer

    config_files = [str(Path(f).resolve()) for f in (args.config_files or "").split()]
    for path in config_files:
        if not Path(path).is_file():
            raise SearchError(f"{path}: config file not found")
    base = dict(overrides, **({"trainer": args.trainer} if args.trainer else {}))
    config = driver_config(args.model, args.dataset, config_files, {**base, **space.fixed})
    get_trainer(config["MODEL_TYPE"], config["model"], config["trainer"])  # unknown trainer -> error
    ensure_dataset(config)  # once here, not racing in every trial
    for line in check_space_keys(space, config):
        print(line, file=sys.stderr)
    search = resolve_search(args.search, space)
    max_evaluations = max(1, math.ceil(int(config["epochs"]) / max(1, int(config["eval_step"] or 1))))
    return SearchSettings(
        model=config["model"],
        dataset=config["dataset"],
        trainer=args.trainer,
        config_files=config_files,
        overrides=overrides,
        data_path=str(Path(config["data_path"]).parent),
        space_file=space.path,
        metric=str(config["valid_metric"]).lower(),
        mode="max" if config["valid_metric_bigger"] else "min",
        max_evaluations=max_evaluations,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        search=search,
        scheduler=args.scheduler,
        num_samples=args.num_samples or (1 if search == "grid" else 10),
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        fixed_from_space=space.fixed,
    )


def resolve_search(search: str, space: SearchSpace) -> str:
    """The search algorithm: ``grid`` when every entry is a plain list, else ``random``."""
    if search == "auto":
        return "grid" if space.is_grid else "random"
    if search == "grid" and not space.is_grid:
        sampled = [n for n, (d, _) in space.entries.items() if d != "grid_search"]
        raise SpaceError(f"{space.path}: --search=grid needs plain lists; entry {sampled[0]!r} is a distribution")
    return search


# --------------------------------------------------------------------------------------------
# The trial
# --------------------------------------------------------------------------------------------


def visible_gpu_id() -> str:
    """The GPUs Ray gave this worker, as RecBole's ``gpu_id`` (``''`` on CPU)."""
    import ray

    return ",".join(str(g) for g in ray.get_gpu_ids())


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
    summary = {
        "model_file": results["model_file"],
        "best_valid_score": results["best_valid_score"],
        "valid": results["valid"],
        "epochs": len(results["timing"]["epoch_seconds"]),
    }
    (trial_dir / TRIAL_SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")


def evaluate_on_test(model_file: str, run_dir: str) -> dict[str, float]:
    """Evaluate a saved best state on test, on the device Ray gave this task (RecBole's log
    goes to ``run_dir/log``)."""
    import recbole_bifair  # noqa: F401
    from recbole_bifair.quick_start import evaluate_saved

    os.chdir(run_dir)

    # The checkpoint remembers the trial's gpu_id; the command line outranks it.
    with command_line(f"--gpu_id={visible_gpu_id()}"):
        return evaluate_saved(model_file, "test")


# --------------------------------------------------------------------------------------------
# Building and running the Tuner
# --------------------------------------------------------------------------------------------


def make_trainable(settings: SearchSettings):
    """The trial function with its settings and per-trial resources."""
    from ray import tune

    trainable = tune.with_parameters(trial_function, settings=asdict(settings))
    return tune.with_resources(trainable, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})


def make_search_alg(settings: SearchSettings):
    """None for random/grid (Ray's variant generator), else an Optuna or HyperOpt searcher."""
    if settings.search in ("random", "grid"):
        return None
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


def make_scheduler(settings: SearchSettings):
    """ASHA over evaluations (training_iteration) or plain FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=settings.max_evaluations + 1,  # ASHA stops a trial at max_t: let it finish itself
        grace_period=max(1, min(settings.grace_period, settings.max_evaluations)),
        reduction_factor=settings.reduction_factor,
    )


def build_tuner(settings: SearchSettings, space: SearchSpace, storage: Path, name: str, verbose: int):
    """A new Tuner for this search."""
    from ray import tune

    tune_config = tune.TuneConfig(
        metric=settings.metric,
        mode=settings.mode,
        search_alg=make_search_alg(settings),
        scheduler=make_scheduler(settings),
        num_samples=settings.num_samples,
        max_concurrent_trials=settings.max_concurrent or None,
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

    if not tune.Tuner.can_restore(str(run_dir)):
        raise SearchError(f"{run_dir}: no Ray Tune experiment state there; nothing to resume")
    make_search_alg(settings)  # fail clearly if the searcher's package has gone
    return tune.Tuner.restore(str(run_dir), trainable=make_trainable(settings), resume_errored=True)


def init_ray(address: str | None, num_cpus: int | None, cpus_per_trial: float) -> None:
    """Start or join Ray; trials get ``OMP_NUM_THREADS`` = cpus per trial."""
    import ray

    env = {"OMP_NUM_THREADS": str(max(1, int(cpus_per_trial)))}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)


# --------------------------------------------------------------------------------------------
# Results: trials.csv, best_config.yaml, best_test_results.json
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The driver's own options; everything else must be ``--key=value`` config keys."""
    parser = argparse.ArgumentParser(description="Hyper-parameter search with Ray Tune.", allow_abbrev=False)
    parser.add_argument("--model", "-m", help="model name (plugin or RecBole)")
    parser.add_argument("--trainer", "-t", default=None, help="trainer name (default: RecBole's for the model)")
    parser.add_argument("--dataset", "-d", default="ml100k", help="dataset name under data_path")
    parser.add_argument("--space", help="search-space yaml (properties/hyper/<Model>.yaml)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files of fixed keys")
    parser.add_argument("--num_samples", type=int, default=None, help="samples (grid: repeats); default 10, grid 1")
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    parser.add_argument("--search", choices=["auto", "random", "grid", "optuna", "hyperopt"], default="auto",
                        help="auto: grid when every entry is a plain list, else random")
    parser.add_argument("--max_concurrent", type=int, default=0, help="0: as many as resources allow")
    parser.add_argument("--cpus_per_trial", type=float, default=1)
    parser.add_argument("--gpus_per_trial", type=float, default=0)
    parser.add_argument("--max_failures", type=int, default=1, help="retries of a failed trial")
    parser.add_argument("--grace_period", type=int, default=10, help="ASHA: evaluations before a trial can stop")
    parser.add_argument("--reduction_factor", type=float, default=3, help="ASHA reduction factor")
    parser.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:10001")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of a local Ray (no --address)")
    parser.add_argument("--storage", default="ray_results", help="folder holding the run folder")
    parser.add_argument("--name", default=None, help="run folder name (default <model>_<dataset>_<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run --storage/--name")
    parser.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2, 3], help="Ray Tune verbosity")
    return parser.parse_known_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Option combinations that cannot work, as one-line errors."""
    if args.resume and not args.name:
        raise SearchError("--resume needs --name (and the same --storage) of the run to continue")
    if not args.resume and (not args.model or not args.space):
        raise SearchError("--model and --space are required (or --resume with --name)")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise SearchError("--cpus_per_trial must be > 0 and --gpus_per_trial >= 0")
    if args.num_samples is not None and args.num_samples < 1:
        raise SearchError("--num_samples must be at least 1")


def start(args: argparse.Namespace, rest: list[str], storage: Path):
    """Settings, run folder and Tuner of a new search."""
    space = load_space(args.space)
    settings = make_settings(args, parse_overrides(rest), space)
    name = args.name or f"{settings.model}_{settings.dataset}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = storage / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SearchError(f"{run_dir} already exists; pass --resume to continue it, or another --name")
    make_search_alg(settings)  # a missing optuna/hyperopt fails here, before Ray starts
    settings.save(run_dir)
    keep_results_in_storage(storage)
    init_ray(args.address, args.num_cpus, settings.cpus_per_trial)
    return settings, run_dir, build_tuner(settings, space, storage, name, args.verbose)


def resume(args: argparse.Namespace, rest: list[str], storage: Path):
    """Settings, run folder and restored Tuner of an interrupted search."""
    if rest:
        print(f"warning: --resume keeps the saved settings; ignoring {' '.join(rest)}", file=sys.stderr)
    run_dir = storage / args.name
    settings = SearchSettings.load(run_dir)
    keep_results_in_storage(storage)
    init_ray(args.address, args.num_cpus, settings.cpus_per_trial)
    return settings, run_dir, restore_tuner(settings, run_dir)


def main(argv: list[str] | None = None) -> int:
    """``run_hyper.py``: exit 0 with a one-line summary, 2 with a one-line error."""
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    storage = Path(args.storage).expanduser().resolve()
    try:
        check_args(args)
        settings, run_dir, tuner = (resume if args.resume else start)(args, rest, storage)
        result_grid = tuner.fit()
        summary = finish(settings, result_grid, run_dir)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary)
    return 0
