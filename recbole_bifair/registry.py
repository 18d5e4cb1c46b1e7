"""Model and trainer lookup: the plugin's classes first, then RecBole's.

RecBole's ``get_model`` only searches ``recbole.model.*`` and ``get_trainer`` only
``recbole.trainer``, so a plugin class can never be found by name through them. Plugin classes
register themselves with :func:`register_model` / :func:`register_trainer`; lookups are
case-insensitive for plugin names, and an unknown name raises :class:`UnknownNameError`
listing every available name. A plugin class may not share a name with a RecBole class
(RecBole would silently pick up its yaml, trainer and dataloader for that name): the first
lookup checks every registered name and raises ``ValueError`` for one that shadows RecBole's.

This module is a leaf: it holds the two tables, the decorators and the lookups, and imports
none of the plugin's modules. ``recbole_bifair/__init__.py`` imports the model and trainer
packages, whose decorators fill the tables, so any ``import recbole_bifair...`` has them.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import lru_cache

import recbole.model
import recbole.trainer
import torch
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_bifair.errors import UnknownNameError

PLUGIN_MODELS: dict[str, type] = {}
PLUGIN_TRAINERS: dict[str, type] = {}
# Registered names not yet checked against RecBole's (the check scans RecBole's model
# modules, about a second: done at the first lookup, not at import).
_UNCHECKED: list[tuple[str, str]] = []


@lru_cache(maxsize=1)
def recbole_model_names() -> frozenset[str]:
    """Names of every model class RecBole ships (searched the way its get_model does).

    Importing ``recbole.model.sequential_recommender`` runs ``sine.py``, which switches on
    ``torch.autograd.set_detect_anomaly(True)`` for the whole process (training then runs
    several times slower); the previous setting is restored afterwards.
    """
    anomaly_mode = torch.is_anomaly_enabled()
    try:
        return _scan_recbole_models()
    finally:
        torch.autograd.set_detect_anomaly(anomaly_mode)


def _scan_recbole_models() -> frozenset[str]:
    names = set()
    for package in pkgutil.iter_modules(recbole.model.__path__):
        if not package.ispkg or not package.name.endswith("_recommender"):
            continue
        try:
            module = importlib.import_module(f"recbole.model.{package.name}")
        except ImportError:
            continue
        for sub in pkgutil.iter_modules(module.__path__):
            try:
                submodule = importlib.import_module(f"recbole.model.{package.name}.{sub.name}")
            except ImportError:  # optional back-ends (lightgbm, xgboost) that are not installed
                continue
            for name, obj in inspect.getmembers(submodule, inspect.isclass):
                if obj.__module__ == submodule.__name__ and hasattr(obj, "calculate_loss"):
                    names.add(name)
    return frozenset(names)


def recbole_trainer_names() -> frozenset[str]:
    """Names of RecBole's trainer classes, without the ``Trainer`` suffix where it has one."""
    names = set()
    for name, obj in inspect.getmembers(recbole.trainer, inspect.isclass):
        if name.endswith("Trainer") and obj.__module__.startswith("recbole.trainer"):
            names.add(name[: -len("Trainer")] or name)
    return frozenset(names)


def check_registered_names() -> None:
    """Raise ``ValueError`` for a registered plugin name that RecBole also uses."""
    while _UNCHECKED:
        kind, name = _UNCHECKED[0]
        taken = recbole_model_names() if kind == "model" else recbole_trainer_names()
        if name in taken:
            raise ValueError(f"plugin {kind} {name!r} would shadow RecBole's {kind} of that name")
        _UNCHECKED.pop(0)


def register_model(cls: type) -> type:
    """Class decorator: make ``cls`` findable by :func:`get_model`."""
    PLUGIN_MODELS[cls.__name__] = cls
    _UNCHECKED.append(("model", cls.__name__))
    return cls


def register_trainer(cls: type) -> type:
    """Class decorator: make ``cls`` findable by :func:`get_trainer` (``BiFairTrainer`` -> ``BiFair``)."""
    name = cls.__name__.removesuffix("Trainer")
    PLUGIN_TRAINERS[name] = cls
    _UNCHECKED.append(("trainer", name))
    return cls


def _lookup(table: dict[str, type], name: str) -> type | None:
    if name in table:
        return table[name]
    folded = {key.lower(): value for key, value in table.items()}
    return folded.get(name.lower())


def available_models() -> list[str]:
    """Every model name: the plugin's and RecBole's."""
    check_registered_names()
    return sorted(set(PLUGIN_MODELS) | recbole_model_names())


def available_trainers() -> list[str]:
    """Every trainer name: the plugin's and RecBole's (without the ``Trainer`` suffix)."""
    check_registered_names()
    return sorted(set(PLUGIN_TRAINERS) | recbole_trainer_names())


def get_model(name: str | type) -> type:
    """The model class called ``name``: plugin first, then RecBole."""
    if isinstance(name, type):
        return name
    check_registered_names()
    found = _lookup(PLUGIN_MODELS, name)
    if found is not None:
        return found
    if name in recbole_model_names():
        return recbole_get_model(name)
    raise UnknownNameError("model", name, available_models())


def get_trainer(model_type, model_name: str, trainer_name: str | None = None) -> type:
    """The trainer class: ``trainer_name`` if given (plugin first, then RecBole), else RecBole's
    default for the model (``<Model>Trainer`` if it exists, else by model type)."""
    check_registered_names()
    if not trainer_name:
        return recbole_get_trainer(model_type, model_name)
    found = _lookup(PLUGIN_TRAINERS, trainer_name)
    if found is not None:
        return found
    for candidate in (trainer_name, f"{trainer_name}Trainer"):
        obj = getattr(recbole.trainer, candidate, None)
        if inspect.isclass(obj):
            return obj
    raise UnknownNameError("trainer", trainer_name, available_trainers())

