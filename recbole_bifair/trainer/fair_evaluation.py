"""Give any RecBole trainer the plugin's evaluation, timing and safe checkpoints.

:func:`with_fair_evaluation` returns a subclass of a RecBole trainer class (stock or plugin) that

- evaluates with :class:`~recbole_bifair.evaluator.collector.FairCollector`, so the fairness
  metrics work for every model;
- saves its best state with :mod:`recbole_bifair.checkpoint` (loads with weights_only=True)
  instead of pickling the Config;
- records seconds per training epoch and per full evaluation, and the per-group utilities of
  the last evaluation.
"""

from __future__ import annotations

from functools import cache
from time import perf_counter

from recbole.utils import set_color

from recbole_bifair.checkpoint import load_checkpoint, restore_model, save_checkpoint
from recbole_bifair.evaluator.collector import FairCollector
from recbole_bifair.evaluator.metrics import compute_group_utilities


class FairEvaluationMixin:
    """Mixed in before a RecBole Trainer class; see the module docstring."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = FairCollector(config)
        self.epoch_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.current_epoch = -1
        # Called as hook(epoch_idx, valid_result) after each validation (Ray Tune reports here).
        self.evaluation_hooks: list = []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.current_epoch = epoch_idx
        start = perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.epoch_seconds.append(perf_counter() - start)
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        for hook in self.evaluation_hooks:
            hook(self.current_epoch, valid_result)
        return valid_score, valid_result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        save_checkpoint(
            path,
            self.config,
            self.model,
            epoch=epoch,
            cur_step=self.cur_step,
            best_valid_score=float(self.best_valid_score),
            optimizer=self.optimizer.state_dict(),
            **self.extra_checkpoint_state(),
        )
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    # The mixin comes first in the MRO: these defer to the trainer's own hooks when it has them.
    def extra_checkpoint_state(self) -> dict:
        """Trainer state beyond the model and optimiser (schedulers, DRO weights, Z's optimiser)."""
        parent = getattr(super(), "extra_checkpoint_state", None)
        return parent() if parent else {}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        """Restore what :meth:`extra_checkpoint_state` saved."""
        parent = getattr(super(), "load_extra_checkpoint_state", None)
        if parent:
            parent(checkpoint)

    def resume_checkpoint(self, resume_file):
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.saved_model_file = str(resume_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        restore_model(self.model, checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.load_extra_checkpoint_state(checkpoint)
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def load_best_state(self, model_file=None) -> None:
        """Load the saved best model (and whatever the trainer keeps with it)."""
        checkpoint = load_checkpoint(model_file or self.saved_model_file, map_location=self.device)
        restore_model(self.model, checkpoint)
        self.load_extra_checkpoint_state(checkpoint)
        self.logger.info(f"Loading model structure and parameters from {model_file or self.saved_model_file}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            self.load_best_state(model_file)
        start = perf_counter()
        result = super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
        self.eval_seconds.append(perf_counter() - start)
        return result

    def per_group_utilities(self) -> dict[str, dict[str, float]]:
        """Group Recall@K of the last evaluation: ``{"pop@20": {"popular": 0.3, ...}, ...}``."""
        struct = self.eval_collector.last_struct
        report = {}
        if struct is None:
            return report
        for kind, groups in self.eval_collector.item_groups.items():
            for k in self.config["topk"]:
                utilities = compute_group_utilities(struct, self.config, kind, k, "recall")
                report[f"{kind}@{k}"] = {
                    groups.names[g]: float(v)
                    for g, v in zip(utilities.present.tolist(), utilities.values.tolist(), strict=False)
                }
                if utilities.n_absent:
                    self.logger.info(
                        f"{kind} groups: {utilities.n_absent} group(s) with no test interaction left out"
                    )
        return report


@cache
def with_fair_evaluation(trainer_class: type) -> type:
    """``trainer_class`` with :class:`FairEvaluationMixin` mixed in (same name)."""
    if issubclass(trainer_class, FairEvaluationMixin):
        return trainer_class
    return type(trainer_class.__name__, (FairEvaluationMixin, trainer_class), {})
