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
        return self.projector(user_text), self.projector(item_text)
