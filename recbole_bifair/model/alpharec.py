"""AlphaRec: Sheng et al. 2024, "Language Representations Can be What Recommenders Need:
Findings and Potentials" (ICLR 2025), Section 3 (Eq. 2-4); ALGORITHMS.md section 3.

- theta = MLP ``Linear(d, h) -> LeakyReLU(0.01) -> Linear(h, 64)`` (both with bias),
  h = int(m * d); ``hidden_multiplier: auto`` gives m = 8 for encoder-size vectors
  (d <= 1024) and m = 9/32 for LLM-size ones (4096 -> 1152, 3584 -> 1008).
- E0 = [MLP(z_U); MLP(Z)] for all users and items, recomputed every step (so gradients
  reach Z when a trainer makes it learnable); LightGCN propagation with
  A_hat = D^-1/2 A D^-1/2 of the train bipartite graph (no self loops), ``n_layers`` = 2;
  output = mean(E0, A_hat E0, A_hat^2 E0).
- score = cosine(e_u, e_i) / tau; per-sample InfoNCE with K sampled negatives; no auxiliary
  contrastive loss, no L2 term (weight decay is the optimiser's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recbole_bifair.model import settings
from recbole_bifair.model.llm_base import (
    LLMRecommender,
    lightgcn_propagate,
    train_adjacency,
)
from recbole_bifair.model.settings import bad_value
from recbole_bifair.registry import register_model

ENCODER_MULTIPLIER = 8.0  # d <= 1024 (BERT-size encoders, MiniLM)
LLM_MULTIPLIER = 9 / 32  # d > 1024 (7B LLMs)


def hidden_width(llm_dim: int, hidden_multiplier) -> int:
    """h = int(m * d) with m from ``hidden_multiplier`` ('auto': 8 if d <= 1024 else 9/32)."""
    if hidden_multiplier == "auto":
        return int((ENCODER_MULTIPLIER if llm_dim <= 1024 else LLM_MULTIPLIER) * llm_dim)
    allowed = f"'auto' or a number m > 0 with m * d >= 1 (d = {llm_dim})"
    if isinstance(hidden_multiplier, bool):
        raise bad_value("hidden_multiplier", hidden_multiplier, allowed)
    try:
        width = int(float(hidden_multiplier) * llm_dim)
    except (TypeError, ValueError, OverflowError):
        raise bad_value("hidden_multiplier", hidden_multiplier, allowed) from None
    if width < 1:
        raise bad_value("hidden_multiplier", hidden_multiplier, allowed)
    return width


@register_model
class AlphaRec(LLMRecommender):
    """MLP projector + LightGCN propagation over the LLM representations, cosine scores."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.n_layers = settings.number(config, "n_layers", int, minimum=0)  # LightGCN propagation layers
        self.hidden_size = hidden_width(self.llm_dim, config["hidden_multiplier"])  # MLP width h
        self.projector = torch.nn.Sequential(
            torch.nn.Linear(self.llm_dim, self.hidden_size),
            torch.nn.LeakyReLU(0.01),
            torch.nn.Linear(self.hidden_size, self.embedding_size),
        )
        self.register_buffer("norm_adj_matrix", train_adjacency(dataset), persistent=False)

    def encode(self, user_text, item_text):
        with self.autocast():
            ego = self.projector(torch.cat([user_text, item_text], dim=0))
        return self.propagate(ego.float())

    def propagate(self, ego: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        propagated = lightgcn_propagate(self.norm_adj_matrix, ego, self.n_layers)
        return torch.split(propagated, [self.n_users, self.n_items])

    def forward_embeddings(self):
        """Same values as ``encode(M Z, Z)``, cheaper: the first layer is affine and each row of M
        sums to 1, so Linear1(M Z) = M Linear1(Z) for every user with a train item. The widest
        product (d x h) then runs over the items only, not over users + items."""
        with self.autocast():  # bf16 GEMMs under ``precision: bf16``; the propagation in fp32
            item_hidden = self.z_entry_layer()(self.item_table)
        return self.embeddings_from_entry(item_hidden)

    def z_entry_layer(self) -> torch.nn.Linear:
        """The one layer Z enters through (the MLP's first Linear): a trainer that learns Z takes
        the gradient w.r.t. this layer's output H = Z W1^T + b1 and maps it to Z as dH W1."""
        return self.projector[0]

    def embeddings_from_entry(self, item_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_emb, item_emb) from H = Linear1(Z): users take M H, then LeakyReLU, Linear2 and
        the propagation."""
        _first, activation, second = self.projector
        user_hidden = self.user_mean_of(item_hidden)  # in H's dtype (bf16 halves its bytes)
        with self.autocast():
            hidden = torch.cat([user_hidden, item_hidden], dim=0)
            # LeakyReLU in place: the concatenation is a temporary (saves a [U + I, h] tensor)
            ego = second(F.leaky_relu(hidden, activation.negative_slope, inplace=True))
        return self.propagate(ego.float())
