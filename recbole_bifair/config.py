"""The plugin's Config: RecBole's, with the plugin's yaml files layered at the internal level.

Order, lowest priority first (each later layer overrides the earlier ones):

1. RecBole's own ``overall.yaml``, ``model/<Model>.yaml``, ``dataset/<dataset>.yaml``;
2. the plugin's ``properties/overall.yaml``, ``properties/model/<Model>.yaml``,
   ``properties/trainer/<Trainer>.yaml``, ``properties/dataset/<dataset>.yaml``;
3. the user's yaml files (``config_file_list``), then ``config_dict``, then the command line.

So user settings always win, as in RecBole-GNN's pattern. Models are resolved through the
plugin registry (plugin first, then RecBole). Without a ``trainer`` the plugin's LLM models
train with ``Plain`` (see :func:`default_trainer`), every other model with RecBole's choice,
and ``config["trainer"]`` names it either way.
A relative ``data_path`` is taken from the current folder when it exists there, else from the
project root, and is made absolute so that Ray workers and reloaded checkpoints find the same
files. After the Config is built every value is checked (:mod:`recbole_bifair.config_check`),
and the dump shows what the run uses: the fixed split files instead of RecBole's unused
``eval_args.split`` default, ``use_gpu`` as the device actually chosen, and
``show_progress: ~`` resolved (bars when stderr is a terminal).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from functools import cache
from pathlib import Path

import recbole
from recbole.config import Config

from recbole_bifair import registry
from recbole_bifair.config_check import check_config_values
from recbole_bifair.errors import ConfigKeyError, UnknownNameError
from recbole_bifair.evaluator.registration import known_metric_names, register_metrics

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROPERTIES_DIR = PROJECT_ROOT / "properties"


def plugin_yaml_files(model: str, trainer: str | None, dataset: str) -> list[Path]:
    """The plugin's yaml layers for this run, lowest priority first (existing files only)."""
    candidates = [
        PROPERTIES_DIR / "overall.yaml",
        PROPERTIES_DIR / "model" / f"{model}.yaml",
        PROPERTIES_DIR / "trainer" / f"{trainer}.yaml" if trainer else None,
        PROPERTIES_DIR / "dataset" / f"{dataset}.yaml",
    ]
    return [path for path in candidates if path is not None and path.is_file()]


def default_trainer(model_class: type) -> str | None:
    """The trainer a model runs with when none is named.

    ``Plain`` for the plugin's LLM models (their InfoNCE loss with AdamW and polynomial LR
    decay, the "AlphaRec"/"Linear" rows of the paper's tables): RecBole's ``Trainer`` would sum
    the loss over batches and never decay the learning rate. ``None`` (RecBole's choice) for
    every other model. ``--trainer=Trainer`` still picks RecBole's.
    """
    from recbole_bifair.model.llm_base import LLMRecommender

    return "Plain" if issubclass(model_class, LLMRecommender) else None


def trainer_name(trainer_class: type) -> str:
    """The name that picks ``trainer_class`` with ``--trainer`` (``PlainTrainer`` -> ``Plain``;
    RecBole's ``Trainer`` stays ``Trainer``)."""
    name = trainer_class.__name__
    return name.removesuffix("Trainer") or name


def resolve_data_path(data_path: str) -> str:
    """Absolute data folder: as given if absolute, else from cwd if it exists, else the project root."""
    path = Path(os.path.expanduser(data_path))
    if path.is_absolute():
        return str(path)
    if path.exists():
        return str(path.resolve())
    return str((PROJECT_ROOT / path).resolve())


# Options of run_recbole.py that RecBole's command-line reader also sees as config keys.
COMMAND_LINE_KEYS = frozenset({"model", "trainer", "dataset", "config_files", "results_file", "resume"})
_YAML_KEY = re.compile(r"^([A-Za-z_]\w*)\s*:", re.MULTILINE)
_CODE_KEY = re.compile(r"""(?:config\[\s*|_setting\(\s*config,\s*)["'](\w+)["']""")


@cache
def known_config_keys() -> frozenset[str]:
    """Every key RecBole or the plugin declares (yaml) or reads (``config["key"]`` in the code)."""
    keys = set(COMMAND_LINE_KEYS)
    recbole_root = Path(recbole.__file__).parent
    package_root = Path(__file__).resolve().parent
    for folder in (recbole_root / "properties", PROPERTIES_DIR):
        for path in folder.rglob("*.yaml"):
            keys.update(_YAML_KEY.findall(path.read_text(encoding="utf-8", errors="replace")))
    for folder in (recbole_root, package_root):
        for path in folder.rglob("*.py"):
            keys.update(_CODE_KEY.findall(path.read_text(encoding="utf-8", errors="replace")))
    return frozenset(keys)


