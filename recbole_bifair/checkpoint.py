"""Checkpoints that load with ``torch.load(weights_only=True)``.

RecBole 1.2.1 pickles its Config object into every checkpoint, so on torch >= 2.6 (where
``weights_only=True`` is the default) loading the best model fails, and the only switch,
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, turns arbitrary-pickle loading on for the whole process.
The plugin stores plain data instead: state dicts, tensors, numbers, and the config as a JSON
string. Files are written to a temporary file and renamed, so a kill during a save never leaves
a corrupt checkpoint. A file that needs arbitrary unpickling is refused with a clear error.
"""

from __future__ import annotations

import enum
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_bifair.data.atomic import atomic_write
from recbole_bifair.errors import PluginError

CHECKPOINT_FORMAT = "recbole_bifair/1"
_NUMPY_MARK = "__numpy__"
RESUME_SUFFIX = ".resume"


class CheckpointError(PluginError):
    """A checkpoint that is missing, corrupt, or not loadable safely."""


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def config_to_json(config) -> str:
    """The settings needed to rebuild ``config``: model, dataset, trainer and the user's keys.

    The user's keys (files, dict, command line) are stored, not RecBole's derived ones, so that
    a reload layers the yaml defaults the same way. ``data_path`` is stored resolved.
    """
    external = dict(config.external_config_dict)
    external["data_path"] = str(Path(config["data_path"]).parent)
    external.pop("model", None)
    external.pop("dataset", None)
    payload = {
        "model": config["model"],
        "dataset": config["dataset"],
        "external": _json_safe(external),
        "final": _json_safe(config.final_config_dict),
    }
    return json.dumps(payload)


def _to_safe(other: dict | None) -> dict | None:
    """``other_parameter`` with numpy arrays turned into tensors (marked for the way back)."""
    if other is None:
        return None
    safe = {}
    for key, value in other.items():
        if isinstance(value, np.ndarray):
            safe[f"{_NUMPY_MARK}{key}"] = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, (torch.Tensor, int, float, str, bool)) or value is None:
            safe[key] = value
        else:
            raise CheckpointError(
                f"model attribute {key!r} of type {type(value).__name__} cannot be saved safely; "
                "store it as a tensor or numpy array"
            )
    return safe


def _from_safe(other: dict | None) -> dict | None:
    if other is None:
        return None
    return {
        (key[len(_NUMPY_MARK):] if key.startswith(_NUMPY_MARK) else key):
        (value.numpy() if key.startswith(_NUMPY_MARK) else value)
        for key, value in other.items()
    }


def save_checkpoint(path: str | Path, config, model, **state: Any) -> None:
    """Write a checkpoint (model state, config as JSON, and any plain ``state``) atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config_to_json(config),
        "state_dict": model.state_dict(),
        "other_parameter": _to_safe(model.other_parameter()),
        **state,
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; refuse anything that needs unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused, it needs arbitrary unpickling (not a recbole_bifair checkpoint, or "
            f"tampered with): {str(error).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error}); retrain or use another file") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    checkpoint["other_parameter"] = _from_safe(checkpoint.get("other_parameter"))
    checkpoint["config"] = json.loads(checkpoint["config"])
    return checkpoint


def restore_model(model, checkpoint: dict) -> None:
    """Load a checkpoint's model state (and RecBole's ``other_parameter``) into ``model``."""
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))


def resume_path(model_file: str | Path) -> Path:
    """The resume checkpoint written next to the best-model file ``model_file``."""
    return Path(f"{model_file}{RESUME_SUFFIX}")


def rng_state() -> dict:
    """Python ``random``, numpy, torch CPU (and CUDA) generator states as weights_only-safe data."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
