"""The plugin's Config: RecBole's, with the plugin's yaml files layered at the internal level.

Order, lowest priority first (each later layer overrides the earlier ones):

1. RecBole's own ``overall.yaml``, ``model/<Model>.yaml``, ``dataset/<dataset>.yaml``;
2. the plugin's ``properties/overall.yaml``, ``properties/model/<Model>.yaml``,
   ``properties/trainer/<Trainer>.yaml``, ``properties/dataset/<dataset>.yaml``;
3. the user's yaml files (``config_file_list``), then ``config_dict``, then the command line.

So user settings always win, as in RecBole-GNN's pattern. Models are resolved through the
plugin registry (plugin first, then RecBole). A relative ``data_path`` is taken from the
current folder when it exists there, else from the project root, and is made absolute so that
Ray workers and reloaded checkpoints find the same files.
"""

from __future__ import annotations

import os
from pathlib import Path

from recbole.config import Config

from recbole_bifair import registry
from recbole_bifair.errors import UnknownNameError
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


def resolve_data_path(data_path: str) -> str:
    """Absolute data folder: as given if absolute, else from cwd if it exists, else the project root."""
    path = Path(os.path.expanduser(data_path))
    if path.is_absolute():
        return str(path)
    if path.exists():
        return str(path.resolve())
    return str((PROJECT_ROOT / path).resolve())


class BiFairConfig(Config):
    """RecBole Config that knows the plugin's models, trainers, metrics and yaml defaults."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        register_metrics()
        try:
            super().__init__(model, dataset, config_file_list, config_dict)
        except NotImplementedError as error:  # RecBole's "There is no metric named 'x'"
            name = str(error).split("'")[1] if "'" in str(error) else str(error)
            raise UnknownNameError("metric", name, known_metric_names()) from None

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
        for path in plugin_yaml_files(model, trainer, dataset):
            loaded = self._update_internal_config_dict(str(path)) or {}
            if path.parent.name == "dataset":
                self.parameters["Dataset"] += [
                    key for key in loaded if key not in self.parameters["Dataset"]
                ]

    def _set_default_parameters(self):
        self.final_config_dict["data_path"] = resolve_data_path(
            self.final_config_dict.get("data_path") or "dataset_atomic"
        )
        super()._set_default_parameters()
