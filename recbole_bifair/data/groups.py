"""Item -> group maps: the one place both the fairness metrics and the fair trainers take them from.

ALGORITHMS.md section 1:
- Popularity groups: items ranked by **train** interaction count, ties broken by item token
  (the item id in the data files; numerically where tokens are numbers, numbers before other
  tokens), never by RecBole's internal id, which follows the row order of the .inter file: the
  same data in another row order gives the same groups. The top ``pop_top_fraction`` (10%) of
  items form group 0 "popular", the rest group 1 "unpopular" (N = 2).
- Genre groups: the item field named by ``genre_field``. An item listed under several genres is
  assigned to its first listed genre [choice, ``genre_rule: first``]. Items without a genre
  belong to no group (-1) and are counted in the log.

A map is a LongTensor ``item_group`` of length ``n_items`` (RecBole internal ids, row 0 = the
padding item, always -1) plus the group names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from logging import getLogger

import torch

from recbole_bifair.errors import ConfigKeyError

GROUP_KINDS = ("pop", "genre")
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


@dataclass
class ItemGroups:
    """Which group each internal item id belongs to."""

    kind: str
    item_group: torch.Tensor  # long [n_items], -1 = no group
    names: list[str]

    @property
    def n_groups(self) -> int:
        return len(self.names)

    def sizes(self) -> list[int]:
        valid = self.item_group[self.item_group >= 0]
        return torch.bincount(valid, minlength=self.n_groups).tolist()


def token_sort_key(token: str) -> tuple:
    """Order of item tokens among equal counts: numbers by value (``"9"`` before ``"10"``) before
    other tokens, which go by their text."""
    if _NUMBER.fullmatch(token):
        return (0, float(token), token)
    return (1, 0.0, token)


def token_ranks(item_tokens) -> torch.Tensor:
    """Rank of each internal item id's token under :func:`token_sort_key` (padding row 0 first)."""
    order = sorted(range(1, len(item_tokens)), key=lambda i: token_sort_key(str(item_tokens[i])))
    ranks = torch.zeros(len(item_tokens), dtype=torch.long)
    ranks[torch.tensor(order, dtype=torch.long)] = torch.arange(1, len(item_tokens))
    return ranks


def popularity_groups(item_counts: torch.Tensor, top_fraction: float = 0.1, item_tokens=None) -> ItemGroups:
    """Popular (0) = top ``top_fraction`` of real items by train count; rest (1).

    ``item_counts[i]`` is the train interaction count of internal item i; item 0 is padding.
    Ties go by ``item_tokens[i]`` (the item's token, see :func:`token_sort_key`) when given,
    else by internal id. The popular group holds ``ceil(top_fraction * n_real_items)`` items.
    """
    if not 0.0 < top_fraction < 1.0:
        raise ConfigKeyError(f"pop_top_fraction must be in (0, 1), got {top_fraction}")
    n_items = item_counts.numel()
    real_ids = torch.arange(1, n_items)
    counts = item_counts[1:].to(torch.float64)
    # Sort by tie-break rank first, then a stable sort on -count keeps that order among ties.
    if item_tokens is not None:
        by_token = torch.argsort(token_ranks(item_tokens)[1:])
        order = by_token[torch.sort(-counts[by_token], stable=True).indices]
    else:
        order = torch.sort(-counts, stable=True).indices
    n_popular = max(1, math.ceil(top_fraction * (n_items - 1)))
    item_group = torch.full((n_items,), -1, dtype=torch.long)
    item_group[real_ids] = 1
    item_group[real_ids[order[:n_popular]]] = 0
    return ItemGroups("pop", item_group, ["popular", "unpopular"])


def first_listed_genre(genre_ids: torch.Tensor) -> torch.Tensor:
    """The multi-genre rule [choice]: an item belongs to its first listed genre (token id, 0 = none)."""
    return genre_ids[:, 0] if genre_ids.dim() == 2 else genre_ids


def genre_groups(dataset, genre_field: str, training: bool = False) -> ItemGroups:
    """Groups from the item field ``genre_field`` (token or token_seq) of a RecBole dataset.

    Fewer than two distinct genres is an error when the groups are for training (``fair_group:
    genre``: there is nothing to balance) and a warning when they are only for the metrics.
    """
    if not genre_field:
        raise ConfigKeyError(
            "genre groups need `genre_field` (the item field holding the genre) in the dataset "
            "yaml; set it, or use only popularity groups (fair_group: pop, no genre_* metrics)"
        )
    if dataset.item_feat is None or genre_field not in dataset.item_feat.columns:
        raise ConfigKeyError(
            f"genre_field {genre_field!r} is not an item field of dataset "
            f"{dataset.dataset_name!r}; add it to `load_col: item:` in the dataset yaml or fix "
            "`genre_field`"
        )
    token_ids = first_listed_genre(dataset.item_feat[genre_field].long())
    tokens = dataset.field2id_token[genre_field]
    token_ids = token_ids.clone()
    token_ids[0] = 0  # the padding item
    used = torch.unique(token_ids[token_ids > 0])
    remap = torch.full((len(tokens),), -1, dtype=torch.long)
    remap[used] = torch.arange(used.numel())
    item_group = remap[token_ids]
    n_missing = int((item_group[1:] < 0).sum())
    if n_missing:
        getLogger().warning(
            f"{n_missing} items have no value in genre field {genre_field!r}: left out of genre groups"
        )
    if used.numel() < 2:
        if training:
            raise ConfigKeyError(
                f"fair_group: genre needs at least 2 genres, but genre field {genre_field!r} of "
                f"dataset {dataset.dataset_name!r} has {used.numel()} distinct value(s); use "
                "fair_group: pop or another genre_field"
            )
        getLogger().warning(
            f"genre field {genre_field!r} has {used.numel()} distinct value(s): genre fairness "
            "over one group is meaningless (CV = 0)"
        )
    return ItemGroups("genre", item_group, [str(tokens[i]) for i in used.tolist()])


def train_item_counts(train_dataset) -> torch.Tensor:
    """Train interaction count per internal item id, from the train split's inter_feat."""
    items = train_dataset.inter_feat[train_dataset.iid_field]
    return torch.bincount(items.long(), minlength=train_dataset.item_num)


def build_item_groups(train_dataset, config, kind: str, training: bool = False) -> ItemGroups:
    """The map of group ``kind`` (``pop`` or ``genre``) for a RecBole train dataset.

    ``training``: the groups a fair trainer balances (stricter checks than for the metrics).
    """
    if kind == "pop":
        fraction = config["pop_top_fraction"] if config["pop_top_fraction"] is not None else 0.1
        tokens = train_dataset.field2id_token[train_dataset.iid_field]
        return popularity_groups(train_item_counts(train_dataset), fraction, item_tokens=tokens)
    if kind == "genre":
        return genre_groups(train_dataset, config["genre_field"], training=training)
    raise ConfigKeyError(f"unknown group kind {kind!r}; use one of {GROUP_KINDS}")
