"""The fairness baselines of the comparison (ALGORITHMS.md section 6): same model, sampler,
base loss (per-sample InfoNCE) and optimiser as :class:`PlainTrainer`; only the way the
per-sample or per-group losses are combined differs.

- ``--trainer=Reweight``: inverse interaction-share weights per item group (the classic
  re-weighting baseline used by MultiFR and ITFR's comparisons).
- ``--trainer=MultiFR``: MGDA min-norm weights over the group gradients (Wu et al., "A
  Multi-Objective Optimization Framework for Multi-Stakeholder Fairness-Aware Recommendation",
  TOIS 2022; Sener & Koltun, NeurIPS 2018), solved by :func:`balancing.balance` without the
  entropy element.
- ``--trainer=DRORec``: streaming GroupDRO over item groups (Wen et al., "Distributionally-robust
  Recommendations for Improving Worst-case User Experience", WWW 2022, S-DRO).
- ``--trainer=PopDRO``: popularity-aware DRO with a gradient-alignment term (Zhao et al.,
  "Popularity-aware Distributionally Robust Optimization for Recommendation System", CIKM
  2023), in its one-time-stage form.
- ``--trainer=ITFR``: sharpness-aware group gradients with weights driven by losses and by
  gradient similarity to the previous epoch (Jiang et al., "Item-side Fairness of Large
  Language Model-based Recommendation System", WWW 2024, ITFR).

The weight rules are pure functions of tensors (:func:`interaction_share_weights`,
:func:`streaming_dro_update`, :func:`popdro_objective`, :func:`itfr_weight_update`,
:func:`multifr_direction`), tested directly on tiny inputs. Every trainer logs its group
weights once per epoch (one INFO line). Groups are item groups (``fair_group: pop|genre``);
samples whose positive item has no group are left out of the group losses, as in
:func:`fair_base.group_losses` (Reweight gives them weight 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from recbole_bifair.data.groups import train_item_counts
from recbole_bifair.errors import ConfigKeyError
from recbole_bifair.registry import register_trainer
from recbole_bifair.trainer.balancing import BALANCE_NORMS, BalanceResult, balance, group_gradients
from recbole_bifair.trainer.fair_base import PlainTrainer, group_losses
from recbole_bifair.trainer.item_table import config_value

__all__ = [
    "DRORecTrainer",
    "ITFRTrainer",
    "MultiFRTrainer",
    "PopDROTrainer",
    "ReweightTrainer",
    "assign_flat_gradient",
    "format_group_weights",
    "group_interaction_counts",
    "interaction_share_weights",
    "itfr_weight_update",
    "multifr_direction",
    "popdro_objective",
    "streaming_dro_update",
]


# ---------------------------------------------------------------------- pure functions


def format_group_weights(names: Sequence[str], weights: Tensor) -> str:
    """``"popular=1.2100, unpopular=0.8500"`` for the per-epoch log line."""
    return ", ".join(
        f"{name}={float(value):.4f}" for name, value in zip(names, weights.tolist(), strict=True)
    )


def group_interaction_counts(item_group: Tensor, item_counts: Tensor, n_groups: int) -> Tensor:
    """Train interactions per group: ``n_n = sum of item_counts[i] over items i in group n``."""
    item_group, item_counts = item_group.cpu(), item_counts.cpu().to(torch.float64)
    keep = item_group >= 0
    return torch.zeros(n_groups, dtype=torch.float64).index_add(
        0, item_group[keep], item_counts[keep]
    )


def interaction_share_weights(group_counts: Tensor) -> Tensor:
    """Reweight (ALGORITHMS.md 6): ``w_n = |D_train| / (N n_n)``, ``n_n`` train interactions of group n.

    ``|D_train| = sum_n n_n`` and N counts the groups with at least one train interaction; a
    group without any gets weight 0 (it never appears in a training batch). So a group holding
    more than its 1/N share of the interactions is down-weighted (w < 1) and the weights
    average to 1 over interactions. Returns float64 ``[N]``.
    """
    counts = group_counts.to(torch.float64)
    nonempty = counts > 0
    n_nonempty = int(nonempty.sum())
    if n_nonempty == 0:
        raise ValueError("no group has a train interaction")
    safe = torch.where(nonempty, counts, torch.ones_like(counts))
    return torch.where(nonempty, counts.sum() / (n_nonempty * safe), torch.zeros_like(counts))


def streaming_dro_update(
    loss_ema: Tensor, q: Tensor, losses: Tensor, present: Tensor, eta: float, beta: float
) -> tuple[Tensor, Tensor]:
    """One S-DRO step (ALGORITHMS.md 6): returns the new ``(L_hat, q)``.

    ``L_hat_n <- (1 - beta [n present]) L_hat_n + beta [n present] L_n`` (absent groups keep
    their estimate), then ``q <- softmax(log q + eta L_hat)`` over all groups. ``losses`` is the
    full ``[N]`` vector of group losses (its absent entries are ignored); ``present`` a bool
    ``[N]``. Everything is detached.
    """
    losses = torch.where(present, losses.detach(), torch.zeros_like(loss_ema))
    step = beta * present.to(loss_ema.dtype)
    loss_ema = (1.0 - step) * loss_ema + step * losses
    q = torch.softmax(torch.log(q) + eta * loss_ema, dim=0)
    return loss_ema, q


def popdro_objective(
    losses: Tensor,
    present: Tensor,
    params: Sequence[Tensor],
    loss_ema: Tensor,
    weights: Tensor,
    alignment: float = 0.3,
    trend: float = 0.3,
    step_size: float = 0.17,
    grads: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PopDRO's objective for one batch, one time stage (ALGORITHMS.md 6).

    ``losses`` are the present groups' mean losses ``L_n = s_n/|n|`` (``s_n`` the sum of the
    group's per-sample losses, ``|n|`` its samples in the batch), ``present`` their group ids.
    With ``g_n = grad_theta s_n`` (one batched backward, :func:`group_gradients`; normalising
    ``grad s_n`` or ``grad L_n`` gives the same direction):

    - ``gbar_n = g_n / |g_n| * L_n`` (detached);
    - ``loss_n = (1 - alignment) L_n + alignment <gbar_n, mean_k gbar_k>`` (mean over present k);
    - ``L_hat_n = (1 - trend) L_hat_n (detached) + trend loss_n`` for present n, unchanged
      otherwise;
    - ``w_n <- w_n exp(step_size L_hat_n)``, normalised;
    - objective ``sum_n w_n L_hat_n`` (w detached; gradients flow through the present groups'
      ``loss_n``).

    ``grads`` (``[N_present, P]``), if given, are the group gradients already computed (the
    graph must survive them). Returns ``(objective, new L_hat detached [N], new w [N])``.
    """
    if grads is None:
        grads = group_gradients(losses, params, retain_graph=True)
    gbar = F.normalize(grads, dim=1) * losses.detach().to(grads.dtype).unsqueeze(1)
    aligned = (gbar @ gbar.mean(dim=0)).to(losses.dtype)
    group_loss = (1.0 - alignment) * losses + alignment * aligned
    full = loss_ema.detach().clone().to(losses.dtype)
    full = full.index_put(
        (present,), (1.0 - trend) * loss_ema.detach()[present] + trend * group_loss
    )
    weights = weights * torch.exp(step_size * full.detach())
    weights = weights / weights.sum()
    objective = (weights.detach() * full).sum()
    return objective, full.detach(), weights.detach()


