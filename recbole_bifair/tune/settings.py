"""The settings of a search: made once by the driver from the command line and a real Config,
saved in the run folder for ``--resume``, and handed to every trial."""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recbole_bifair.errors import PluginError
from recbole_bifair.tune.space import SearchSpace, resolve_search

SETTINGS_FILE = "search_settings.json"
# Keys a trial sets for itself; never copied into best_config.yaml.
PER_TRIAL_KEYS = ("gpu_id", "checkpoint_dir", "show_progress")


class SearchError(PluginError):
    """A search that cannot start, resume or finish (bad options, no usable trial)."""


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
    select: str = "metric"  # the --select rule (tune/selection.py)
    record_test: bool = False  # trials keep their test metrics (run_compare.py's seed runs only)
    search_seed: int | None = None  # seeds the random/grid variant generator (same configs every run)

    def save(self, folder: Path) -> None:
        """Write the settings into the run folder (atomically)."""
        from recbole_bifair.data.atomic import atomic_write

        with atomic_write(folder / SETTINGS_FILE) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

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
    from recbole_bifair.tune.selection import check_select_metric, parse_select

    select = getattr(args, "select", "metric")
    rule = parse_select(select)

    config_files = [str(Path(f).resolve()) for f in (args.config_files or "").split()]
    for path in config_files:
        if not Path(path).is_file():
            raise SearchError(f"{path}: config file not found")
    base = dict(overrides, **({"trainer": args.trainer} if args.trainer else {}))
    config = driver_config(args.model, args.dataset, config_files, {**base, **space.fixed})
    get_trainer(config["MODEL_TYPE"], config["model"], config["trainer"])  # unknown trainer -> error
    check_select_metric(rule, config)
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
        select=select,
        search_seed=getattr(args, "search_seed", None),
    )

