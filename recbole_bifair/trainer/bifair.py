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

    def balanced(self, per_sample, pos_items, params, log: str | None = None):
        """(group losses [N_present], present ids, BalanceResult) of one batch."""
        losses, present, _counts = group_losses(per_sample, self.item_group[pos_items], self.n_groups)
        gamma = self.min_group_share / len(losses) if len(losses) > 1 else 0.0
        result = balance(
            losses, params, entropy=self.balance_entropy, min_group_weight=gamma,
            balance_norm=self.balance_norm, max_iter=self.fw_max_iter, tol=self.fw_tol,
            grads=self.group_gradients(losses, params) if len(losses) > 1 else None,
        )
        if log:
            self._log_balance(log, losses, present, result)
        return losses, present, result

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

    def set_theta_grads(self, params, result: BalanceResult) -> None:
        """theta.grad = sum_n alpha_n g_n from the balance's own group gradients (no backward)."""
        combined = result.alpha.to(result.group_grads.dtype) @ result.group_grads
        for param, grad in zip(params, unflatten(combined, params), strict=True):
            param.grad = grad.to(param.dtype).clone()

    def inner_step(self, batch) -> float:
        """Step 6: theta <- AdamW step on the balanced loss at the current Z."""
        _names, params = self.theta()
        per_sample = self.model(*batch)
        _losses, _present, result = self.balanced(per_sample, batch[1], params, log="inner")
        self.set_theta_grads(params, result)
        self.optimizer.step()
        self.model.item_table.grad = None
        return float(per_sample.detach().mean())

    def z_step(self, batch) -> None:
        """Z <- step on grad_Z of the balanced loss at the current theta (Separate, phase 2)."""
        _names, params = self.theta()
        per_sample = self.model(*batch)
        losses, _present, result = self.balanced(per_sample, batch[1], params, log="z")
        (z_grad,) = torch.autograd.grad((result.alpha * losses).sum(), [self.model.item_table])
        self.model.item_table.grad = z_grad
        self.z_optimizer.step()
        self.model.item_table.grad = None

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
        per_sample = self.model(*batch)
        losses_in, _present, result_in = self.balanced(per_sample, batch[1], params, log="outer")
        xi = self.current_xi()
        virtual_step = unflatten(result_in.alpha.to(result_in.group_grads.dtype) @ result_in.group_grads, params)
        virtual = [(p - xi * g.to(p.dtype)).detach().requires_grad_(True) for p, g in zip(params, virtual_step, strict=True)]
        per_out = functional_call(self.model, dict(zip(names, virtual, strict=True)), outer_batch)
        losses_out, _present_out, result_out = self.balanced(per_out, outer_batch[1], virtual)
        outer_loss = (result_out.alpha * losses_out).sum()
        dz, *v = torch.autograd.grad(outer_loss, [table, *virtual])
        if xi == 0:
            return dz, torch.zeros_like(dz)
        eps = self.fd_epsilon / global_norm(v).clamp(min=1e-12).item()
        alpha_in = result_in.alpha.detach()

        def z_gradient_at(sign: float) -> torch.Tensor:
            shifted = {n: (p + sign * eps * vi).detach() for n, p, vi in zip(names, params, v, strict=True)}
            per = functional_call(self.model, shifted, batch)
            losses, present, _ = group_losses(per, self.item_group[batch[1]], self.n_groups)
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
        if self.phase == "theta":
            return self.inner_step(batch)
        self.z_step(batch)
        return float(self.model(*batch).detach().mean())

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.phase = "theta"
        super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        if saved and valid_data:
            self.load_best_state()
        self.phase = "z"
        self.logger.info("Separate: phase 2, theta frozen, training Z")
        self.start_epoch, self.cur_step = 0, 0
        self.schedulers = []  # a fresh polynomial schedule for Z's phase
        self.setup_training(train_data)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
