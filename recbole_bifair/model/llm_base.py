"""What the LLM-enhanced recommenders share (ALGORITHMS.md sections 2 and 3).

Sheng et al. 2024, "Language Representations Can be What Recommenders Need" (AlphaRec), and
Zhang et al. 2025 (BiFair) Section 3.1: item i is represented by a frozen LLM vector z_i (stage
I, :mod:`recbole_bifair.data.encode`); user u by z_u = mean of z_i over u's train items,
computed as z_U = M Z with M the sparse row-normalised U x I train matrix, so gradients reach Z
when a trainer makes Z learnable (BiFair, Eq. 2-7). A projector theta maps both to 64-d; the
score is cosine(e_u, e_i) / tau and the loss is InfoNCE with K sampled negatives
(ALGORITHMS.md section 3):

    l_b = logsumexp([s_pos, s_neg_1..K]) - s_pos.

Sampling happens on the device: negatives are uniform with replacement over items outside the
user's train set (vectorised rejection against the sorted user*I+item keys); the positives are
AlphaRec's user-uniform draw (``train_sampling: user``, default **[choice]**) or the batch's own
interactions (``train_sampling: interaction``, RecBole's order). The [B, K] negative scores never
gather [B, K, D] rows (``negative_scores``, :mod:`~recbole_bifair.model.negative_scores`), and
``precision: bf16`` runs the projector and the dense scores under bf16 autocast
(:mod:`~recbole_bifair.model.precision`).

API for trainers:

- ``sample_batch(interaction) -> (users, pos_items, neg_items)``: [B], [B], [B, K];
- ``forward(users, pos_items, neg_items) -> loss [B]``: per-sample InfoNCE, a pure function of
  the parameters and buffers, so ``torch.func.functional_call(model, params, (u, p, n))``
  evaluates it at a virtual copy of theta (and Z when learnable);
- ``per_sample_loss(interaction) -> (loss [B], pos_items [B])``; ``calculate_loss`` its mean;
- ``forward_embeddings() -> (user_emb [n_users, D], item_emb [n_items, D])`` (not normalised);
- ``set_item_table_learnable(flag)``; ``item_table`` (buffer, or nn.Parameter when learnable);
  ``projector_parameters()`` (theta, list) and ``named_projector_parameters()`` (dict of full
  names, the keys ``functional_call`` expects).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType

from recbole_bifair.errors import EmbeddingError
from recbole_bifair.model import settings
from recbole_bifair.model.negative_scores import (
    METHODS,
    choose_method,
    info_nce,
    negative_embedding_gradients,
    negative_scores,
)
from recbole_bifair.model.precision import PRECISIONS, autocast_context
from recbole_bifair.model.sparse_ops import sparse_mm

MAX_REJECTION_ROUNDS = 1000
MAX_BITMAP_BITS = 2**31  # train-set bitmap up to 256 MB; larger graphs use binary search
MAX_BYTEMAP_BYTES = 2**26  # up to 64 MB, one byte per (user, item): a lookup without bit arithmetic


def normalized_bipartite_adjacency(
    n_users: int, n_items: int, users: torch.Tensor, items: torch.Tensor
) -> torch.Tensor:
    """A_hat = D^-1/2 A D^-1/2 of the user-item bipartite graph, no self loops (LightGCN, Eq. 7).

    Nodes are users 0..U-1 then items U..U+I-1; duplicate edges count once. Returns a coalesced
    torch sparse COO tensor of shape (U+I, U+I).
    """
    size = n_users + n_items
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    edges = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), torch.ones(len(rows)), (size, size), check_invariants=True
    ).coalesce()
    index = edges.indices()
    degree = torch.zeros(size).index_add_(0, index[0], torch.ones(index.shape[1]))
    inverse_sqrt = degree.clamp(min=1).pow(-0.5)
    values = inverse_sqrt[index[0]] * inverse_sqrt[index[1]]
    return torch.sparse_coo_tensor(index, values, (size, size), check_invariants=False).coalesce()


def train_adjacency(dataset) -> torch.Tensor:
    """A_hat of a RecBole dataset's train interactions (see :func:`normalized_bipartite_adjacency`)."""
    train = dataset.inter_matrix(form="coo")
    return normalized_bipartite_adjacency(
        dataset.user_num, dataset.item_num,
        torch.from_numpy(train.row.astype(np.int64)), torch.from_numpy(train.col.astype(np.int64)),
    )


