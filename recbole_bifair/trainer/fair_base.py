"""The trainer every method of the comparison shares, and the group losses fairness needs.

ALGORITHMS.md section 3: AdamW (betas 0.9/0.999, weight decay 0.1) with polynomial decay
lr_t = lr0 (1 - t/T)^0.9 over the maximum number of steps T = epochs x batches per epoch
(``lr_schedule: poly``; ``none`` keeps lr constant), valid Recall@20 early stopping.

:class:`PlainTrainer` (``--trainer=Plain``) trains with the plain mean InfoNCE loss: it is the
"AlphaRec" row of the paper's Table 2. The fair trainers subclass it and override
:meth:`PlainTrainer.train_step`. Groups for training come from ``fair_group: pop|genre``
through :func:`recbole_bifair.data.groups.build_item_groups`, the same maps the metrics use.

A model is usable here if it exposes ``per_sample_loss(interaction) -> (loss [B], pos_items [B])``
and ``projector_parameters()`` (the plugin's LLM models do).
"""

from __future__ import annotations

import math

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_bifair.data.groups import GROUP_KINDS, ItemGroups, build_item_groups
from recbole_bifair.errors import ConfigKeyError, NonFiniteLossError
from recbole_bifair.registry import register_trainer
from recbole_bifair.trainer.balancing import group_gradients
from recbole_bifair.trainer.item_table import (
    LearnableItemTable,
    check_item_table_api,
    config_value,
    require_model_methods,
)

REQUIRED_MODEL_METHODS = ("per_sample_loss", "projector_parameters")


def check_model_api(model, trainer_name: str) -> None:
    """One-line error if ``model`` lacks what the fair trainers need."""
    require_model_methods(model, trainer_name, REQUIRED_MODEL_METHODS,
                          "a per-sample loss over the batch and its positive items; or use RecBole's default trainer")


def group_losses(per_sample: torch.Tensor, group_of_sample: torch.Tensor, n_groups: int):
    """Mean per-sample loss of each group present in the batch (ALGORITHMS.md section 3).

    Returns ``(losses [N_present], present [N_present] group ids, counts [N] per group)``.
    Samples whose positive item is in no group (-1) are ignored.
    """
    keep = group_of_sample >= 0
    groups = group_of_sample[keep]
    sums = torch.zeros(n_groups, dtype=per_sample.dtype, device=per_sample.device)
    sums = sums.index_add(0, groups, per_sample[keep])
    counts = torch.bincount(groups, minlength=n_groups)
    present = torch.nonzero(counts).squeeze(1)
    return sums[present] / counts[present].to(per_sample.dtype), present, counts


GROUP_GRAD_METHODS = ("batched", "loop")


def resolve_group_grad_method(method: str | None, device) -> str:
    """``batched`` (one vmapped backward) or ``loop`` (one backward per group).

    ``auto`` picks ``batched`` on CUDA and ``loop`` on the CPU: on this project's 2-core CPU the
    vmapped backward of AlphaRec measured about 2x slower than the loop for both N = 2 and N = 18
    (benchmarks/README.md, "Group gradients"), as the prototype also found (ALGORITHMS.md 9.3).
    """
    method = method or "auto"
    if method == "auto":
        return "batched" if torch.device(device).type == "cuda" else "loop"
    if method not in GROUP_GRAD_METHODS:
        raise ConfigKeyError(f"group_grad_method must be auto, batched or loop, got {method!r}")
    return method