def itfr_weight_update(
    weights: Tensor,
    losses: Tensor,
    grads: Tensor,
    previous_losses: Tensor,
    previous_grads: Tensor,
    present: Tensor,
    eta: float = 0.05,
    gamma: float = 0.5,
    floor: float = 1e-5,
) -> Tensor:
    """ITFR's group weights after one batch (ALGORITHMS.md 6); unchanged unless every group is present.

    ``losses`` ``[N]`` and ``grads`` ``[N, P]``: this batch's group losses and (perturbed)
    gradients; ``previous_*`` the previous epoch's mean group losses and accumulated group
    gradients. With ``S_ij = cos(G_i, G_j^prev)`` off the diagonal and ``S_ii = 1``,
    ``M_ij = sqrt(l_i) sqrt(l_j^prev)`` off the diagonal and ``M_ii = l_i``, and
    ``p = l^gamma / sum l^gamma``: ``e = eta (M * S) p``, ``w <- w exp(e - max e)``, normalised,
    then clamped below at ``floor``.
    """
    if not bool(present.all()):
        return weights
    dtype = torch.float64
    losses = losses.detach().to(dtype)
    previous_losses = previous_losses.detach().to(dtype)
    n_groups = losses.numel()
    eye = torch.eye(n_groups, dtype=torch.bool, device=losses.device)
    directions = F.normalize(grads.detach().to(dtype), dim=1)
    previous_directions = F.normalize(previous_grads.detach().to(dtype), dim=1)
    similarity = directions @ previous_directions.T
    similarity = torch.where(eye, torch.ones_like(similarity), similarity)
    root, previous_root = losses.clamp_min(0).sqrt(), previous_losses.clamp_min(0).sqrt()
    loss_matrix = root.unsqueeze(1) * previous_root.unsqueeze(0)
    loss_matrix = torch.where(eye, torch.diag(losses), loss_matrix)
    powered = losses.clamp_min(0) ** gamma
    share = powered / powered.sum()
    exponent = eta * (loss_matrix * similarity) @ share
    updated = weights.to(dtype) * torch.exp(exponent - exponent.max())
    updated = (updated / updated.sum()).clamp_min(floor)
    return updated.to(weights.dtype)


