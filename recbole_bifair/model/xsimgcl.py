"""XSimGCL: Yu et al., "XSimGCL: Towards Extremely Simple Graph Contrastive Learning for
Recommendation", TKDE 2023, Section 4 (Eq. 8-11).

- ID embeddings E0 for users and items; LightGCN propagation E_l = A_hat E_{l-1} with
  A_hat = D^-1/2 A D^-1/2 (no self loops). During training a uniform noise is added at every
  layer: E_l <- E_l + sign(E_l) * normalize(U(0, 1)) * eps (Eq. 8).
- Final representation = mean of the layers 1..L (E0 excluded, as in the paper's code); the
  contrastive view is the layer ``layer_cl`` output of the same perturbed pass (Eq. 10).
- Loss = BPR(final) + lambda * [InfoNCE_tau(final, layer_cl) over the batch's unique users +
  over its unique positive items] + reg * ||E0 of the batch||^2 (Eq. 11).
- Defaults from the paper: n_layers 2, eps 0.2, lambda 0.2, tau 0.2, layer_cl 1, reg 1e-4.
- Pairwise input with RecBole's uniform sampler (1 negative); full-sort predict without noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.init import xavier_uniform_initialization
from recbole.model.loss import BPRLoss, EmbLoss
from recbole.utils import InputType

from recbole_bifair.model.llm_base import train_adjacency
from recbole_bifair.model.sparse_ops import sparse_mm
from recbole_bifair.registry import register_model


def info_nce(view_one: torch.Tensor, view_two: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE between matching rows of two views (in-batch negatives, cosine/temperature)."""
    view_one, view_two = F.normalize(view_one, dim=1), F.normalize(view_two, dim=1)
    logits = view_one @ view_two.T / temperature
    return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()


@register_model
class XSimGCL(GeneralRecommender):
    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.latent_dim = config["embedding_size"]  # ID embedding width
        self.n_layers = config["n_layers"]  # propagation layers
        self.eps = config["eps"]  # noise magnitude epsilon
        self.cl_weight = config["lambda"]  # lambda: weight of the contrastive loss
        self.cl_tau = config["cl_tau"]  # tau of the contrastive InfoNCE
        self.layer_cl = config["layer_cl"]  # layer whose output is the contrastive view
        self.reg_weight = config["reg_weight"]  # L2 weight on the batch's ego embeddings
        self.user_embedding = torch.nn.Embedding(self.n_users, self.latent_dim)
        self.item_embedding = torch.nn.Embedding(self.n_items, self.latent_dim)
        self.mf_loss = BPRLoss()
        self.reg_loss = EmbLoss()
        self.register_buffer("norm_adj_matrix", train_adjacency(dataset), persistent=False)
        self.restore_user_e = None
        self.restore_item_e = None
        self.apply(xavier_uniform_initialization)
        self.other_parameter_name = ["restore_user_e", "restore_item_e"]

    def forward(self, perturbed: bool = False):
        """(user_final, item_final, user_cl, item_cl); the cl views are None when not perturbed."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        layers, cl_view = [], None
        for layer in range(1, self.n_layers + 1):
            ego = sparse_mm(self.norm_adj_matrix, ego, self.norm_adj_matrix)
            if perturbed:
                noise = F.normalize(torch.rand_like(ego), dim=-1)
                ego = ego + torch.sign(ego) * noise * self.eps
            layers.append(ego)
            if perturbed and layer == self.layer_cl:
                cl_view = ego
        final = torch.stack(layers).mean(dim=0)
        user_final, item_final = torch.split(final, [self.n_users, self.n_items])
        if cl_view is None:
            return user_final, item_final, None, None
        user_cl, item_cl = torch.split(cl_view, [self.n_users, self.n_items])
        return user_final, item_final, user_cl, item_cl

    def calculate_loss(self, interaction):
        self.restore_user_e, self.restore_item_e = None, None
        users = interaction[self.USER_ID]
        pos_items = interaction[self.ITEM_ID]
        neg_items = interaction[self.NEG_ITEM_ID]
        user_final, item_final, user_cl, item_cl = self.forward(perturbed=True)
        user_emb = user_final[users]
        pos_scores = (user_emb * item_final[pos_items]).sum(-1)
        neg_scores = (user_emb * item_final[neg_items]).sum(-1)
        loss = self.mf_loss(pos_scores, neg_scores)
        reg = self.reg_loss(
            self.user_embedding(users), self.item_embedding(pos_items), self.item_embedding(neg_items)
        )
        unique_users, unique_items = torch.unique(users), torch.unique(pos_items)
        cl = info_nce(user_final[unique_users], user_cl[unique_users], self.cl_tau) + info_nce(
            item_final[unique_items], item_cl[unique_items], self.cl_tau
        )
        return loss + self.reg_weight * reg + self.cl_weight * cl

    def predict(self, interaction):
        user_final, item_final, _, _ = self.forward()
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        return (user_final[users] * item_final[items]).sum(-1)

    def full_sort_predict(self, interaction):
        if self.restore_user_e is None or self.restore_item_e is None:
            self.restore_user_e, self.restore_item_e, _, _ = self.forward()
        return (self.restore_user_e[interaction[self.USER_ID]] @ self.restore_item_e.T).view(-1)
