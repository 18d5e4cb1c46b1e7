"""BiFair (Zhang et al., 2025, Section 3.2, Algorithm 1; ALGORITHMS.md section 5) and the
``Separate`` ablation (Section 4.5).

Learnable: theta (the projector) and Z (the LLM item table, initialised from stage I). One
iteration on batch b, the outer step first as in DARTS:

1. L = L(theta, Z; b); alpha_in = balance(L, theta)              (Section 3.3, Algorithm 2)
2. g = sum alpha_in g_n (the balance's own group gradients, no extra backward);
   virtual step theta' = theta - xi g, xi = the current theta learning rate [choice,
   ``xi: lr``]; ``xi: 0`` is the first-order variant.
3. L' = L(theta', Z; b_out) through ``torch.func.functional_call``; alpha_out = balance(L',
   theta'); F = sum alpha_out L'; (dZ, v) = grad of F w.r.t. (Z, theta') in one backward.
   b_out = b [choice, ``outer_batch: same``] or a freshly sampled batch (``next``).
4. eps = ``fd_epsilon`` / ||v|| (0.01, global norm over all projector tensors);
   hZ = [grad_Z sum alpha_in L(theta + eps v, Z; b) - grad_Z sum alpha_in L(theta - eps v, Z; b)] / (2 eps)
5. Z.grad = dZ - xi hZ; a row-sparse AdamW step on Z (only rows with gradient change).
6. Inner step: L = L(theta, Z; b) with the new Z; alpha = balance(L, theta);
   theta.grad = sum alpha g_n (again the balance's own gradients); AdamW step on theta.

Both optimisers are AdamW with polynomial decay (power 0.9). Z's weight decay is 0 [choice,
``z_weight_decay``]. The outer step runs every ``outer_every`` iterations.

Deviation, from ALGORITHMS.md section 9.1: the literal min-norm step collapses when group
gradients are nearly aligned, so the balance keeps each group element's weight >= gamma
(``min_group_share`` / N; 0 gives the literal solver) — the paper's "minimum guarantee on the
solutions for low-loss groups". Logged every epoch: group losses, alpha, w[N], sum alpha, the
combined-gradient norm and ||xi hZ|| / ||dZ||.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.func import functional_call

from recbole_bifair.errors import ConfigKeyError
from recbole_bifair.registry import register_trainer
from recbole_bifair.trainer.balancing import BalanceResult, balance
from recbole_bifair.trainer.fair_base import PlainTrainer, check_model_api, group_losses
from recbole_bifair.trainer.row_sparse_adamw import RowSparseAdamW


def unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped like ``like`` (the order of ``group_gradients``)."""
    pieces, start = [], 0
    for tensor in like:
        pieces.append(flat[start:start + tensor.numel()].view_as(tensor))
        start += tensor.numel()
    return pieces


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))


@dataclass
class BalancedObjective:
    """One balanced batch: per-sample and group losses, the balance, and theta."""

    per_sample: torch.Tensor
    losses: torch.Tensor
    result: BalanceResult
    params: list[torch.Tensor]
    grads_are_theta: bool  # the balance's group gradients are w.r.t. theta (balance_space: params)

    def loss(self) -> torch.Tensor:
        """sum_n alpha_n L_n with alpha detached (the fair loss)."""
        return (self.result.alpha * self.losses).sum()

    def theta_gradient(self, retain_graph: bool = True) -> list[torch.Tensor]:
        """grad_theta sum alpha L: from the balance's own group gradients when they are w.r.t.
        theta (no backward), else one backward."""
        if self.grads_are_theta:
            grads = self.result.group_grads
            combined = self.result.alpha.to(grads.dtype) @ grads
            return [g.to(p.dtype).clone() for p, g in zip(self.params, unflatten(combined, self.params), strict=True)]
        return list(torch.autograd.grad(self.loss(), self.params, retain_graph=retain_graph))