def check_misspelled_keys(sources: dict[str, dict], known) -> None:
    """Refuse a user key that is unknown but close to a known one (a likely typo).

    An error, not a warning: a misspelled key is otherwise silently ignored and the run trains
    with the default, which is found out (if at all) only after the whole run. Unknown keys that
    resemble no known key pass, as in RecBole (custom keys for custom models).
    """
    for where, keys in sources.items():
        for key in sorted(keys or {}):
            if key in known:
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
            if close:
                raise ConfigKeyError(
                    f"unknown config key {key!r} {where}: did you mean {close[0]!r}? (keys close "
                    "to a known key are refused as likely typos; fix the spelling)"
                )


def cuda_fallback_warning(config) -> str | None:
    """A warning when the user explicitly asked for CUDA (``use_gpu: True`` or ``device: cuda``)
    and none exists: RecBole then silently runs on the CPU. A warning, not an error, so that one
    yaml file serves GPU and CPU machines alike; the log says where the run really ran.
    """
    import torch

    external = config.external_config_dict
    asked = external.get("use_gpu") is True or str(external.get("device", "")).startswith("cuda")
    if asked and not torch.cuda.is_available():
        return (
            "warning: CUDA was asked for (use_gpu/device) but is not available here: running on "
            "the CPU; set use_gpu: False to silence this"
        )
    return None


class BiFairConfig(Config):
    """RecBole Config that knows the plugin's models, trainers, metrics and yaml defaults."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        register_metrics()
        self.user_config_files = list(config_file_list or [])
        try:
            super().__init__(model, dataset, config_file_list, config_dict)
        except NotImplementedError as error:  # RecBole's "There is no metric named 'x'"
            name = str(error).split("'")[1] if "'" in str(error) else str(error)
            raise UnknownNameError("metric", name, known_metric_names()) from None
        files = " ".join(str(f) for f in self.user_config_files)
        check_misspelled_keys(
            {f"in {files}": self.file_config_dict, "in config_dict": self.variable_config_dict,
             "on the command line": self.cmd_config_dict},
            known_config_keys() | set(self.internal_config_dict),
        )
        self._show_what_runs()

    def _key_sources(self) -> dict[str, dict]:
        """Where each user value came from, highest priority first (for error messages)."""
        files = " ".join(str(f) for f in self.user_config_files)
        return {"on the command line": self.cmd_config_dict or {},
                "in config_dict": self.variable_config_dict or {},
                f"in {files}": self.file_config_dict or {}}

    def _show_what_runs(self) -> None:
        """Make the values RecBole leaves misleading match what the run uses (the config dump).

        With ``benchmark_filename`` RecBole reads the fixed split files and never uses
        ``eval_args.split`` (its default ``RS [0.8, 0.1, 0.1]`` would still be printed), and
        ``use_gpu`` stays True on a machine without CUDA while ``device`` is the CPU.
        """
        parts = self.final_config_dict.get("benchmark_filename")
        if parts:
            self.final_config_dict["eval_args"]["split"] = {
                "fixed files": [f"{self.dataset}.{part}.inter" for part in parts]
            }
        self.final_config_dict["use_gpu"] = self.final_config_dict["device"].type == "cuda"
        if self.final_config_dict.get("show_progress") is None:  # ~: bars only on a terminal
            self.final_config_dict["show_progress"] = sys.stderr.isatty()

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise UnknownNameError("model", "(none given)", registry.available_models())
        model_class = registry.get_model(model)
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise UnknownNameError("dataset", "(none given)", [])
        return model_class.__name__, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        trainer = self.external_config_dict.get("trainer")
        if trainer is None:  # the dump and the checks name the trainer that will run
            trainer = default_trainer(model_class) or trainer_name(
                registry.get_trainer(model_class.type, model, None)
            )
            self.internal_config_dict["trainer"] = trainer
        for path in plugin_yaml_files(model, trainer, dataset):
            loaded = self._update_internal_config_dict(str(path)) or {}
            if path.parent.name == "dataset":
                self.parameters["Dataset"] += [
                    key for key in loaded if key not in self.parameters["Dataset"]
                ]

    def _set_default_parameters(self):
        # every value checked before RecBole's own processing (which fails with a traceback)
        check_config_values(self, self._key_sources())
        # data_path's default (dataset_atomic) is in properties/overall.yaml
        self.final_config_dict["data_path"] = resolve_data_path(str(self.final_config_dict["data_path"]))
        super()._set_default_parameters()