def assign_flat_gradient(params: Sequence[Tensor], flat: Tensor) -> None:
    """Set each parameter's ``.grad`` from its slice of a flat ``[P]`` gradient (params' order)."""
    offset = 0
    for param in params:
        size = param.numel()
        if param.requires_grad:
            param.grad = flat[offset : offset + size].view_as(param).to(param.dtype).clone()
        offset += size
    if offset != flat.numel():
        raise ValueError(f"flat gradient has {flat.numel()} elements, parameters {offset}")


def multifr_direction(
    losses: Tensor,
    params: Sequence[Tensor],
    balance_norm: str = "none",
    min_group_weight: float = 0.0,
    grads: Tensor | None = None,
) -> tuple[BalanceResult, Tensor]:
    """MultiFR (MGDA): min-norm weights over ``{g_1..g_N}`` only and the update direction.

    Returns the solver's result (``alpha``, detached) and ``sum_n alpha_n g_n`` as a flat ``[P]``
    vector from the solver's own group gradients (no second backward; the graph is freed).
    ``grads`` (``[N, P]``), if given, are those group gradients already computed.
    """
    result = balance(
        losses,
        params,
        entropy=False,
        balance_norm=balance_norm,
        min_group_weight=min_group_weight,
        retain_graph=False,
        grads=grads,
    )
    direction = result.alpha.to(result.group_grads.dtype) @ result.group_grads
    return result, direction


# ---------------------------------------------------------------------- trainers




class GroupWeightTrainer(PlainTrainer):
    """:class:`PlainTrainer` that logs its group weights once per epoch (not registered)."""

    weight_label = "group weights"

    def epoch_group_weights(self) -> Tensor:
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Hook after each training epoch (before the weights are logged)."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss = super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )
        self.end_epoch()
        name = type(self).__name__.removesuffix("Trainer")
        self.logger.info(
            f"{name} {self.weight_label} after epoch {epoch_idx}: "
            + format_group_weights(self.training_groups.names, self.epoch_group_weights())
        )
        return loss


