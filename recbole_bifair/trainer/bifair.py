"""BiFair (Zhang et al., 2025, Section 3.2, Algorithm 1; ALGORITHMS.md section 5) and the
``Separate`` ablation (Section 4.5).

Learnable: theta (the projector) and Z (the LLM item table, initialised from stage I). One
balance per iteration (Section 3.3, last paragraph: the fairness-aware weight w of Eq. 10 is
computed "only after determining the update directions for both the inner and outer levels";
solving it again at every gradient step is "the naive method"). One iteration on batch b, in
Algorithm 1's order (inner, then outer):

1. One forward at (theta, Z); group losses L_n (Eq. 8). One set of per-group backward passes
   gives both levels' group gradients: g_n^theta and dL_n/dH with H = Z W1^T + b1 the output of
   the layer Z enters through, so g_n^Z = (dL_n/dH) W1 needs no d-wide product per group
   (:mod:`recbole_bifair.trainer.item_table`). The scoring part's backward runs once for all
   groups (the model's ``group_embedding_gradients``); the N passes go from the output
   embeddings to (theta, H). With more than two groups H's per-group gradients (N x I x h
   floats) are not kept: H's combined gradient takes one more pass from the same embedding
   gradients after the balance (the same value; peak memory 1.3x instead of 2.2x a plain run
   for 18 genres at h = 3072).
2. The balance is solved once (Algorithm 2, :func:`balancing.balance`) over {g_n} plus the
   entropy element -grad H_s. [choice, ``balance_gram: theta``] the Gram is over g_n^theta;
   ``theta_z`` appends g_n^Z. ``balance_space: embeddings`` takes the g_n w.r.t. the output
   embeddings instead (MGDA-UB) and needs a single pass for the combined direction.
   alpha = the effective group weights, used by both levels below.
3. Inner step: theta.grad = sum alpha_n g_n^theta; AdamW step -> theta_t.
4. Outer step (Eq. 5-7), every ``outer_every`` iterations, with the same alpha (no new balance):
   - ``xi: 0`` (first order): Z.grad = sum alpha_n g_n^Z from step 1, no further pass.
   - otherwise theta' = base - xi sum alpha_n g_n^theta, xi = the current theta learning rate
     [choice, ``xi: lr``], base = theta (the point the gradients were taken at, DARTS) [choice,
     ``virtual_base: theta``; ``theta_t`` starts from the inner step's result];
     F = sum alpha_n L_n(theta', Z; b_out), b_out = b [choice, ``outer_batch: same``] or a
     freshly sampled batch (``next``; groups absent from b get weight 0 there);
     (dZ, v) = grad of F w.r.t. (Z, theta') in one backward; eps = ``fd_epsilon`` / ||v||;
     hZ = [grad_Z F(base + eps v, Z; b) - grad_Z F(base - eps v, Z; b)] / (2 eps) (these two
     backward passes only reach H, never the weights); Z.grad = dZ - xi hZ; a row-sparse
     AdamW step on Z (only rows with a non-zero gradient change).
   Virtual points are evaluated by writing them into theta in place and restoring theta_t
   afterwards (no functional copy of the model).

``z_learning_rate: 0`` skips step 4: Z stays bit-identical to stage I (the "balanced loss,
Z frozen" control). Both optimisers are AdamW with polynomial decay (power 0.9); Z's weight
decay is 0 [choice, ``z_weight_decay``].

Deviation, from ALGORITHMS.md section 9.1: the literal min-norm step collapses when group
gradients are nearly aligned, so the balance keeps each group element's weight >= gamma
(``min_group_share`` / N; 0 gives the literal solver), the paper's "minimum guarantee on the
solutions for low-loss groups". Logged every epoch: group losses, alpha (the weights both
levels used), w[N], sum alpha, the combined-gradient norm and ||xi hZ|| / ||dZ||.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from recbole_bifair.errors import ConfigKeyError
from recbole_bifair.registry import register_trainer
from recbole_bifair.trainer.balancing import BALANCE_NORMS, BalanceResult, balance
from recbole_bifair.trainer.fair_base import PlainTrainer, check_model_api, group_losses
from recbole_bifair.trainer.item_table import (
    LearnableItemTable,
    check_item_table_api,
    config_value,
    non_negative_float,
    z_gradient_from_entry,
)

#: Up to this many groups, the per-group gradients w.r.t. H come from the balance's own passes;
#: with more, H's combined gradient takes one extra pass (same value, N fewer H-sized copies).
MAX_STORED_ENTRY_GROUPS = 2


def unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped like ``like`` (the order of the group gradients)."""
    pieces, start = [], 0
    for tensor in like:
        pieces.append(flat[start:start + tensor.numel()].view_as(tensor))
        start += tensor.numel()
    return pieces


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))


