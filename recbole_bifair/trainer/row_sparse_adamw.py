"""AdamW that updates only the rows of a table whose gradient is non-zero (a "lazy" AdamW).

ALGORITHMS.md section 5: Z's gradient is non-zero only on the rows a batch touches (its items,
the items of its users, and for graph models their neighbourhood); a dense AdamW step would
rewrite the whole table (40k x 4096 for the paper's LLMs) every iteration and keep moving rows
through momentum long after their last gradient. This optimiser keeps AdamW's moments per row
and updates a row (moments, bias correction with the row's own step count, decoupled weight
decay, parameter) only at the steps where its gradient is non-zero. For a row touched at every
step it is exactly ``torch.optim.AdamW``; rows never touched stay bit-for-bit unchanged.
"""

from __future__ import annotations

import torch


class RowSparseAdamW(torch.optim.Optimizer):
    """AdamW over 2-D parameters, updating only rows with a non-zero gradient."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid RowSparseAdamW settings: lr={lr}, betas={betas}, eps={eps}, wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.dim() != 2:
                    raise ValueError("RowSparseAdamW expects 2-D parameters (tables)")
                state = self.state[param]
                if not state:
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                    state["row_steps"] = torch.zeros(param.shape[0], dtype=torch.float32, device=param.device)
                rows = torch.nonzero(grad.abs().sum(dim=1)).squeeze(1)
                if rows.numel() == 0:
                    continue
                row_grad = grad[rows]
                steps = state["row_steps"][rows] + 1
                state["row_steps"][rows] = steps
                exp_avg = state["exp_avg"][rows].mul_(beta1).add_(row_grad, alpha=1 - beta1)
                exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(row_grad, row_grad, value=1 - beta2)
                state["exp_avg"][rows] = exp_avg
                state["exp_avg_sq"][rows] = exp_avg_sq
                bias1 = (1 - beta1 ** steps).unsqueeze(1)
                bias2 = (1 - beta2 ** steps).unsqueeze(1)
                denom = (exp_avg_sq / bias2).sqrt_().add_(group["eps"])
                rows_value = param[rows]
                if group["weight_decay"]:
                    rows_value.mul_(1 - group["lr"] * group["weight_decay"])
                rows_value.addcdiv_(exp_avg / bias1, denom, value=-group["lr"])
                param[rows] = rows_value
        return loss