@register_trainer
class ReweightTrainer(GroupWeightTrainer):
    """Inverse interaction-share weights per item group (ALGORITHMS.md section 6, "Reweight").

    ``w_n = |D_train| / (N n_n)`` from the train split, fixed for the run; loss
    ``sum_b w_{g(b)} l_b / B``. Which way the weights go depends on the data (ALGORITHMS.md
    9.5): with popularity groups the popular 10% of items may hold more or less than half the
    interactions; the set-up log says which group was up-weighted.
    """

    weight_label = "weights (fixed)"

    def __init__(self, config, model):
        super().__init__(config, model)
        self.group_weights: Tensor | None = None

    def setup_training(self, train_data) -> None:
        super().setup_training(train_data)
        counts = group_interaction_counts(
            self.training_groups.item_group, train_item_counts(train_data.dataset), self.n_groups
        )
        weights = interaction_share_weights(counts)
        self.group_weights = weights.to(device=self.device, dtype=torch.float32)
        up = [
            name
            for name, w in zip(self.training_groups.names, weights.tolist(), strict=True)
            if w > 1
        ]
        share = ", ".join(
            f"{name}={int(c)} ({c / counts.sum():.1%})"
            for name, c in zip(self.training_groups.names, counts.tolist(), strict=True)
        )
        self.logger.info(
            f"Reweight: train interactions per group {share}; weights "
            f"{format_group_weights(self.training_groups.names, weights)}; up-weighted: {', '.join(up) or 'none'}"
        )

    def epoch_group_weights(self) -> Tensor:
        return self.group_weights

    def train_step(self, interaction) -> float:
        per_sample, groups = self.batch_losses(interaction)
        sample_weights = torch.where(
            groups >= 0, self.group_weights[groups.clamp_min(0)], torch.ones_like(per_sample)
        )
        loss = (sample_weights * per_sample).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


@register_trainer
class MultiFRTrainer(GroupWeightTrainer):
    """MultiFR / MGDA over the item groups (ALGORITHMS.md section 6; Wu et al., TOIS 2022).

    Each step: ``alpha`` = min-norm point of ``{g_n = grad_theta L_n}`` (present groups, no
    entropy element; :func:`balancing.balance` with ``entropy=False``), then
    ``theta.grad = sum_n alpha_n g_n`` from the solver's own group gradients. The log line
    gives the epoch mean of each group's alpha (over the batches where it was present).
    """

    weight_label = "mean alpha"

    def __init__(self, config, model):
        super().__init__(config, model)
        # gradient normaliser before the solve (none = the literal MGDA)
        self.balance_norm = config_value(config, "multifr_balance_norm", "none")
        if self.balance_norm not in BALANCE_NORMS:
            raise ConfigKeyError(
                f"multifr_balance_norm must be one of {BALANCE_NORMS}, got {self.balance_norm!r}"
            )
        # the same floor as BiFair (ALGORITHMS.md 6): w_n >= min_group_share / N, same key and default
        self.min_group_share = float(config_value(config, "min_group_share", 0.2))
        if not 0.0 <= self.min_group_share <= 1.0:
            raise ConfigKeyError(f"min_group_share must be in [0, 1], got {self.min_group_share}")
        self.alpha_sum: Tensor | None = None
        self.alpha_count: Tensor | None = None

    def setup_training(self, train_data) -> None:
        super().setup_training(train_data)
        self.alpha_sum = torch.zeros(self.n_groups, dtype=torch.float64)
        self.alpha_count = torch.zeros(self.n_groups, dtype=torch.float64)

    def epoch_group_weights(self) -> Tensor:
        return self.alpha_sum / self.alpha_count.clamp_min(1)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.alpha_sum.zero_()
        self.alpha_count.zero_()
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )

    def train_step(self, interaction) -> float:
        per_sample, groups = self.batch_losses(interaction)
        losses, present, _counts = group_losses(per_sample, groups, self.n_groups)
        params = self.model.projector_parameters()
        grads = self.group_gradients(losses, retain_graph=False)
        gamma = self.min_group_share / len(losses) if len(losses) > 1 else 0.0
        result, direction = multifr_direction(losses, params, self.balance_norm, gamma, grads)
        self.optimizer.zero_grad()
        assign_flat_gradient(params, direction)
        self.optimizer.step()
        self.alpha_sum.index_add_(0, present.cpu(), result.alpha.detach().cpu().to(torch.float64))
        self.alpha_count.index_add_(0, present.cpu(), torch.ones(len(present), dtype=torch.float64))
        return float((result.alpha * losses.detach()).sum())