def user_mean_matrix(n_users: int, n_items: int, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """M (U x I): M[u, i] = 1/|I_u| for u's train items, so (M Z)[u] = mean of z_i over I_u."""
    edges = torch.sparse_coo_tensor(
        torch.stack([users, items]), torch.ones(len(users)), (n_users, n_items), check_invariants=True
    ).coalesce()
    index = edges.indices()
    count = torch.zeros(n_users).index_add_(0, index[0], torch.ones(index.shape[1]))
    values = 1.0 / count.clamp(min=1)[index[0]]
    return torch.sparse_coo_tensor(index, values, (n_users, n_items), check_invariants=False).coalesce()


def lightgcn_propagate(adjacency: torch.Tensor, embeddings: torch.Tensor, n_layers: int) -> torch.Tensor:
    """mean(E0, A E0, ..., A^L E0) (LightGCN, Eq. 8 with alpha_k = 1/(L+1))."""
    layers = [embeddings]
    for _ in range(n_layers):
        layers.append(sparse_mm(adjacency, layers[-1], adjacency))  # A_hat is symmetric
    return torch.stack(layers).mean(dim=0)


def packed_bitmap(keys: torch.Tensor, size: int) -> torch.Tensor:
    """int64 words with bit k % 64 of word k // 64 set for each of the (unique) ``keys`` < size."""
    words = torch.zeros((size + 63) // 64, dtype=torch.int64)
    words.index_add_(0, keys // 64, torch.ones_like(keys) << (keys % 64))  # keys unique: sum = OR
    return words


def unit_backward(rows: torch.Tensor, unit_grad: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Gradient w.r.t. ``rows`` of ``F.normalize(rows)`` given the gradient w.r.t. the unit rows:
    (g - (g . u) u) / max(||x||, eps)."""
    norm = rows.norm(dim=-1, keepdim=True)
    unit = rows / norm.clamp(min=eps)
    return (unit_grad - (unit_grad * unit).sum(-1, keepdim=True) * unit) / norm.clamp(min=eps)


def default_embedding_file(config) -> Path:
    """``<data_path>/<dataset>.<llm_model>.npy`` unless ``item_embedding_file`` is set (not ``~``)."""
    embedding_file = settings.text(config, "item_embedding_file", "a .npy path, or ~ for the default", optional=True)
    if embedding_file is not None:
        return Path(embedding_file)
    model_name = Path(settings.text(config, "llm_model", "an encoder name, folder or hub id")).name
    return Path(config["data_path"]) / f"{config['dataset']}.{model_name}.npy"


def aligned_item_table(vectors: np.ndarray, item_ids: list[str], id_tokens, source) -> torch.Tensor:
    """Rows of ``vectors`` reordered to RecBole internal ids (``id_tokens[i]``); row 0 = zeros."""
    row_of = {token: row for row, token in enumerate(item_ids)}
    missing = [str(token) for token in id_tokens[1:] if str(token) not in row_of]
    if missing:
        raise EmbeddingError(
            f"{source}: no vector for {len(missing)} item(s) of the dataset (e.g. {missing[:5]}); "
            "rebuild the embedding file from this dataset's .item file"
        )
    table = np.zeros((len(id_tokens), vectors.shape[1]), dtype=np.float32)
    table[1:] = vectors[[row_of[str(token)] for token in id_tokens[1:]]]
    return torch.from_numpy(table)


class LLMRecommender(GeneralRecommender):
    """Base class: LLM item table Z, user-mean matrix M, device sampler, per-sample InfoNCE.

    Subclasses define ``self.projector`` (theta) and :meth:`encode`.
    """

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.embedding_size = config["embedding_size"]  # output width D of the projector
        self.tau = settings.number(config, "tau", above=0)  # InfoNCE temperature (dataset yaml)
        self.num_negatives = settings.number(config, "num_negatives", int, minimum=1)  # K per positive
        self.train_sampling = settings.choice(config, "train_sampling", ("user", "interaction"))
        self.negative_method = settings.choice(config, "negative_scores", METHODS)  # how the [B, K] scores are computed
        self.precision = settings.choice(config, "precision", PRECISIONS)  # fp32 | bf16 autocast
        self.autocast = autocast_context(self.precision, torch.device(self.device))
        embedding_file = default_embedding_file(config)
        from recbole_bifair.data.encode import load_item_embeddings

        vectors, item_ids = load_item_embeddings(embedding_file)
        self.register_buffer(
            "item_table", aligned_item_table(vectors, item_ids, dataset.field2id_token[self.ITEM_ID], embedding_file)
        )
        self.llm_dim = self.item_table.shape[1]

        train = dataset.inter_matrix(form="coo")
        users = torch.from_numpy(train.row.astype(np.int64))
        items = torch.from_numpy(train.col.astype(np.int64))
        self.register_buffer("user_mean", user_mean_matrix(self.n_users, self.n_items, users, items), persistent=False)
        self.register_buffer("user_mean_t", self.user_mean.t().coalesce(), persistent=False)
        self._build_sampler(users, items)
        self._eval_embeddings = None

    # ------------------------------------------------------------------ stage-I inputs

    @classmethod
    def prepare_inputs(cls, config, dataset) -> Path:
        """Build (or reuse, if up to date) the stage-I embedding file for the dataset's items."""
        from recbole_bifair.data.encode import ensure_item_embeddings

        item_file = Path(config["data_path"]) / f"{config['dataset']}.item"
        return ensure_item_embeddings(
            item_file,
            default_embedding_file(config),
            model=settings.text(config, "llm_model", "an encoder name, folder or hub id"),
            title_field=settings.text(config, "title_field", "the .item column holding the item text"),
            template=settings.text(config, "title_template", "a text template such as '{title}'"),
            item_field=config["ITEM_ID_FIELD"],
        )

    def set_item_table_learnable(self, learnable: bool = True) -> None:
        """Make Z an ``nn.Parameter`` (``learnable``) or a frozen buffer; same state-dict key.

        Call before building optimisers: the parameter object is new.
        """
        table = self.item_table.detach().clone()
        if "item_table" in self._parameters:
            del self._parameters["item_table"]
        if "item_table" in self._buffers:
            del self._buffers["item_table"]
        if learnable:
            self.item_table = torch.nn.Parameter(table)
        else:
            self.register_buffer("item_table", table)

    def projector_parameters(self) -> list[torch.nn.Parameter]:
        """theta: the projector's parameters only (never Z)."""
        return list(self.projector.parameters())

    def named_projector_parameters(self) -> dict[str, torch.nn.Parameter]:
        """theta keyed by their names in ``self.named_parameters()`` (for functional_call)."""
        return dict(self.projector.named_parameters(prefix="projector"))

    # ------------------------------------------------------------------ sampling

    def _build_sampler(self, users: torch.Tensor, items: torch.Tensor) -> None:
        keys = torch.unique(users * self.n_items + items)  # sorted
        key_users = keys // self.n_items
        count = torch.bincount(key_users, minlength=self.n_users)
        self.register_buffer("train_keys", keys, persistent=False)
        flags = words = None  # neither when too large: binary search in the sorted keys
        if self.n_users * self.n_items <= MAX_BYTEMAP_BYTES:  # one bool per pair: O(1), one gather
            flags = torch.zeros(self.n_users * self.n_items, dtype=torch.bool)
            flags[keys] = True
        elif self.n_users * self.n_items <= MAX_BITMAP_BITS:  # packed bitmap: O(1) membership test
            words = packed_bitmap(keys, self.n_users * self.n_items)
        self.register_buffer("train_bytemap", flags, persistent=False)
        self.register_buffer("train_bitmap", words, persistent=False)
        self.register_buffer("train_items_by_user", keys % self.n_items, persistent=False)
        self.register_buffer("user_offsets", torch.cumsum(count, 0) - count, persistent=False)
        self.register_buffer("user_train_count", count, persistent=False)
        self.register_buffer("users_with_items", torch.nonzero(count).squeeze(1), persistent=False)

    def is_train_pair(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Boolean mask, same shape: is (user, item) a train interaction."""
        return self.is_train_key(users * self.n_items + items)

    def is_train_key(self, keys: torch.Tensor) -> torch.Tensor:
        """Boolean mask, same shape: is the pair ``key = user * n_items + item`` in train."""
        if self.train_bytemap is not None:
            return self.train_bytemap[keys]
        if self.train_bitmap is not None:
            return ((self.train_bitmap[keys >> 6] >> (keys & 63)) & 1).bool()  # word keys // 64, bit keys % 64
        position = torch.searchsorted(self.train_keys, keys).clamp(max=len(self.train_keys) - 1)
        return self.train_keys[position] == keys

    def sample_negatives(self, users: torch.Tensor, num: int | None = None) -> torch.Tensor:
        """[B, K] items drawn uniformly with replacement from 1..I-1 minus each user's train set.

        Rejection sampling, vectorised: only the rejected positions are redrawn each round.
        """
        num = self.num_negatives if num is None else num
        row_keys = users * self.n_items  # key of (user, 0)
        negatives = torch.randint(1, self.n_items, (len(users), num), device=users.device)
        redraw = torch.nonzero(self.is_train_key((row_keys.unsqueeze(1) + negatives).view(-1))).squeeze(1)
        negatives = negatives.view(-1)
        for _ in range(MAX_REJECTION_ROUNDS):
            if len(redraw) == 0:
                return negatives.view(-1, num)
            drawn = torch.randint(1, self.n_items, redraw.shape, device=users.device)
            negatives[redraw] = drawn
            redraw = redraw[self.is_train_key(row_keys[redraw // num] + drawn)]
        raise RuntimeError("negative sampling did not converge: a user has (almost) every item in train")

    def sample_user_positives(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """AlphaRec's user-uniform draw: random users (with a train item), one random train positive each."""
        device = self.train_keys.device
        pick = torch.randint(0, len(self.users_with_items), (batch_size,), device=device)
        users = self.users_with_items[pick]
        offset = (torch.rand(batch_size, device=device) * self.user_train_count[users]).long()
        offset = torch.minimum(offset, self.user_train_count[users] - 1)
        return users, self.train_items_by_user[self.user_offsets[users] + offset]

    def sample_batch(self, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users [B], pos_items [B], neg_items [B, K]) for one RecBole train batch of size B."""
        if self.train_sampling == "user":
            users, pos_items = self.sample_user_positives(len(interaction[self.USER_ID]))
        else:
            users, pos_items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        return users, pos_items, self.sample_negatives(users)

    # ------------------------------------------------------------------ embeddings and loss

    def encode(self, user_text: torch.Tensor, item_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_emb, item_emb) from the LLM vectors z_U = M Z and Z; defined by subclasses."""
        raise NotImplementedError

    def user_mean_of(self, item_rows: torch.Tensor) -> torch.Tensor:
        """M @ item_rows: each user's mean over its train items (sparse, vmap-able)."""
        return sparse_mm(self.user_mean, item_rows, self.user_mean_t)

    def forward_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user_emb [n_users, D], item_emb [n_items, D]) from theta and Z, no cached state."""
        user_text = self.user_mean_of(self.item_table)
        return self.encode(user_text, self.item_table)

    def forward(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor,
                return_embeddings: bool = False):
        """Per-sample InfoNCE l_b = logsumexp([s_pos, s_neg]) - s_pos, cosine/tau scores; [B].

        With ``return_embeddings`` also the (user_emb, item_emb) the loss was computed from, so
        a trainer can take gradients w.r.t. this shared representation (MGDA-UB balancing).
        """
        user_emb, item_emb = self.forward_embeddings()
        loss = self.loss_from_embeddings(user_emb, item_emb, users, pos_items, neg_items)
        return (loss, user_emb, item_emb) if return_embeddings else loss

    def loss_from_embeddings(self, user_emb, item_emb, users, pos_items, neg_items) -> torch.Tensor:
        """The scoring part of :meth:`forward`: per-sample InfoNCE from given embeddings.

        The [B, K] negative scores come from :mod:`negative_scores` (``negative_scores``:
        a dense GEMM over the batch's distinct users or the gather-free sampled kernels, whichever
        its cost model says is cheaper), never from a [B, K, D] gather.
        """
        user_unit = F.normalize(user_emb[users], dim=-1)
        item_unit = F.normalize(item_emb, dim=-1)
        pos_scores = (user_unit * item_unit[pos_items]).sum(-1)
        method = self.score_method(users, neg_items)
        neg_scores = negative_scores(method, user_emb, user_unit, item_unit, users, neg_items, self.autocast)
        return info_nce(pos_scores, neg_scores, self.tau)

    def score_method(self, users: torch.Tensor, neg_items: torch.Tensor, per_sample_rows: bool = False) -> str:
        """``dense`` or ``sampled`` (or ``gather``) for this batch (``negative_scores: auto``: by cost).

        ``per_sample_rows``: the dense variant needs one score row per sample, not per distinct
        user (:meth:`group_embedding_gradients`).
        """
        if self.negative_method != "auto":
            return self.negative_method
        n_rows = len(users) if per_sample_rows else len(torch.unique(users))
        return choose_method("auto", n_rows, len(users), self.n_items, neg_items.shape[1], self.embedding_size)

    @torch.no_grad()
    def group_embedding_gradients(self, user_emb, item_emb, users, pos_items, neg_items,
                                  sample_group: torch.Tensor, n_groups: int) -> torch.Tensor:
        """Gradients of every group's mean loss w.r.t. (user_emb, item_emb), in one pass.

        Returns ``[n_groups, (n_users + n_items) * D]`` (user rows then item rows), the same as
        N backward passes of ``L_n = mean_{b in n} l_b`` through :meth:`loss_from_embeddings`
        (``sample_group[b]`` in 0..n_groups-1, or -1 for samples in no group). One backward
        gives each sample's gradient w.r.t. its own user row, positive row and negative scores;
        these are routed to their group (the negatives' share by
        :func:`~recbole_bifair.model.negative_scores.negative_embedding_gradients`, gather-free),
        and the normalisation's Jacobian (I - u u^T)/||x|| is applied per row. Used by BiFair's
        ``balance_space: embeddings`` (MGDA-UB, ALGORITHMS.md section 9.3).
        """
        dim = user_emb.shape[1]
        method = self.score_method(users, neg_items, per_sample_rows=True)
        with torch.enable_grad():
            user_rows = user_emb[users].detach().requires_grad_(True)
            pos_rows = item_emb[pos_items].detach().requires_grad_(True)
            user_unit = F.normalize(user_rows, dim=-1)
            item_unit = F.normalize(item_emb.detach(), dim=-1)
            pos_scores = (user_unit * F.normalize(pos_rows, dim=-1)).sum(-1)
            with torch.no_grad():
                neg_scores = negative_scores(method, user_emb.detach(), user_unit, item_unit, users, neg_items)
            per_sample = info_nce(pos_scores, neg_scores.requires_grad_(True), self.tau)
            keep = sample_group >= 0
            counts = torch.bincount(sample_group[keep], minlength=n_groups).clamp(min=1)
            weight = torch.where(keep, 1.0 / counts[sample_group.clamp(min=0)], 0.0)
            # d(sum_b w_b l_b): each sample's own share, since every leaf row belongs to one sample.
            # The user rows' gradient here lacks the negatives' path (neg_scores is a leaf).
            user_grad, pos_grad, neg_grad = torch.autograd.grad(
                (weight * per_sample).sum(), [user_rows, pos_rows, neg_scores]
            )
        group = sample_group.clamp(min=0)  # samples in no group have zero weight, so zero gradients
        user_unit_grad, item_unit_out = negative_embedding_gradients(
            method, neg_grad, user_unit.detach(), item_unit, neg_items, group, n_groups
        )
        user_grad = user_grad + unit_backward(user_rows.detach(), user_unit_grad)
        user_out = torch.zeros(n_groups * self.n_users, dim, dtype=user_emb.dtype, device=user_emb.device)
        user_out.index_add_(0, (group * self.n_users + users)[keep], user_grad[keep])
        item_rows = item_emb.detach().repeat(n_groups, 1)
        item_out = unit_backward(item_rows, item_unit_out)
        item_out.index_add_(0, (group * self.n_items + pos_items)[keep], pos_grad[keep])
        return torch.cat([user_out.view(n_groups, -1), item_out.view(n_groups, -1)], dim=1)

    def per_sample_loss(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [B], pos_items [B]) on a freshly sampled batch."""
        users, pos_items, neg_items = self.sample_batch(interaction)
        return self.forward(users, pos_items, neg_items), pos_items

    def calculate_loss(self, interaction):
        self._eval_embeddings = None
        return self.per_sample_loss(interaction)[0].mean()

    def train(self, mode: bool = True):
        self._eval_embeddings = None  # parameters may change in either mode switch
        return super().train(mode)

    def _unit_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised embeddings; cached while in eval mode (full-sort runs many user batches)."""
        if self.training or self._eval_embeddings is None:
            user_emb, item_emb = self.forward_embeddings()
            embeddings = (F.normalize(user_emb, dim=-1), F.normalize(item_emb, dim=-1))
            if self.training:
                return embeddings
            self._eval_embeddings = embeddings
        return self._eval_embeddings

    def predict(self, interaction):
        user_unit, item_unit = self._unit_embeddings()
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        return (user_unit[users] * item_unit[items]).sum(-1)

    def full_sort_predict(self, interaction):
        user_unit, item_unit = self._unit_embeddings()
        return (user_unit[interaction[self.USER_ID]] @ item_unit.T).view(-1)