class BalancedLossTrainer(PlainTrainer):
    """Shared by BiFair and Separate: the adaptive fairness-aware loss and its epoch log."""

    def __init__(self, config, model):
        check_model_api(model, type(self).__name__.removesuffix("Trainer"))
        model.set_item_table_learnable(True)
        super().__init__(config, model)
        self.balance_entropy = bool(config["balance_entropy"] if config["balance_entropy"] is not None else True)
        self.min_group_share = float(config["min_group_share"] or 0.0)  # groups' joint floor in the min-norm problem
        self.balance_norm = config["balance_norm"] or "none"  # gradient normalisation before the solve
        self.fw_max_iter = int(config["fw_max_iter"] or 250)  # Frank-Wolfe iteration cap
        self.fw_tol = float(config["fw_tol"] or 1e-5)  # Frank-Wolfe stop: sum |dw| < tol
        self.balance_space = config["balance_space"] or "params"  # params (the paper's g_n) | embeddings (MGDA-UB)
        if self.balance_space not in ("params", "embeddings"):
            raise ConfigKeyError(f"balance_space must be 'params' or 'embeddings', got {self.balance_space!r}")
        if not 0.0 <= self.min_group_share <= 1.0:
            raise ConfigKeyError(f"min_group_share must be in [0, 1], got {self.min_group_share}")
        self.z_optimizer = RowSparseAdamW(
            [model.item_table],
            lr=float(config["z_learning_rate"] or 1e-4),
            weight_decay=float(config["z_weight_decay"] or 0.0),
        )
        self.epoch_log: dict[str, list] = defaultdict(list)

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", self.model.projector_parameters())  # theta only; Z has its own
        return super()._build_optimizer(**kwargs)

    def optimizers(self) -> list:
        return [self.optimizer, self.z_optimizer]

    def theta(self) -> tuple[list[str], list[torch.nn.Parameter]]:
        named = self.model.named_projector_parameters()
        return list(named), list(named.values())

    def balanced_objective(self, batch, theta_by_name: dict | None = None, log: str | None = None):
        """Balance one batch at theta (or at a virtual ``theta_by_name``): the group losses, the
        balance and, on demand, the gradient of sum alpha L w.r.t. theta.

        ``balance_space: params`` takes the group gradients w.r.t. theta (the paper's g_n);
        ``embeddings`` takes them w.r.t. the shared output embeddings (MGDA-UB, Sener & Koltun
        2018, the "upper bound" variant of the MGDA reference code): N cheap backward passes
        through the scoring part only, then one backward for the combined gradient.
        """
        names, params = self.theta() if theta_by_name is None else (list(theta_by_name), list(theta_by_name.values()))
        in_embeddings = self.balance_space == "embeddings"
        kwargs = {"return_embeddings": True} if in_embeddings else {}
        if theta_by_name is None:
            output = self.model(*batch, **kwargs)
        else:
            output = functional_call(self.model, theta_by_name, batch, kwargs)
        per_sample, space = (output[0], list(output[1:])) if in_embeddings else (output, params)
        sample_groups = self.item_group[batch[1]]
        losses, present, _counts = group_losses(per_sample, sample_groups, self.n_groups)
        gamma = self.min_group_share / len(losses) if len(losses) > 1 else 0.0
        grads = None
        if len(losses) > 1 and in_embeddings:  # all N groups in one pass (see the model method)
            present_index = torch.full((self.n_groups + 1,), -1, dtype=torch.long, device=present.device)
            present_index[present] = torch.arange(len(present), device=present.device)
            grads = self.model.group_embedding_gradients(*space, *batch, present_index[sample_groups], len(present))
        elif len(losses) > 1:
            grads = self.group_gradients(losses, space)
        result = balance(
            losses, space, entropy=self.balance_entropy, min_group_weight=gamma,
            balance_norm=self.balance_norm, max_iter=self.fw_max_iter, tol=self.fw_tol, grads=grads,
        )
        if log:
            self._log_balance(log, losses, present, result)
        return BalancedObjective(per_sample, losses, result, params, grads_are_theta=not in_embeddings)

    def _log_balance(self, tag, losses, present, result: BalanceResult) -> None:
        group_loss = torch.full((self.n_groups,), float("nan"))
        group_loss[present.cpu()] = losses.detach().float().cpu()
        alpha = torch.full((self.n_groups,), float("nan"))
        alpha[present.cpu()] = result.alpha.float().cpu()
        self.epoch_log[f"{tag}_losses"].append(group_loss)
        self.epoch_log[f"{tag}_alpha"].append(alpha)
        self.epoch_log[f"{tag}_entropy_weight"].append(result.entropy_weight)
        self.epoch_log[f"{tag}_alpha_sum"].append(float(result.alpha.sum()))
        self.epoch_log[f"{tag}_combined_norm"].append(result.combined_grad_norm)

    def inner_step(self, batch) -> float:
        """Step 6: theta <- AdamW step on the balanced loss at the current Z."""
        objective = self.balanced_objective(batch, log="inner")
        for param, grad in zip(objective.params, objective.theta_gradient(retain_graph=False), strict=True):
            param.grad = grad
        self.optimizer.step()
        self.model.item_table.grad = None
        return float(objective.per_sample.detach().mean())

    def z_step(self, batch) -> float:
        """Z <- step on grad_Z of the balanced loss at the current theta (Separate, phase 2)."""
        objective = self.balanced_objective(batch, log="z")
        (z_grad,) = torch.autograd.grad(objective.loss(), [self.model.item_table])
        self.model.item_table.grad = z_grad
        self.z_optimizer.step()
        self.model.item_table.grad = None
        return float(objective.per_sample.detach().mean())

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.epoch_log.clear()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.logger.info(self.epoch_summary(epoch_idx))
        return loss

    def epoch_summary(self, epoch_idx: int) -> str:
        def mean_vector(values):
            return torch.nanmean(torch.stack(values), dim=0).tolist()

        def fmt(values):
            return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"

        parts = [f"epoch {epoch_idx} balance"]
        for tag in ("outer", "inner", "z"):
            if f"{tag}_losses" not in self.epoch_log:
                continue
            log = self.epoch_log
            parts.append(
                f"{tag}: group losses {fmt(mean_vector(log[f'{tag}_losses']))} alpha "
                f"{fmt(mean_vector(log[f'{tag}_alpha']))} w[N] "
                f"{sum(log[f'{tag}_entropy_weight']) / len(log[f'{tag}_entropy_weight']):.4f} sum(alpha) "
                f"{sum(log[f'{tag}_alpha_sum']) / len(log[f'{tag}_alpha_sum']):.4f} |combined grad| "
                f"{sum(log[f'{tag}_combined_norm']) / len(log[f'{tag}_combined_norm']):.3e}"
            )
        if self.epoch_log.get("second_order_ratio"):
            ratios = self.epoch_log["second_order_ratio"]
            parts.append(f"|xi hZ|/|dZ| mean {sum(ratios) / len(ratios):.3e} max {max(ratios):.3e}")
        return "; ".join(parts)

    def extra_checkpoint_state(self) -> dict:
        state = super().extra_checkpoint_state()
        state["z_optimizer"] = self.z_optimizer.state_dict()
        return state

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        if "z_optimizer" in checkpoint:
            self.z_optimizer.load_state_dict(checkpoint["z_optimizer"])