@register_trainer
class DRORecTrainer(GroupWeightTrainer):
    """Streaming GroupDRO over item groups (ALGORITHMS.md section 6; Wen et al., WWW 2022, S-DRO).

    Each step: :func:`streaming_dro_update` of ``(L_hat, q)`` from the batch's group losses, then
    loss ``sum_n q_n L_n`` over the present groups, ``q`` detached. ``L_hat`` starts at 0 and
    ``q`` uniform; both are saved in the checkpoint.
    """

    weight_label = "q"

    def __init__(self, config, model):
        super().__init__(config, model)
        self.dro_eta = float(config_value(config, "dro_eta", 0.01))  # step size of the q update
        self.dro_beta = float(config_value(config, "dro_beta", 0.01))  # streaming-average rate of L_hat
        self.loss_ema: Tensor | None = None
        self.q: Tensor | None = None

    def setup_training(self, train_data) -> None:
        super().setup_training(train_data)
        if self.q is None or self.q.numel() != self.n_groups:
            self.loss_ema = torch.zeros(self.n_groups, device=self.device)
            self.q = torch.full((self.n_groups,), 1.0 / self.n_groups, device=self.device)

    def epoch_group_weights(self) -> Tensor:
        return self.q

    def train_step(self, interaction) -> float:
        per_sample, groups = self.batch_losses(interaction)
        losses, present, _counts = group_losses(per_sample, groups, self.n_groups)
        full = torch.zeros_like(self.loss_ema).index_put((present,), losses.detach())
        mask = torch.zeros_like(self.q, dtype=torch.bool).index_fill(0, present, True)
        self.loss_ema, self.q = streaming_dro_update(
            self.loss_ema, self.q, full, mask, self.dro_eta, self.dro_beta
        )
        loss = (self.q[present] * losses).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), "dro_loss_ema": self.loss_ema, "dro_q": self.q}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        if checkpoint.get("dro_q") is not None:
            self.loss_ema = checkpoint["dro_loss_ema"].to(self.device)
            self.q = checkpoint["dro_q"].to(self.device)


