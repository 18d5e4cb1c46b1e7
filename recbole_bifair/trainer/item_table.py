"""The learnable LLM item table Z, shared by every trainer that learns it (ALGORITHMS.md 5, 6).

A fair comparison gives every control what BiFair gets (ALGORITHMS.md section 6, last
paragraph): BiFair, Separate and PlainLearnZ all train Z with the same optimiser (the
row-sparse AdamW of :mod:`recbole_bifair.trainer.row_sparse_adamw`), the same keys
(``z_learning_rate``, ``z_weight_decay``) and the same polynomial schedule as theta (the
trainer's ``optimizers()`` lists this optimiser, so :meth:`PlainTrainer.setup_training`
gives it a schedule). ``z_learning_rate: 0`` keeps Z frozen (bit-identical to stage I): the
table stays a buffer and no Z step is taken, which makes BiFair the "balanced loss, Z frozen"
control of the ablation and PlainLearnZ the plain loss.

Models that learn Z expose ``z_entry_layer()`` (the ``Linear`` Z enters through) and
``embeddings_from_entry(H)``: Z's gradient is then ``dH @ W`` with ``dH`` the gradient w.r.t.
the layer's output ``H = Z W^T + b``, so a backward pass never computes the d-wide input
gradient per group (:func:`z_gradient_from_entry`).
"""

from __future__ import annotations

import torch

from recbole_bifair.errors import ConfigKeyError, PluginError
from recbole_bifair.trainer.row_sparse_adamw import RowSparseAdamW


def config_value(config, key: str, default):
    """``config[key]``, or ``default`` only when the key is unset (None): an explicit 0, False
    or empty value is the user's and is kept."""
    value = config[key]
    return default if value is None else value


def non_negative_float(config, key: str, default: float) -> float:
    """A float key that must be >= 0; one-line :class:`ConfigKeyError` otherwise."""
    value = config_value(config, key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigKeyError(f"{key} must be a number >= 0, got {value!r}") from None
    if not number >= 0.0 or number == float("inf"):
        raise ConfigKeyError(f"{key} must be a finite number >= 0, got {value!r}")
    return number


def require_model_methods(model, trainer_name: str, methods, purpose: str) -> None:
    """One-line :class:`PluginError` naming the ``methods`` that ``model`` lacks."""
    missing = [name for name in methods if not callable(getattr(model, name, None))]
    if missing:
        raise PluginError(
            f"trainer {trainer_name} needs a model with {' and '.join(name + '()' for name in missing)} "
            f"({purpose}); {type(model).__name__} has none: use LLMLinear or AlphaRec"
        )


def check_item_table_api(model, trainer_name: str) -> None:
    """One-line error if ``model`` cannot learn its item table the way the trainers need."""
    require_model_methods(
        model, trainer_name,
        ("z_entry_layer", "embeddings_from_entry", "loss_from_embeddings", "set_item_table_learnable"),
        "to learn the LLM item table",
    )


def z_gradient_from_entry(entry_grad: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """grad_Z of a loss from its gradient w.r.t. ``H = Z W^T + b``: ``dH @ W`` (one GEMM)."""
    return entry_grad.reshape(-1, layer.out_features) @ layer.weight.detach()


class LearnableItemTable:
    """Z's optimiser and its keys; mixed into trainers that learn Z (before PlainTrainer)."""

    def init_item_table(self, config, model) -> None:
        """Read ``z_learning_rate``/``z_weight_decay``; make Z learnable unless its lr is 0."""
        self.z_learning_rate = non_negative_float(config, "z_learning_rate", 1e-4)
        self.z_weight_decay = non_negative_float(config, "z_weight_decay", 0.0)
        self.learns_z = self.z_learning_rate > 0.0
        model.set_item_table_learnable(self.learns_z)
        self.z_optimizer = (
            RowSparseAdamW([model.item_table], lr=self.z_learning_rate, weight_decay=self.z_weight_decay)
            if self.learns_z else None
        )

    def z_step(self, z_grad: torch.Tensor) -> None:
        """One row-sparse AdamW step on Z with gradient ``z_grad`` (rows with zero gradient stay)."""
        table = self.model.item_table
        table.grad = z_grad.view_as(table).to(table.dtype)
        self.z_optimizer.step()
        table.grad = None

    def z_checkpoint_state(self) -> dict:
        return {"z_optimizer": self.z_optimizer.state_dict()} if self.z_optimizer is not None else {}

    def load_z_checkpoint_state(self, checkpoint: dict) -> None:
        if self.z_optimizer is not None and "z_optimizer" in checkpoint:
            self.z_optimizer.load_state_dict(checkpoint["z_optimizer"])
