"""LLMLinear: the paper's "Linear" LLM-enhanced recommender (AlphaRec's "homo" variant).

Zhang et al. 2025 (BiFair), Section 4.1 baselines; ALGORITHMS.md section 3: theta is one
``Linear(d, 64, bias=False)``; e_u = W z_u, e_i = W z_i with z_u = (M Z)[u]; no graph
propagation; score = cosine(e_u, e_i) / tau; per-sample InfoNCE with K sampled negatives
(:class:`~recbole_bifair.model.llm_base.LLMRecommender`).
"""

from __future__ import annotations

import torch

from recbole_bifair.model.llm_base import LLMRecommender
from recbole_bifair.registry import register_model


@register_model
class LLMLinear(LLMRecommender):
    """e = W z, cosine scores over the frozen (or trainer-learnable) LLM item table."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.projector = torch.nn.Linear(self.llm_dim, self.embedding_size, bias=False)

    def encode(self, user_text, item_text):
        with self.autocast():  # bf16 under ``precision: bf16`` (recbole_bifair.model.precision)
            return self.projector(user_text).float(), self.projector(item_text).float()

    def forward_embeddings(self):
        """Same values as ``encode(M Z, Z)`` (W (M Z) = M (W Z), the map is linear), with the
        sparse product over the 64-d outputs instead of the d-wide LLM vectors."""
        with self.autocast():
            item_emb = self.projector(self.item_table)
        return self.embeddings_from_entry(item_emb.float())

    def z_entry_layer(self) -> torch.nn.Linear:
        """The layer Z enters through (see :meth:`AlphaRec.z_entry_layer`): the projector itself."""
        return self.projector

    def embeddings_from_entry(self, item_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_emb, item_emb) from W Z: users are the mean of their train items' outputs."""
        return self.user_mean_of(item_emb), item_emb