@register_trainer
class PopDROTrainer(GroupWeightTrainer):
    """Popularity-aware DRO, one time stage (ALGORITHMS.md section 6; Zhao et al., CIKM 2023).

    Each step: :func:`popdro_objective` on the present item groups (one batched backward for
    the N group gradients of the alignment term), then a normal backward of the objective.
    The paper's "time stages" and "popularity strength" need interaction timestamps: the keys
    are exposed, and only one stage is implemented (``popdro_stages: 1``).
    """

    weight_label = "w"

    def __init__(self, config, model):
        super().__init__(config, model)
        self.stages = int(config_value(config, "popdro_stages", 1))  # time stages (needs timestamps)
        if self.stages != 1:
            raise ConfigKeyError(
                f"popdro_stages = {self.stages}: only one time stage is implemented (the prepared "
                "datasets carry no timestamps); set popdro_stages: 1"
            )
        # popularity strength (multi-stage only)
        self.strength = float(config_value(config, "popdro_strength", 3.0))
        self.trend = float(config_value(config, "popdro_trend", 0.3))  # streaming rate of L_hat
        # weight of the gradient-alignment term
        self.alignment = float(config_value(config, "popdro_alignment", 0.3))
        # exponentiated-gradient step of w
        self.step_size = float(config_value(config, "popdro_step_size", 0.17))
        self.loss_ema: Tensor | None = None
        self.weights: Tensor | None = None

    def setup_training(self, train_data) -> None:
        super().setup_training(train_data)
        if self.weights is None or self.weights.numel() != self.n_groups:
            self.loss_ema = torch.zeros(self.n_groups, device=self.device)
            self.weights = torch.full((self.n_groups,), 1.0 / self.n_groups, device=self.device)

    def epoch_group_weights(self) -> Tensor:
        return self.weights

    def train_step(self, interaction) -> float:
        per_sample, groups = self.batch_losses(interaction)
        losses, present, _counts = group_losses(per_sample, groups, self.n_groups)
        objective, self.loss_ema, self.weights = popdro_objective(
            losses, present, self.model.projector_parameters(), self.loss_ema, self.weights,
            alignment=self.alignment, trend=self.trend, step_size=self.step_size,
            grads=self.group_gradients(losses, retain_graph=True),
        )  # fmt: skip
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()
        return float(objective)

    def extra_checkpoint_state(self) -> dict:
        return {
            **super().extra_checkpoint_state(),
            "popdro_loss_ema": self.loss_ema,
            "popdro_weights": self.weights,
        }

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        if checkpoint.get("popdro_weights") is not None:
            self.loss_ema = checkpoint["popdro_loss_ema"].to(self.device)
            self.weights = checkpoint["popdro_weights"].to(self.device)