@register_trainer
class BiFairTrainer(BalancedLossTrainer):
    """Bi-level training of theta (inner) and Z (outer), both under the balanced loss."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.xi_mode = config["xi"] if config["xi"] is not None else "lr"  # lr | a number (0 = first order)
        if self.xi_mode != "lr":
            try:
                self.xi_mode = float(self.xi_mode)
            except (TypeError, ValueError):
                raise ConfigKeyError(f"xi must be 'lr' or a number, got {self.xi_mode!r}") from None
        self.outer_batch = config["outer_batch"] or "same"  # same | next
        if self.outer_batch not in ("same", "next"):
            raise ConfigKeyError(f"outer_batch must be 'same' or 'next', got {self.outer_batch!r}")
        self.outer_every = int(config["outer_every"] or 1)  # outer step every k iterations
        self.fd_epsilon = float(config["fd_epsilon"] or 0.01)  # finite-difference step eps = fd_epsilon/||v||

    def current_xi(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.xi_mode == "lr" else float(self.xi_mode)

    def train_step(self, interaction) -> float:
        batch = self.model.sample_batch(interaction)
        if self.global_step % self.outer_every == 0:
            outer_batch = batch if self.outer_batch == "same" else self.model.sample_batch(interaction)
            self.outer_step(batch, outer_batch)
        return self.inner_step(batch)

    def z_hypergradient(self, batch, outer_batch):
        """Steps 1-4: (dZ, xi hZ) for one iteration; Z's gradient is dZ - xi hZ."""
        names, params = self.theta()
        table = self.model.item_table
        inner = self.balanced_objective(batch, log="outer")
        xi = self.current_xi()
        if xi == 0:  # first order: theta' = theta, so no virtual step and no second-order term
            outer = inner if outer_batch is batch else self.balanced_objective(outer_batch)
            (dz,) = torch.autograd.grad(outer.loss(), [table])
            return dz, torch.zeros_like(dz)
        virtual = [
            (p - xi * g).detach().requires_grad_(True)
            for p, g in zip(params, inner.theta_gradient(retain_graph=False), strict=True)
        ]
        outer = self.balanced_objective(outer_batch, dict(zip(names, virtual, strict=True)))
        dz, *v = torch.autograd.grad(outer.loss(), [table, *virtual])
        eps = self.fd_epsilon / global_norm(v).clamp(min=1e-12).item()
        alpha_in = inner.result.alpha.detach()

        def z_gradient_at(sign: float) -> torch.Tensor:
            shifted = {n: (p + sign * eps * vi).detach() for n, p, vi in zip(names, params, v, strict=True)}
            per = functional_call(self.model, shifted, batch)
            losses, _present, _counts = group_losses(per, self.item_group[batch[1]], self.n_groups)
            return torch.autograd.grad((alpha_in * losses).sum(), [table])[0]

        second_order = (z_gradient_at(1.0) - z_gradient_at(-1.0)) / (2 * eps)
        return dz, xi * second_order

    def outer_step(self, batch, outer_batch) -> None:
        dz, second_order = self.z_hypergradient(batch, outer_batch)
        self.epoch_log["second_order_ratio"].append(float(second_order.norm() / dz.norm().clamp(min=1e-30)))
        self.model.item_table.grad = dz - second_order
        self.z_optimizer.step()
        self.model.item_table.grad = None


@register_trainer
class SeparateTrainer(BalancedLossTrainer):
    """Ablation (Section 4.5): theta with Z frozen, then Z with theta frozen, same balanced loss.

    Phase 1 trains theta until early stopping (or ``epochs``); phase 2 restarts from the best
    state of phase 1 and trains Z for up to ``epochs`` more epochs with fresh early-stopping
    counters; the best validation state over both phases is kept.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.phase = "theta"

    def optimizers(self) -> list:
        return [self.optimizer] if self.phase == "theta" else [self.z_optimizer]

    def train_step(self, interaction) -> float:
        batch = self.model.sample_batch(interaction)
        return self.inner_step(batch) if self.phase == "theta" else self.z_step(batch)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        resumed = getattr(self, "_resume_state", None) or {}
        if resumed.get("trainer_phase") != "z":  # a run resumed in phase 2 skips phase 1
            self.phase = "theta"
            super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            if saved and valid_data:
                self.load_best_state()
            self.start_epoch, self.cur_step = 0, 0
        self.phase = "z"
        self.logger.info("Separate: phase 2, theta frozen, training Z")
        self.schedulers = []  # a fresh polynomial schedule for Z's phase
        self.setup_training(train_data)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
