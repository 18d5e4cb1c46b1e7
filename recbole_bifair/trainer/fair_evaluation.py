"""Give any RecBole trainer the plugin's evaluation, timing and safe checkpoints.

:func:`with_fair_evaluation` returns a subclass of a RecBole trainer class (stock or plugin) that

- evaluates with :class:`~recbole_bifair.evaluator.collector.FairCollector`, so the fairness
  metrics work for every model;
- saves its best state with :mod:`recbole_bifair.checkpoint` (loads with weights_only=True)
  instead of pickling the Config, and after every evaluation the whole current state
  (model, optimisers, LR schedules, trainer state, RNG states, early-stopping counters) to
  ``<best model file>.resume``, which ``run(resume=...)`` / ``--resume=`` continues from;
- turns a NaN/Inf training loss into a one-line error naming the epoch, step and kept files;
- records seconds per training epoch and per full evaluation, and the per-group utilities of
  the last evaluation.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from time import perf_counter

import torch
from recbole.utils import set_color

from recbole_bifair.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_model,
    resume_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from recbole_bifair.errors import NonFiniteLossError
from recbole_bifair.evaluator.collector import FairCollector
from recbole_bifair.evaluator.metrics import compute_group_utilities
from recbole_bifair.trainer.fair_selection import FairSelection
from recbole_bifair.trainer.item_table import config_value


class FairEvaluationMixin:
    """Mixed in before a RecBole Trainer class; see the module docstring."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = FairCollector(config)
        self.epoch_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.current_epoch = -1
        # ALGORITHMS.md 9.6: optional fairness-aware selection, reported beside the paper's.
        metric = config["fair_selection"]
        self.fair_selection = (
            FairSelection(metric, config_value(config, "fair_selection_tolerance", 0.02), self.saved_model_file)
            if metric else None
        )
        self.last_valid_score: float | None = None
        self._epoch_batches = 0
        self._resume_state: dict | None = None  # applied when the first resumed epoch starts
        # Called as hook(epoch_idx, valid_result) after each validation (Ray Tune reports here).
        self.evaluation_hooks: list = []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.current_epoch = epoch_idx
        self._epoch_batches = 0
        if self._resume_state is not None:
            self._apply_resume_state(train_data)
        start = perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.epoch_seconds.append(perf_counter() - start)
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.last_valid_score = float(valid_score)
        for hook in self.evaluation_hooks:
            hook(self.current_epoch, valid_result)
        if self.fair_selection is not None:
            self.fair_selection.observe(
                self.current_epoch, float(valid_score), dict(valid_result),
                lambda path: self._save_checkpoint(self.current_epoch, verbose=False, saved_model_file=path),
            )
        return valid_score, valid_result

    def progress_figures(self) -> dict:
        """The last validation score, for the training progress bar (plugin trainers)."""
        if self.last_valid_score is None:
            return {}
        return {f"valid_{self.valid_metric}": f"{self.last_valid_score:.4f}"}

    # ---------------------------------------------------------------- NaN/Inf losses

    def _check_nan(self, loss):  # RecBole's trainers call this once per batch
        self._epoch_batches += 1
        if not bool(torch.isfinite(loss).all()):
            raise self.non_finite_loss(float(loss.detach()), self.current_epoch, self._epoch_batches - 1)

    def non_finite_loss(self, loss, epoch_idx: int, step: int) -> NonFiniteLossError:
        resume = resume_path(self.saved_model_file)
        if resume.is_file():
            kept = (
                f"the last good state is kept in {resume} (continue with --resume={resume}) and the "
                f"best in {self.saved_model_file}"
            )
        elif Path(self.saved_model_file).is_file():
            kept = f"the best state so far is kept in {self.saved_model_file}"
        else:
            kept = "no checkpoint was written yet"
        return NonFiniteLossError(
            f"training loss became {loss} at epoch {epoch_idx}, step {step}; {kept}; lower "
            f"learning_rate (now {self.config['learning_rate']}) or check the data"
        )

    # ---------------------------------------------------------------- checkpoints

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self._resume_state is not None and self._resume_state.get("finished"):
            self.logger.info("the resumed run had finished training; evaluating its best state")
            self.eval_collector.data_collect(train_data)
            self._resume_state = None
            return self.best_valid_score, self.best_valid_result
        self._train_data = train_data

        def after_evaluation(epoch_idx, valid_score):
            if saved:
                self.save_resume_state(epoch_idx)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        return super().fit(train_data, valid_data, verbose, saved, show_progress, after_evaluation)

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

    def save_resume_state(self, epoch: int) -> Path:
        """Write ``<best model file>.resume``: the whole current state after ``epoch``'s evaluation.

        Called after validation and early stopping, right before the next epoch starts, so the
        RNG states saved here are the ones that epoch starts with.
        """
        path = resume_path(self.saved_model_file)
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return path
        generator = getattr(getattr(self, "_train_data", None), "generator", None)
        save_checkpoint(
            path,
            self.config,
            self.model,
            resume=True,
            epoch=epoch,
            cur_step=self.cur_step,
            # Separate's first phase ending is not the end of training
            finished=getattr(self, "phase", None) != "theta"
            and (self.cur_step > self.stopping_step or epoch + 1 >= self.epochs),
            best_valid_score=float(self.best_valid_score),
            best_valid_result={str(k): float(v) for k, v in (self.best_valid_result or {}).items()},
            best_model_file=str(Path(self.saved_model_file).resolve()),
            optimizer=self.optimizer.state_dict(),
            rng=rng_state(),
            train_generator=generator.get_state() if generator is not None else None,
            epoch_seconds=list(self.epoch_seconds),
            eval_seconds=list(self.eval_seconds),
            trainer_phase=getattr(self, "phase", None),
            fair_front=self.fair_selection.state() if self.fair_selection is not None else None,
            **self.extra_checkpoint_state(),
        )
        return path

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
        """Continue from a resume checkpoint (``<model file>.resume``) or a best-model file.

        The model and counters are restored now; optimisers, LR schedules, trainer state and
        RNG states when the first resumed epoch starts (after :meth:`fit` has built the schedules).
        """
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        saved_model = checkpoint["config"].get("model")
        if saved_model != self.config["model"]:
            raise CheckpointError(
                f"{resume_file}: a checkpoint of model {saved_model}, not {self.config['model']}; "
                f"resume with --model={saved_model}"
            )
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint.get("resume"):
            self.saved_model_file = checkpoint["best_model_file"]
            self.best_valid_result = dict(checkpoint["best_valid_result"]) or None
            self.epoch_seconds = list(checkpoint.get("epoch_seconds", []))
            self.eval_seconds = list(checkpoint.get("eval_seconds", []))
            if self.fair_selection is not None:  # the Pareto front so far, beside the original best model
                self.fair_selection.base_path = self.saved_model_file
                self.fair_selection.restore(checkpoint.get("fair_front") or [])
        else:  # a best-model file: continue from the best state (no RNG states saved)
            self.saved_model_file = str(resume_file)
        restore_model(self.model, checkpoint)
        self._resume_state = checkpoint
        self.logger.info(f"Checkpoint {resume_file} loaded. Resume training from epoch {self.start_epoch}")

    def _apply_resume_state(self, train_data) -> None:
        checkpoint, self._resume_state = self._resume_state, None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.load_extra_checkpoint_state(checkpoint)
        if checkpoint.get("rng") is not None:
            set_rng_state(checkpoint["rng"])
        generator = getattr(train_data, "generator", None)
        if checkpoint.get("train_generator") is not None and generator is not None:
            generator.set_state(checkpoint["train_generator"])

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