@register_trainer
class ITFRTrainer(GroupWeightTrainer):
    """ITFR over item groups (ALGORITHMS.md section 6; Jiang et al., WWW 2024).

    Each step, on one sampled batch: group gradients ``g_n`` at theta; for each present group a
    sharpness-aware point ``theta + rho g_n / |g_n|`` (global norm over the projector), where the
    group's loss ``l_n`` and gradient ``G_n`` are taken with ``torch.func.functional_call`` (theta
    itself is never edited); :func:`itfr_weight_update` when every group is present; update
    ``theta.grad = sum_n w_n G_n``. The previous epoch's mean group losses and accumulated group
    gradients feed the next epoch's updates; in the first epoch, which has no previous one, the
    current batch stands in for it [choice]. Weights and the previous-epoch statistics are
    saved in the checkpoint.
    """

    weight_label = "w"

    def __init__(self, config, model):
        super().__init__(config, model)
        # radius of the sharpness-aware perturbation
        self.rho = float(config_value(config, "itfr_rho", 0.05))
        self.eta = float(config_value(config, "itfr_eta", 0.05))  # step size of the weight update
        # exponent of the loss share l^gamma
        self.gamma = float(config_value(config, "itfr_gamma", 0.5))
        self.weights: Tensor | None = None
        self.previous_losses: Tensor | None = None
        self.previous_grads: Tensor | None = None
        self.loss_sum: Tensor | None = None
        self.loss_count: Tensor | None = None
        self.grad_sum: Tensor | None = None

    def setup_training(self, train_data) -> None:
        super().setup_training(train_data)
        if self.weights is None or self.weights.numel() != self.n_groups:
            self.weights = torch.full((self.n_groups,), 1.0 / self.n_groups, device=self.device)
            self.previous_losses = None
            self.previous_grads = None

    def epoch_group_weights(self) -> Tensor:
        return self.weights

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.loss_sum = self.loss_count = self.grad_sum = None
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )

    def end_epoch(self) -> None:
        """Mean group losses and accumulated group gradients of this epoch become the 'previous'."""
        if self.loss_sum is None:
            return
        seen = self.loss_count > 0
        losses = self.loss_sum / self.loss_count.clamp_min(1)
        if self.previous_losses is None:
            self.previous_losses, self.previous_grads = losses, self.grad_sum
        else:
            self.previous_losses = torch.where(seen, losses, self.previous_losses)
            self.previous_grads = torch.where(seen.unsqueeze(1), self.grad_sum, self.previous_grads)

    def perturbed_group_gradients(self, users, pos_items, neg_items, groups, present, grads):
        """``(l_n [N_present], G_n [N_present, P])`` at ``theta + rho g_n / |g_n|`` for each present group."""
        named = self.model.named_projector_parameters()
        losses, rows = [], []
        for row, group in enumerate(present.tolist()):
            norm = grads[row].norm()
            scale = self.rho / norm if norm > 0 else 0.0
            virtual, offset = {}, 0
            for name, param in named.items():
                size = param.numel()
                shift = grads[row, offset : offset + size].view_as(param) * scale
                virtual[name] = (param.detach() + shift).requires_grad_(True)
                offset += size
            per_sample = torch.func.functional_call(
                self.model, virtual, (users, pos_items, neg_items)
            )
            loss = per_sample[groups == group].mean()
            pieces = torch.autograd.grad(loss, list(virtual.values()), allow_unused=True)
            rows.append(torch.cat([
                (torch.zeros_like(v) if g is None else g).reshape(-1) for g, v in zip(pieces, virtual.values(), strict=True)
            ]))  # fmt: skip
            losses.append(loss.detach())
        return torch.stack(losses), torch.stack(rows)

    def train_step(self, interaction) -> float:
        users, pos_items, neg_items = self.model.sample_batch(interaction)
        groups = self.item_group[pos_items]
        params = self.model.projector_parameters()
        losses, present, _counts = group_losses(
            self.model(users, pos_items, neg_items), groups, self.n_groups
        )
        grads = self.group_gradients(losses, retain_graph=False)
        sharp_losses, sharp_grads = self.perturbed_group_gradients(
            users, pos_items, neg_items, groups, present, grads
        )

        n_groups, width = self.n_groups, sharp_grads.shape[1]
        full_losses = torch.zeros(n_groups, device=sharp_losses.device).index_put(
            (present,), sharp_losses
        )
        full_grads = sharp_grads.new_zeros(n_groups, width).index_put((present,), sharp_grads)
        mask = torch.zeros(n_groups, dtype=torch.bool, device=present.device).index_fill(
            0, present, True
        )
        if self.loss_sum is None:
            self.loss_sum = torch.zeros_like(full_losses)
            self.loss_count = torch.zeros_like(full_losses)
            self.grad_sum = torch.zeros_like(full_grads)
        previous_losses = full_losses if self.previous_losses is None else self.previous_losses
        previous_grads = full_grads if self.previous_grads is None else self.previous_grads
        self.weights = itfr_weight_update(
            self.weights, full_losses, full_grads, previous_losses, previous_grads, mask,
            eta=self.eta, gamma=self.gamma,
        )  # fmt: skip
        self.loss_sum += full_losses
        self.loss_count += mask.to(self.loss_count.dtype)
        self.grad_sum += full_grads

        self.optimizer.zero_grad()
        assign_flat_gradient(params, self.weights[present].to(sharp_grads.dtype) @ sharp_grads)
        self.optimizer.step()
        return float((self.weights[present] * sharp_losses).sum())

    def extra_checkpoint_state(self) -> dict:
        return {
            **super().extra_checkpoint_state(),
            "itfr_weights": self.weights,
            "itfr_previous_losses": self.previous_losses,
            "itfr_previous_grads": self.previous_grads,
        }

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        if checkpoint.get("itfr_weights") is not None:
            self.weights = checkpoint["itfr_weights"].to(self.device)
            for key in ("previous_losses", "previous_grads"):
                value = checkpoint.get(f"itfr_{key}")
                setattr(self, key, None if value is None else value.to(self.device))