@contextmanager
def parameters_at(params: list[torch.nn.Parameter], values: list[torch.Tensor]):
    """Evaluate the model at ``values`` of ``params`` (written in place), then restore them."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for param, value in zip(params, values, strict=True):
            param.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for param, value in zip(params, saved, strict=True):
                param.copy_(value)


@dataclass
class BalancedStep:
    """One balanced batch: what the balance found and both levels' combined gradients.

    theta_grad: sum_n alpha_n g_n^theta, one tensor per projector parameter.
    entry_grad: sum_n alpha_n dL_n/dH ([n_items, width] of the Z entry layer), or None when not
        asked for; Z's gradient is ``entry_grad @ W`` at the theta of this step.
    """

    per_sample: torch.Tensor
    losses: torch.Tensor
    present: torch.Tensor
    result: BalanceResult
    theta_grad: list[torch.Tensor]
    entry_grad: torch.Tensor | None
    entry: torch.Tensor  # H = Z W^T + b at this step's theta (detached)

    def full_alpha(self, n_groups: int) -> torch.Tensor:
        """alpha over all groups (0 for groups absent from this batch)."""
        alpha = torch.zeros(n_groups, dtype=self.result.alpha.dtype, device=self.result.alpha.device)
        alpha[self.present] = self.result.alpha
        return alpha


class BalancedLossTrainer(LearnableItemTable, PlainTrainer):
    """Shared by BiFair and Separate: the adaptive fairness-aware loss, one balance per batch,
    and its epoch log."""

    def __init__(self, config, model):
        name = type(self).__name__.removesuffix("Trainer")
        check_model_api(model, name)
        check_item_table_api(model, name)
        self.init_item_table(config, model)
        super().__init__(config, model)
        self.balance_entropy = bool(config_value(config, "balance_entropy", True))
        # groups' joint floor in the min-norm problem (ALGORITHMS.md 9.1)
        self.min_group_share = float(config_value(config, "min_group_share", 0.0))
        if not 0.0 <= self.min_group_share <= 1.0:
            raise ConfigKeyError(f"min_group_share must be in [0, 1], got {self.min_group_share}")
        self.balance_norm = config_value(config, "balance_norm", "none")  # normalisation before the solve
        if self.balance_norm not in BALANCE_NORMS:
            raise ConfigKeyError(f"balance_norm must be one of {BALANCE_NORMS}, got {self.balance_norm!r}")
        self.fw_max_iter = config_value(config, "fw_max_iter", 250)  # Frank-Wolfe iteration cap
        if isinstance(self.fw_max_iter, bool) or not isinstance(self.fw_max_iter, int) or self.fw_max_iter < 1:
            raise ConfigKeyError(f"fw_max_iter must be an integer >= 1, got {self.fw_max_iter!r}")
        self.fw_tol = non_negative_float(config, "fw_tol", 1e-5)  # Frank-Wolfe stop: sum |dw| < tol
        self.balance_space = config_value(config, "balance_space", "params")  # params | embeddings (MGDA-UB)
        if self.balance_space not in ("params", "embeddings"):
            raise ConfigKeyError(f"balance_space must be 'params' or 'embeddings', got {self.balance_space!r}")
        self.balance_gram = config_value(config, "balance_gram", "theta")  # theta | theta_z
        if self.balance_gram not in ("theta", "theta_z"):
            raise ConfigKeyError(f"balance_gram must be 'theta' or 'theta_z', got {self.balance_gram!r}")
        if self.balance_gram == "theta_z" and self.balance_space != "params":
            raise ConfigKeyError("balance_gram: theta_z needs balance_space: params")
        self.epoch_log: dict[str, list] = defaultdict(list)

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", self.model.projector_parameters())  # theta only; Z has its own
        return super()._build_optimizer(**kwargs)

    def optimizers(self) -> list:
        return [self.optimizer] + ([self.z_optimizer] if self.learns_z else [])

    def theta(self) -> list[torch.nn.Parameter]:
        return self.model.projector_parameters()

    # ------------------------------------------------------------ forward and the balance

    def forward_from_entry(self, batch):
        """(per-sample loss, H, user_emb, item_emb) at the current theta, with H = entry(Z)
        a graph node (Z itself detached: its gradient is mapped from H's)."""
        layer = self.model.z_entry_layer()
        entry = layer(self.model.item_table.detach())
        user_emb, item_emb = self.model.embeddings_from_entry(entry)
        per_sample = self.model.loss_from_embeddings(user_emb, item_emb, *batch)
        return per_sample, entry, user_emb, item_emb

    def weighted_loss(self, per_sample: torch.Tensor, batch, alpha_full: torch.Tensor) -> torch.Tensor:
        """sum_n alpha_n L_n over the groups present in ``batch`` (alpha detached)."""
        losses, present, _counts = group_losses(per_sample, self.item_group[batch[1]], self.n_groups)
        return (alpha_full[present].to(losses.dtype) * losses).sum()

    def balanced_step(self, batch, want_entry: bool, log: str | None = None) -> BalancedStep:
        """Steps 1-2: group losses, one set of group gradients, one balance; returns the combined
        theta gradient and (``want_entry``) the combined gradient w.r.t. Z's entry layer output."""
        per_sample, entry, user_emb, item_emb = self.forward_from_entry(batch)
        sample_groups = self.item_group[batch[1]]
        losses, present, _counts = group_losses(per_sample, sample_groups, self.n_groups)
        theta = self.theta()
        inputs = [*theta, entry] if want_entry else theta
        gamma = self.min_group_share / len(losses) if len(losses) > 1 else 0.0
        settings = dict(entropy=self.balance_entropy, min_group_weight=gamma, balance_norm=self.balance_norm,
                        max_iter=self.fw_max_iter, tol=self.fw_tol)
        if len(losses) == 1:  # one group: alpha = [1], the plain gradient
            result = balance(losses, [], grads=losses.new_zeros(1, 1), **settings)
            combined = list(torch.autograd.grad(losses[0], inputs))
        else:
            embedding_grads = self._embedding_group_gradients(per_sample, losses, present, sample_groups,
                                                              batch, user_emb, item_emb)
            if self.balance_space == "embeddings":
                result = balance(losses, [], grads=embedding_grads, **settings)
                combined = self._backward_from_embeddings(result.alpha @ embedding_grads, user_emb, item_emb, inputs)
            else:
                # H's group gradients ride on the same passes for few groups; with many groups
                # (N x I x h floats) H's combined gradient takes one more pass from the same
                # embedding gradients instead: the same value, without N copies of H's size.
                store_entry = want_entry and (len(losses) <= MAX_STORED_ENTRY_GROUPS or self.balance_gram == "theta_z")
                pass_inputs = [*theta, entry] if store_entry else theta
                per_group = self._parameter_group_gradients(embedding_grads, losses, user_emb, item_emb, pass_inputs,
                                                            keep_graph=want_entry and not store_entry)
                theta_width = sum(p.numel() for p in theta)
                gram_grads = per_group[:, :theta_width]
                if self.balance_gram == "theta_z":
                    layer = self.model.z_entry_layer()
                    z_grads = torch.stack([z_gradient_from_entry(g, layer).reshape(-1)
                                           for g in per_group[:, theta_width:]])
                    gram_grads = torch.cat([gram_grads, z_grads], dim=1)
                result = balance(losses, [], grads=gram_grads, **settings)
                combined = [g.clone() for g in unflatten(result.alpha.to(per_group.dtype) @ per_group, pass_inputs)]
                if want_entry and not store_entry:
                    combined += self._backward_from_embeddings(result.alpha @ embedding_grads, user_emb, item_emb,
                                                               [entry])
        if log:
            self._log_balance(log, losses, present, result)
        entry_grad = combined[-1] if want_entry else None
        return BalancedStep(per_sample.detach(), losses.detach(), present, result,
                            combined[:len(theta)], entry_grad, entry.detach())

    def _embedding_group_gradients(self, per_sample, losses, present, sample_groups, batch, user_emb, item_emb):
        """[N, (U+I) D] group gradients w.r.t. the output embeddings: one pass through the
        scoring part for all groups (the model's ``group_embedding_gradients``), else N passes."""
        method = getattr(self.model, "group_embedding_gradients", None)
        if method is None:
            return self.group_gradients(losses, [user_emb, item_emb])
        present_index = torch.full((self.n_groups + 1,), -1, dtype=torch.long, device=present.device)
        present_index[present] = torch.arange(len(present), device=present.device)
        return method(user_emb, item_emb, *batch, present_index[sample_groups], len(present))

    def _split_embedding_gradient(self, flat: torch.Tensor, user_emb, item_emb):
        """[..., (U+I) D] -> ([..., U, D], [..., I, D])."""
        user_part, item_part = flat.split([user_emb.numel(), item_emb.numel()], dim=-1)
        return user_part.reshape(*flat.shape[:-1], *user_emb.shape), item_part.reshape(*flat.shape[:-1], *item_emb.shape)

    def _backward_from_embeddings(self, flat_grad, user_emb, item_emb, inputs, retain_graph=False):
        """Gradients w.r.t. ``inputs`` of <flat_grad, (user_emb, item_emb)> (one backward pass)."""
        user_grad, item_grad = self._split_embedding_gradient(flat_grad.to(user_emb.dtype), user_emb, item_emb)
        return list(torch.autograd.grad([user_emb, item_emb], inputs, grad_outputs=[user_grad, item_grad],
                                        retain_graph=retain_graph, allow_unused=True))

    def _parameter_group_gradients(self, embedding_grads, losses, user_emb, item_emb, inputs,
                                   keep_graph: bool = False) -> torch.Tensor:
        """[N, P] group gradients w.r.t. ``inputs`` (theta, and H when asked): N backward passes
        from the output embeddings (the scoring part's backward is already in
        ``embedding_grads``), or one batched pass (``group_grad_method: batched``)."""
        if self.group_grad_method == "batched":
            user_grad, item_grad = self._split_embedding_gradient(embedding_grads.to(user_emb.dtype), user_emb, item_emb)
            grads = torch.autograd.grad([user_emb, item_emb], inputs, grad_outputs=[user_grad, item_grad],
                                        is_grads_batched=True, allow_unused=True, retain_graph=keep_graph)
            rows = len(losses)
            return torch.cat([(g if g is not None else p.new_zeros(rows, *p.shape)).reshape(rows, -1)
                              for g, p in zip(grads, inputs, strict=True)], dim=1)
        rows = []
        for index in range(len(losses)):
            grads = self._backward_from_embeddings(embedding_grads[index], user_emb, item_emb, inputs,
                                                   retain_graph=keep_graph or index < len(losses) - 1)
            rows.append(torch.cat([(g if g is not None else p.new_zeros(p.shape)).reshape(-1)
                                   for g, p in zip(grads, inputs, strict=True)]))
        return torch.stack(rows)

    # ------------------------------------------------------------ the two levels' steps

    def theta_step(self, step: BalancedStep) -> None:
        """Step 3: theta <- AdamW step along sum alpha g^theta."""
        for param, grad in zip(self.theta(), step.theta_grad, strict=True):
            param.grad = grad.to(param.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

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

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.epoch_log.clear()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.logger.info(self.epoch_summary(epoch_idx))
        return loss

    #: epoch-log tags and what their weights were used for
    LOG_LABELS = {
        "balance": "one balance per iteration, alpha used by the theta step and the Z step",
        "theta": "balance for the theta step (Z frozen)",
        "z": "balance for the Z step (theta frozen)",
    }

    def epoch_summary(self, epoch_idx: int) -> str:
        def mean_vector(values):
            return torch.nanmean(torch.stack(values), dim=0).tolist()

        def fmt(values):
            return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"

        def mean(values):
            return sum(values) / len(values)

        parts = [f"epoch {epoch_idx}"]
        log = self.epoch_log
        for tag, label in self.LOG_LABELS.items():
            if f"{tag}_losses" not in log:
                continue
            parts.append(
                f"{label}: group losses {fmt(mean_vector(log[f'{tag}_losses']))} alpha "
                f"{fmt(mean_vector(log[f'{tag}_alpha']))} w[N] {mean(log[f'{tag}_entropy_weight']):.4f} "
                f"sum(alpha) {mean(log[f'{tag}_alpha_sum']):.4f} "
                f"|combined grad| {mean(log[f'{tag}_combined_norm']):.3e}"
            )
        if log.get("second_order_ratio"):
            ratios = log["second_order_ratio"]
            parts.append(f"|xi hZ|/|dZ| mean {mean(ratios):.3e} max {max(ratios):.3e}")
        return "; ".join(parts)

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), **self.z_checkpoint_state()}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        self.load_z_checkpoint_state(checkpoint)