def polynomial_scheduler(optimizer, total_steps: int, power: float = 0.9):
    """lr_t = lr0 (1 - t/T)^power, stepped once per training iteration."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(1, total_steps), power=power)


@register_trainer
class PlainTrainer(Trainer):
    """Plain InfoNCE with AdamW + polynomial decay: the comparison's unfair reference."""

    def __init__(self, config, model):
        check_model_api(model, type(self).__name__.removesuffix("Trainer"))
        super().__init__(config, model)
        self.fair_group = config_value(config, "fair_group", "pop")  # which item groups training balances
        if self.fair_group not in GROUP_KINDS:
            raise ConfigKeyError(f"fair_group must be one of {GROUP_KINDS}, got {self.fair_group!r}")
        self.lr_schedule = config_value(config, "lr_schedule", "poly")  # poly | none
        if self.lr_schedule not in ("poly", "none"):
            raise ConfigKeyError(f"lr_schedule must be 'poly' or 'none', got {self.lr_schedule!r}")
        self.lr_power = float(config_value(config, "lr_power", 0.9))  # exponent of the polynomial decay
        if not self.lr_power > 0:
            raise ConfigKeyError(f"lr_power must be > 0, got {self.lr_power!r}")
        self.group_grad_method = resolve_group_grad_method(config["group_grad_method"], self.device)
        self.training_groups: ItemGroups | None = None
        self.item_group: torch.Tensor | None = None
        self.schedulers: list = []
        self.global_step = 0

    # ---------------------------------------------------------------- set-up

    @property
    def n_groups(self) -> int:
        return self.training_groups.n_groups

    def setup_training(self, train_data) -> None:
        """Group maps and LR schedules; called once at the start of :meth:`fit`."""
        self.training_groups = build_item_groups(
            train_data.dataset, self.config, self.fair_group, training=True
        )
        self.item_group = self.training_groups.item_group.to(self.device)
        total_steps = self.epochs * len(train_data)
        if self.lr_schedule == "poly" and not self.schedulers:
            self.schedulers = [polynomial_scheduler(opt, total_steps, self.lr_power) for opt in self.optimizers()]
        elif self.lr_schedule not in ("poly", "none"):
            raise ConfigKeyError(f"lr_schedule must be 'poly' or 'none', got {self.lr_schedule!r}")

    def optimizers(self) -> list:
        """Every optimiser this trainer steps (each gets a polynomial schedule)."""
        return [self.optimizer]

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.training_groups is None:
            self.setup_training(train_data)
        self.logger.info(
            f"training groups ({self.fair_group}): {self.n_groups} groups, sizes {self.training_groups.sizes()}"
        )
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    # ---------------------------------------------------------------- training

    def group_gradients(self, losses: torch.Tensor, params=None, retain_graph: bool = True) -> torch.Tensor:
        """``[N_present, P]`` gradients of the group losses w.r.t. ``params`` (default theta)."""
        params = self.model.projector_parameters() if params is None else params
        return group_gradients(losses, params, retain_graph=retain_graph, method=self.group_grad_method)

    def batch_losses(self, interaction):
        """(per-sample loss [B], group of each sample [B]) on one freshly sampled batch."""
        per_sample, pos_items = self.model.per_sample_loss(interaction)
        return per_sample, self.item_group[pos_items]

    def train_step(self, interaction) -> float:
        """One optimisation step on one batch; returns the loss to log."""
        per_sample, _groups = self.batch_losses(interaction)
        loss = per_sample.mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def after_step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()
        self.global_step += 1

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        batches = (
            tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
            if show_progress else train_data
        )
        total = 0.0
        for interaction in batches:
            loss = self.train_step(interaction.to(self.device))
            if not math.isfinite(loss):
                raise self.non_finite_loss(loss, epoch_idx, self.global_step)
            self.after_step()
            total += loss
            if show_progress:
                batches.set_postfix(loss=f"{loss:.4f}", **self.progress_figures())
        return total / max(1, len(train_data))

    def non_finite_loss(self, loss, epoch_idx: int, step: int) -> NonFiniteLossError:
        """The error for a NaN/Inf loss (the fair-evaluation mixin names the kept checkpoints)."""
        return NonFiniteLossError(
            f"training loss became {loss} at epoch {epoch_idx}, step {step}; lower learning_rate"
        )

    def progress_figures(self) -> dict:
        """Extra progress-bar figures (the fair-evaluation mixin adds the last validation score)."""
        return {}

    # ---------------------------------------------------------------- checkpoint state

    def extra_checkpoint_state(self) -> dict:
        return {
            "schedulers": [scheduler.state_dict() for scheduler in self.schedulers],
            "global_step": self.global_step,
        }

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        for scheduler, state in zip(self.schedulers, checkpoint.get("schedulers", []), strict=False):
            scheduler.load_state_dict(state)
        self.global_step = checkpoint.get("global_step", self.global_step)


@register_trainer
class PlainLearnZTrainer(LearnableItemTable, PlainTrainer):
    """The plain loss with the LLM item table Z learnable too (ALGORITHMS.md 9.4).

    The reference that separates what BiFair gains from learning Z at all from what it gains
    from the balanced loss and the bi-level update. theta and Z are updated together from one
    backward of the plain mean loss: AdamW (``learning_rate``, ``weight_decay``) on theta and,
    as for BiFair (ALGORITHMS.md 6, fair comparison), the row-sparse AdamW on Z with
    ``z_learning_rate``/``z_weight_decay``, both with the polynomial decay.
    ``z_learning_rate: 0`` keeps Z frozen (then this is the Plain trainer).
    """

    def __init__(self, config, model):
        check_model_api(model, "PlainLearnZ")
        check_item_table_api(model, "PlainLearnZ")
        self.init_item_table(config, model)
        super().__init__(config, model)

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", self.model.projector_parameters())  # theta only; Z has its own
        return super()._build_optimizer(**kwargs)

    def optimizers(self) -> list:
        return [self.optimizer] + ([self.z_optimizer] if self.learns_z else [])

    def train_step(self, interaction) -> float:
        per_sample, _groups = self.batch_losses(interaction)
        loss = per_sample.mean()
        self.optimizer.zero_grad()
        self.model.item_table.grad = None
        loss.backward()
        self.optimizer.step()
        if self.learns_z:
            self.z_optimizer.step()
            self.model.item_table.grad = None
        return float(loss.detach())

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), **self.z_checkpoint_state()}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        self.load_z_checkpoint_state(checkpoint)
