"""A RecBole Collector that also gathers what per-group utilities need.

During full-sort evaluation it computes the top-K once per batch and keeps, for each group
kind that a configured metric needs (``fair.pop``, ``fair.genre``):

- ``fair.<kind>.topk_groups`` [users, K]: the group of the item at each rank;
- ``fair.<kind>.positives`` [users, N]: each user's number of test items per group.

Together with ``rec.topk`` (hit flags) this is all the fairness metrics need
(:mod:`recbole_bifair.evaluator.fairness`), at the cost of a gather and a scatter per batch.

It also fixes RecBole 1.2.1's ``get_data_struct``, which calls ``.cpu()`` on every entry and so
crashes on ``data.count_items`` (a Counter): ItemCoverage, GiniIndex, AveragePopularity and
TailPercentage work through this collector.
"""

from __future__ import annotations

import copy
from logging import getLogger

import torch
from recbole.evaluator import Collector

from recbole_bifair.data.groups import GROUP_KINDS, ItemGroups, build_item_groups
from recbole_bifair.evaluator.metrics import fair_struct_keys

# Keys RecBole resets after each evaluation, plus the plugin's per-evaluation keys.
_PER_EVALUATION_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


class _RegisterWithout:
    """A view of a Register that reports ``keys`` as not needed (they are collected already)."""

    def __init__(self, register, keys: set[str]):
        self._register, self._keys = register, keys

    def need(self, key: str) -> bool:
        return False if key in self._keys else self._register.need(key)


class FairCollector(Collector):
    """Collector that adds item-group statistics for the fairness metrics."""

    def __init__(self, config):
        super().__init__(config)
        self.group_kinds = [kind for kind in GROUP_KINDS if self.register.need(f"fair.{kind}")]
        self.item_groups: dict[str, ItemGroups] = {}
        self._device_groups: dict[str, torch.Tensor] = {}
        self.last_struct = None

    def data_collect(self, train_data) -> None:
        super().data_collect(train_data)
        self.set_item_groups(
            {kind: build_item_groups(train_data.dataset, self.config, kind) for kind in self.group_kinds}
        )

    def set_item_groups(self, item_groups: dict[str, ItemGroups]) -> None:
        """Use these maps (e.g. the ones a fair trainer already built) for the metrics."""
        self.item_groups.update(item_groups)
        self._device_groups = {
            kind: groups.item_group.to(self.device) for kind, groups in self.item_groups.items()
        }
        for kind, groups in self.item_groups.items():
            getLogger().info(
                f"{kind} groups: {groups.n_groups} groups, sizes {groups.sizes()}"
            )

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i) -> None:
        handled = set()
        need_topk = self.register.need("rec.topk") or self.group_kinds
        if self.register.need("rec.items") or need_topk:
            _, topk_idx = torch.topk(scores_tensor, max(self.topk), dim=-1)
            if self.register.need("rec.items"):
                self.data_struct.update_tensor("rec.items", topk_idx)
                handled.add("rec.items")
        if need_topk:
            pos_matrix = torch.zeros_like(scores_tensor, dtype=torch.int)
            pos_matrix[positive_u, positive_i] = 1
            pos_len = pos_matrix.sum(dim=1, keepdim=True)
            pos_idx = torch.gather(pos_matrix, dim=1, index=topk_idx)
            self.data_struct.update_tensor("rec.topk", torch.cat((pos_idx, pos_len), dim=1))
            handled.add("rec.topk")
            for kind in self.group_kinds:
                self._collect_groups(kind, topk_idx, positive_u, positive_i, len(scores_tensor))
        if handled != {"rec.items", "rec.topk"} or self._needs_rest():
            register = self.register
            self.register = _RegisterWithout(register, handled)
            try:
                super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
            finally:
                self.register = register

    def _needs_rest(self) -> bool:
        return any(self.register.need(key) for key in ("rec.meanrank", "rec.score", "data.label"))

    def _collect_groups(self, kind, topk_idx, positive_u, positive_i, n_users) -> None:
        item_group = self._device_groups[kind]
        n_groups = self.item_groups[kind].n_groups
        topk_groups_key, positives_key = fair_struct_keys(kind)
        self.data_struct.update_tensor(topk_groups_key, item_group[topk_idx])
        positive_groups = item_group[positive_i]
        keep = positive_groups >= 0
        positives = torch.zeros(n_users, n_groups, dtype=torch.long, device=topk_idx.device)
        positives.index_put_(
            (positive_u[keep], positive_groups[keep]),
            torch.ones(int(keep.sum()), dtype=torch.long, device=topk_idx.device),
            accumulate=True,
        )
        self.data_struct.update_tensor(positives_key, positives)

    def get_data_struct(self):
        """Move tensors to the CPU (only tensors: the 1.2.1 crash fix) and reset per-eval keys."""
        data = self.data_struct._data_dict
        for key, value in data.items():
            if isinstance(value, torch.Tensor):
                data[key] = value.cpu()
        returned = copy.deepcopy(self.data_struct)
        per_evaluation = list(_PER_EVALUATION_KEYS)
        for kind in self.group_kinds:
            per_evaluation.extend(fair_struct_keys(kind))
        for key in per_evaluation:
            if key in self.data_struct:
                del self.data_struct[key]
        self.last_struct = returned
        return returned
