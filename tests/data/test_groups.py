"""Popularity groups: ties broken by item token, so the row order of the data files does not matter."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_bifair.config import BiFairConfig
from recbole_bifair.data.groups import build_item_groups, popularity_groups, token_sort_key

DATASET_KEYS = {
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
    "load_col": {"inter": ["user_id", "item_id"], "item": ["item_id", "class"]},
    "benchmark_filename": ["train", "valid", "test"], "genre_field": "class",
    "metrics": ["Recall", "Pop_CV"], "show_progress": False,
}


def test_ties_go_by_token_numerically_not_by_internal_id():
    # internal ids 1..5; item 1 is the most popular, items 2, 3, 4 tie with 3 interactions.
    counts = torch.tensor([0, 5, 3, 3, 3, 1])
    tokens = ["[PAD]", "a", "10", "9", "x", "b"]
    groups = popularity_groups(counts, top_fraction=0.4, item_tokens=tokens)  # 2 popular items
    assert groups.item_group.tolist() == [-1, 0, 1, 0, 1, 1]  # "9" < "10" < "x"
    by_id = popularity_groups(counts, top_fraction=0.4)
    assert by_id.item_group.tolist() == [-1, 0, 0, 1, 1, 1]  # the old rule took id 2 ("10")


def test_top_ten_percent_cut_counts_real_items_and_rounds_up():
    """ALGORITHMS.md 1: the top 10% of items by train count are popular; 25 real items give
    ceil(2.5) = 3 popular ones, and a tie across the cut goes to the smaller token."""
    counts = torch.tensor([0] + [1] * 20 + [9, 8, 7, 7, 7])  # ids 21..25 are the popular candidates
    tokens = ["[PAD]"] + [str(100 + i) for i in range(1, 21)] + ["50", "40", "33", "31", "32"]
    groups = popularity_groups(counts, top_fraction=0.1, item_tokens=tokens)
    popular = torch.nonzero(groups.item_group == 0).squeeze(1).tolist()
    assert popular == [21, 22, 24]  # 9, 8 and the first of the 7s by token ("31" < "32" < "33")
    assert groups.item_group[0] == -1 and groups.sizes() == [3, 22]


def test_token_order_numbers_by_value_then_text():
    tokens = ["b", "10", "9", "a", "0439381673", "B00004SVV0", "-1", "2.5"]
    assert sorted(tokens, key=token_sort_key) == ["-1", "2.5", "9", "10", "0439381673", "B00004SVV0", "a", "b"]


def shuffled_copy(source: Path, root: Path, name: str, seed: int) -> Path:
    """The dataset under ``source`` with the rows of each .inter file shuffled."""
    folder = root / name
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    for path in source.iterdir():
        if path.suffix not in (".inter", ".item"):
            continue
        target = folder / path.name.replace(f"{source.name}.", f"{name}.", 1)
        if path.suffix == ".inter":
            header, *rows = path.read_text(encoding="utf-8").splitlines()
            rng.shuffle(rows)
            target.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
        else:
            shutil.copy(path, target)
    return folder


def fraction_splitting_a_tie(train_file: Path) -> float:
    """A ``pop_top_fraction`` whose boundary falls in the middle of the longest run of items with
    equal train counts (in the top half), so that the tie-break decides many items."""
    header, *rows = train_file.read_text(encoding="utf-8").splitlines()
    column = header.split("\t").index("item_id:token")
    counts = sorted(Counter(row.split("\t")[column] for row in rows).values(), reverse=True)
    top_half = Counter(counts[: len(counts) // 2])
    tied = max(top_half, key=top_half.get)  # the count shared by the most items
    k = counts.index(tied) + top_half[tied] // 2
    return (k - 0.5) / len(counts)  # ceil(fraction * n_items) = k popular items


def popularity_by_token(root: Path, name: str, fraction: float) -> tuple[dict[str, int], dict[str, int]]:
    """Item token -> popularity group, with ties by token (the rule) and by internal id (the old one)."""
    settings = {"data_path": str(root), "pop_top_fraction": fraction, **DATASET_KEYS}
    config = BiFairConfig(model="BPR", dataset=name, config_dict=settings)
    train_data, _valid, _test = data_preparation(config, create_dataset(config))
    dataset = train_data.dataset
    tokens = dataset.field2id_token[dataset.iid_field]
    groups = build_item_groups(dataset, config, "pop")
    counts = torch.bincount(dataset.inter_feat[dataset.iid_field].long(), minlength=dataset.item_num)
    by_id = popularity_groups(counts, config["pop_top_fraction"])
    return (
        {str(tokens[i]): int(g) for i, g in enumerate(groups.item_group.tolist()) if i},
        {str(tokens[i]): int(g) for i, g in enumerate(by_id.item_group.tolist()) if i},
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_shuffling_the_inter_rows_leaves_the_groups_unchanged(ml100k_root, tmp_path, seed):
    fraction = fraction_splitting_a_tie(ml100k_root / "ml100k" / "ml100k.train.inter")
    original, original_by_id = popularity_by_token(ml100k_root, "ml100k", fraction)
    shuffled_copy(ml100k_root / "ml100k", tmp_path, "shuffled", seed)
    shuffled, shuffled_by_id = popularity_by_token(tmp_path, "shuffled", fraction)
    assert shuffled == original
    # The test can fail: ties straddle the boundary, so the internal-id rule moves items.
    assert shuffled_by_id != original_by_id