@register_trainer
class BiFairTrainer(BalancedLossTrainer):
    """Bi-level training of theta (inner) and Z (outer), both under the balanced loss, with one
    balance per iteration (module docstring)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.xi_mode = config_value(config, "xi", "lr")  # lr | a number >= 0 (0 = first order)
        if self.xi_mode != "lr":
            try:
                self.xi_mode = float(self.xi_mode)
            except (TypeError, ValueError):
                raise ConfigKeyError(f"xi must be 'lr' or a number >= 0, got {self.xi_mode!r}") from None
            if not self.xi_mode >= 0:
                raise ConfigKeyError(f"xi must be 'lr' or a number >= 0, got {self.xi_mode!r}")
        self.outer_batch = config_value(config, "outer_batch", "same")  # same | next
        if self.outer_batch not in ("same", "next"):
            raise ConfigKeyError(f"outer_batch must be 'same' or 'next', got {self.outer_batch!r}")
        self.outer_every = config_value(config, "outer_every", 1)  # outer step every k iterations
        if isinstance(self.outer_every, bool) or not isinstance(self.outer_every, int) or self.outer_every < 1:
            raise ConfigKeyError(f"outer_every must be an integer >= 1, got {self.outer_every!r}")
        self.fd_epsilon = non_negative_float(config, "fd_epsilon", 0.01)  # eps = fd_epsilon / ||v||
        if self.fd_epsilon == 0:
            raise ConfigKeyError("fd_epsilon must be > 0 (the finite-difference step); use xi: 0 for no second-order term")
        self.virtual_base = config_value(config, "virtual_base", "theta")  # theta | theta_t
        if self.virtual_base not in ("theta", "theta_t"):
            raise ConfigKeyError(f"virtual_base must be 'theta' or 'theta_t', got {self.virtual_base!r}")

    def current_xi(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.xi_mode == "lr" else float(self.xi_mode)

    def train_step(self, interaction) -> float:
        batch = self.model.sample_batch(interaction)
        outer_now = self.learns_z and self.global_step % self.outer_every == 0
        xi = self.current_xi() if outer_now else 0.0
        first_order = outer_now and (xi == 0 and self.outer_batch == "same")
        step = self.balanced_step(batch, want_entry=first_order, log="balance")
        theta = self.theta()
        base = [p.detach().clone() for p in theta] if outer_now and not first_order else None
        entry_weight = self.model.z_entry_layer().weight.detach().clone() if first_order else None
        self.theta_step(step)  # step 3 (inner)
        if outer_now:  # step 4 (outer), same alpha
            if first_order:
                z_grad = step.entry_grad @ entry_weight
                self.epoch_log["second_order_ratio"].append(0.0)
            else:
                outer_batch = batch if self.outer_batch == "same" else self.model.sample_batch(interaction)
                if self.virtual_base == "theta_t":
                    base = [p.detach().clone() for p in theta]
                dz, second_order = self.z_hypergradient(step, base, batch, outer_batch, xi)
                self.epoch_log["second_order_ratio"].append(
                    float(second_order.norm() / dz.norm().clamp(min=1e-30)))
                z_grad = dz - second_order
            self.z_step(z_grad)
        return float(step.per_sample.mean())

    def entry_shift(self, direction: list[torch.Tensor]) -> torch.Tensor:
        """How H = Z W^T + b moves when theta moves by ``direction``: Z dW^T + db (one GEMM), so
        H at a shifted theta is H(base) + shift and needs no second product with W."""
        layer, theta = self.model.z_entry_layer(), self.theta()
        by_id = {id(p): d for p, d in zip(theta, direction, strict=True)}
        shift = self.model.item_table.detach() @ by_id[id(layer.weight)].to(layer.weight.dtype).T
        if layer.bias is not None:
            shift = shift + by_id[id(layer.bias)]
        return shift

    def z_gradient_at(self, values: list[torch.Tensor], entry: torch.Tensor, batch, alpha_full,
                      with_theta: bool = False):
        """grad_Z of sum alpha L(values, Z; batch), given H at ``values`` (``entry``); with
        ``with_theta`` also its theta gradient v (the entry layer's part from dH: dW = dH^T Z)."""
        theta, layer = self.theta(), self.model.z_entry_layer()
        entry_params = {id(layer.weight)} | ({id(layer.bias)} if layer.bias is not None else set())
        rest = [p for p in theta if id(p) not in entry_params]
        with parameters_at(theta, values):
            entry = entry.detach().requires_grad_(True)
            user_emb, item_emb = self.model.embeddings_from_entry(entry)
            per_sample = self.model.loss_from_embeddings(user_emb, item_emb, *batch)
            loss = self.weighted_loss(per_sample, batch, alpha_full)
            entry_grad, *rest_grads = torch.autograd.grad(loss, [entry, *rest] if with_theta else [entry],
                                                          allow_unused=True)
            z_grad = z_gradient_from_entry(entry_grad, layer)
        if not with_theta:
            return z_grad, []
        rest_by_id = {id(p): (g if g is not None else torch.zeros_like(p)) for p, g in zip(rest, rest_grads, strict=True)}
        rest_by_id[id(layer.weight)] = entry_grad.T @ self.model.item_table.detach()
        if layer.bias is not None:
            rest_by_id[id(layer.bias)] = entry_grad.sum(0)
        return z_grad, [rest_by_id[id(p)] for p in theta]

    def z_hypergradient(self, step: BalancedStep, base: list[torch.Tensor], batch, outer_batch, xi: float):
        """Step 4 for xi > 0 (or an outer batch of its own): (dZ, xi hZ); Z's gradient is dZ - xi hZ.

        H at every point theta + delta is H(base) + Z dW^T + db (:meth:`entry_shift`): H(base)
        is step 1's when the base is theta, and the two finite-difference points share one
        shift product."""
        alpha_full = step.full_alpha(self.n_groups)
        layer = self.model.z_entry_layer()
        if self.virtual_base == "theta":
            base_entry = step.entry
        else:
            with parameters_at(self.theta(), base), torch.no_grad():
                base_entry = layer(self.model.item_table.detach())
        direction = [-xi * g.to(b.dtype) for b, g in zip(base, step.theta_grad, strict=True)]
        virtual = [b + d for b, d in zip(base, direction, strict=True)]
        dz, v = self.z_gradient_at(virtual, base_entry + self.entry_shift(direction), outer_batch, alpha_full,
                                   with_theta=True)
        if xi == 0:
            return dz, torch.zeros_like(dz)
        eps = self.fd_epsilon / global_norm(v).clamp(min=1e-12).item()
        shift = self.entry_shift([eps * vi for vi in v])
        plus, _ = self.z_gradient_at([b + eps * vi for b, vi in zip(base, v, strict=True)], base_entry + shift,
                                     batch, alpha_full)
        minus, _ = self.z_gradient_at([b - eps * vi for b, vi in zip(base, v, strict=True)], base_entry - shift,
                                      batch, alpha_full)
        return dz, xi * (plus - minus) / (2 * eps)


@register_trainer
class SeparateTrainer(BalancedLossTrainer):
    """Ablation (Section 4.5): theta with Z frozen, then Z with theta frozen, same balanced loss.

    Phase 1 trains theta until early stopping (or ``epochs``); phase 2 restarts from the best
    state of phase 1 and trains Z (row-sparse AdamW, ``z_learning_rate``, its own polynomial
    schedule) for up to ``epochs`` more epochs with fresh early-stopping counters; the best
    validation state over both phases is kept. Each step solves the balance once.
    ``z_learning_rate: 0`` leaves phase 2 out.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.phase = "theta"

    def optimizers(self) -> list:
        return [self.optimizer] if self.phase == "theta" else [self.z_optimizer]

    def train_step(self, interaction) -> float:
        batch = self.model.sample_batch(interaction)
        if self.phase == "theta":
            step = self.balanced_step(batch, want_entry=False, log="theta")
            self.theta_step(step)
        else:
            step = self.balanced_step(batch, want_entry=True, log="z")
            self.z_step(z_gradient_from_entry(step.entry_grad, self.model.z_entry_layer()))
        return float(step.per_sample.mean())

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        resumed = getattr(self, "_resume_state", None) or {}
        result = None
        if resumed.get("trainer_phase") != "z":  # a run resumed in phase 2 skips phase 1
            self.phase = "theta"
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            if not self.learns_z:
                return result
            if saved and valid_data:
                self.load_best_state()
            self.start_epoch, self.cur_step = 0, 0
        self.phase = "z"
        self.logger.info("Separate: phase 2, theta frozen, training Z")
        self.schedulers = []  # a fresh polynomial schedule for Z's phase
        self.setup_training(train_data)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
