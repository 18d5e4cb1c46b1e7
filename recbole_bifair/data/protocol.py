"""The paper's data protocol (Section 4.1; ALGORITHMS.md section 1) for any RecBole atomic dataset.

1. Duplicate (user, item) pairs: keep the latest (by timestamp where there is one).
2. Keep an interaction if rating >= ``min_rating`` (3) where ratings exist (the latest rating
   of a pair decides).
3. Interactions whose item has no row in the item file are dropped (no text to embed).
4. Drop users with fewer than ``min_user_inter`` (20) kept interactions.
5. Per-user seeded random split train:valid:test = 4:3:3 (``round(0.4 n)`` train,
   ``round(0.3 n)`` valid, the rest test), written once as fixed split files
   ``<name>.train/valid/test.inter`` so every model sees the same split.
6. Items in valid/test that never appear in train are removed from valid/test.

The output folder holds the three split files and ``<name>.item`` (train items only: the item
id, the title field and the genre field), written to a temporary folder and renamed into place.
A dataset yaml for the plugin is written under ``properties/dataset/<name>.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from recbole_bifair.data.atomic import (
    atomic_directory,
    atomic_types,
    atomic_write,
    read_atomic,
    write_atomic,
)
from recbole_bifair.errors import DataError, PluginError

SPLIT_NAMES = ("train", "valid", "test")
DEFAULT_SPLIT = (0.4, 0.3, 0.3)


@dataclass
class ProtocolOptions:
    """Options of the protocol; defaults are the paper's."""

    min_rating: float | None = 3.0
    min_user_inter: int = 20
    split: tuple[float, float, float] = DEFAULT_SPLIT
    seed: int = 2025
    user_field: str = "user_id"
    item_field: str = "item_id"
    rating_field: str = "rating"
    time_field: str = "timestamp"
    title_field: str = "title"
    genre_field: str | None = "genre"


@dataclass
class PreparedDataset:
    """What the protocol produced, with the Table 5 statistics."""

    name: str
    folder: Path
    splits: dict[str, pd.DataFrame]
    items: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.splits["train"]["user_id"].nunique())

    @property
    def n_items(self) -> int:
        return int(self.splits["train"]["item_id"].nunique())

    @property
    def n_interactions(self) -> int:
        return int(sum(len(frame) for frame in self.splits.values()))

    def statistics(self) -> dict[str, float]:
        density = self.n_interactions / max(1, self.n_users * self.n_items)
        return {
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": density,
        }


def filter_interactions(
    inter: pd.DataFrame, item_ids: set[str] | None, options: ProtocolOptions
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Steps 1-4: de-duplication, rating threshold, items without metadata, short users."""
    dropped = {}
    frame = inter
    if options.time_field in frame.columns:
        frame = frame.sort_values(options.time_field, kind="stable")
    before = len(frame)
    frame = frame.drop_duplicates([options.user_field, options.item_field], keep="last")
    dropped["duplicate_pairs"] = before - len(frame)
    if options.min_rating is not None and options.rating_field in frame.columns:
        keep = frame[options.rating_field] >= options.min_rating
        dropped["rating_below_threshold"] = int((~keep).sum())
        frame = frame[keep]
    if item_ids is not None:
        keep = frame[options.item_field].isin(item_ids)
        dropped["item_without_metadata"] = int((~keep).sum())
        frame = frame[keep]
    counts = frame.groupby(options.user_field)[options.item_field].transform("size")
    keep = counts >= options.min_user_inter
    dropped["short_user_interactions"] = int((~keep).sum())
    return frame[keep], dropped


def split_per_user(
    inter: pd.DataFrame, user_field: str, split: tuple[float, float, float], seed: int
) -> dict[str, pd.DataFrame]:
    """Step 5: a seeded random per-user split into train/valid/test by the given ratios."""
    if len(split) != 3 or any(part < 0 for part in split) or abs(sum(split) - 1.0) > 1e-6:
        raise DataError(f"split ratios must be three non-negative numbers summing to 1, got {split}")
    rng = np.random.default_rng(seed)
    frame = inter.reset_index(drop=True).copy()
    frame["_key"] = rng.random(len(frame))
    frame = frame.sort_values([user_field, "_key"], kind="stable")
    position = frame.groupby(user_field).cumcount().to_numpy()
    size = frame.groupby(user_field)[user_field].transform("size").to_numpy()
    n_train = np.rint(size * split[0])
    n_valid = np.rint(size * split[1])
    part = np.where(position < n_train, 0, np.where(position < n_train + n_valid, 1, 2))
    frame = frame.drop(columns="_key")
    return {name: frame[part == index].reset_index(drop=True) for index, name in enumerate(SPLIT_NAMES)}


def drop_unseen_items(splits: dict[str, pd.DataFrame], item_field: str) -> dict[str, int]:
    """Step 6: remove valid/test interactions whose item is not in train (in place)."""
    train_items = set(splits["train"][item_field])
    dropped = {}
    for name in ("valid", "test"):
        keep = splits[name][item_field].isin(train_items)
        dropped[f"{name}_unseen_items"] = int((~keep).sum())
        splits[name] = splits[name][keep].reset_index(drop=True)
    return dropped


def apply_protocol(
    inter: pd.DataFrame, items: pd.DataFrame | None, options: ProtocolOptions
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The whole protocol on in-memory frames; returns the splits and the dropped counts."""
    for column in (options.user_field, options.item_field):
        if column not in inter.columns:
            raise DataError(f"interaction file has no {column!r} field (fields: {list(inter.columns)})")
    item_ids = set(items[options.item_field]) if items is not None else None
    kept, dropped = filter_interactions(inter, item_ids, options)
    if kept.empty:
        raise DataError(
            f"no interaction is left after the protocol (min_user_inter={options.min_user_inter}, "
            f"min_rating={options.min_rating}); lower --min_user_inter"
        )
    splits = split_per_user(kept, options.user_field, options.split, options.seed)
    dropped.update(drop_unseen_items(splits, options.item_field))
    return splits, dropped


def _output_columns(inter: pd.DataFrame, options: ProtocolOptions) -> list[str]:
    columns = [options.user_field, options.item_field]
    return columns + [c for c in (options.rating_field, options.time_field) if c in inter.columns]


def _item_columns(items: pd.DataFrame, options: ProtocolOptions) -> list[str]:
    missing = [f for f in (options.title_field, options.genre_field) if f and f not in items.columns]
    if missing:
        raise DataError(
            f"item file has no field {missing[0]!r} (fields: {list(items.columns)}); pass the "
            "right --title_field / --genre_field"
        )
    return [options.item_field, options.title_field] + ([options.genre_field] if options.genre_field else [])


def prepare_dataset(
    inter_file: str | Path,
    item_file: str | Path,
    output_root: str | Path,
    name: str,
    options: ProtocolOptions | None = None,
    overwrite: bool = False,
    tau: float | None = None,
    dataset_yaml_dir: str | Path | None = None,
) -> PreparedDataset:
    """Apply the protocol to an atomic dataset and write ``output_root/name`` and its yaml."""
    options = options or ProtocolOptions()
    inter = read_atomic(inter_file)
    items = read_atomic(item_file)
    for frame, path in ((inter, inter_file), (items, item_file)):
        if options.item_field not in frame.columns:
            raise DataError(f"{path}: no {options.item_field!r} field (fields: {list(frame.columns)})")
    item_columns = _item_columns(items, options)
    splits, dropped = apply_protocol(inter, items, options)
    train_items = set(splits["train"][options.item_field])
    kept_items = items.loc[items[options.item_field].isin(train_items), item_columns]
    kept_items = kept_items.drop_duplicates(options.item_field)
    folder = Path(output_root) / name
    inter_types = atomic_types(inter)
    item_types = atomic_types(items)
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        for split_name, frame in splits.items():
            out = frame[_output_columns(inter, options)]
            write_atomic(out, tmp / f"{name}.{split_name}.inter", {c: inter_types[c] for c in out.columns})
        write_atomic(kept_items, tmp / f"{name}.item", {c: item_types[c] for c in kept_items.columns})
    prepared = PreparedDataset(name, folder, splits, kept_items, dropped)
    write_dataset_yaml(name, options, tau, dataset_yaml_dir, overwrite)
    return prepared


def dataset_yaml(options: ProtocolOptions, tau: float | None) -> dict:
    """The plugin's dataset yaml: fields to load, fixed split files, genre field, tau."""
    item_cols = [options.item_field] + ([options.genre_field] if options.genre_field else [])
    config = {
        "USER_ID_FIELD": options.user_field,
        "ITEM_ID_FIELD": options.item_field,
        "load_col": {"inter": [options.user_field, options.item_field], "item": item_cols},
        "benchmark_filename": list(SPLIT_NAMES),
        "title_field": options.title_field,
        "genre_field": options.genre_field,
    }
    if tau is not None:
        config["tau"] = tau
    return config


def write_dataset_yaml(
    name: str,
    options: ProtocolOptions,
    tau: float | None,
    yaml_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``properties/dataset/<name>.yaml``; an existing different file is kept unless overwrite."""
    from recbole_bifair.config import PROPERTIES_DIR

    path = Path(yaml_dir or PROPERTIES_DIR / "dataset") / f"{name}.yaml"
    text = (
        f"# Written by recbole_bifair.data.protocol for the prepared dataset {name!r}.\n"
        + yaml.safe_dump(dataset_yaml(options, tau), sort_keys=False)
    )
    existing = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    if existing == dataset_yaml(options, tau):
        return path
    if existing is not None and not overwrite:
        getLogger().warning(f"{path} exists and differs from the prepared dataset's; kept it (use --overwrite)")
        return path
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def group_summary(prepared: PreparedDataset, options: ProtocolOptions, top_fraction: float = 0.1) -> str:
    """Sizes of the popularity groups (share of train interactions) and the genre groups."""
    counts = prepared.splits["train"][options.item_field].value_counts()
    ordered = counts.reset_index().sort_values(
        ["count", options.item_field], ascending=[False, True], kind="stable"
    )
    n_popular = max(1, int(np.ceil(top_fraction * len(ordered))))
    share = ordered["count"].iloc[:n_popular].sum() / max(1, ordered["count"].sum())
    lines = [
        f"popularity groups: popular {n_popular} items ({share:.1%} of train interactions), "
        f"unpopular {len(ordered) - n_popular} items"
    ]
    if options.genre_field:
        genres = prepared.items[options.genre_field].astype(str)
        if atomic_types(prepared.items).get(options.genre_field) == "token_seq":  # first listed
            genres = genres.str.split().str[0].fillna("")  # (a token such as "Xbox 360" is whole)
        sizes = genres.value_counts()
        lines.append(
            f"genre groups ({options.genre_field}, first listed): {len(sizes)} groups, sizes "
            + ", ".join(f"{genre}={size}" for genre, size in sizes.items())
        )
    return "\n".join(lines)


def report(prepared: PreparedDataset, options: ProtocolOptions) -> str:
    stats = prepared.statistics()
    lines = [
        f"dataset {prepared.name} -> {prepared.folder}",
        f"users {stats['users']:,}  items {stats['items']:,}  interactions "
        f"{stats['interactions']:,}  density {stats['density']:.4%}",
        "split sizes: " + ", ".join(f"{k} {len(v):,}" for k, v in prepared.splits.items()),
        "dropped: " + ", ".join(f"{k} {v:,}" for k, v in prepared.dropped.items()),
        group_summary(prepared, options),
    ]
    return "\n".join(lines)


def recbole_ml100k_folder() -> Path:
    """The ml-100k atomic files shipped inside the recbole wheel."""
    import recbole

    return Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"


ML100K_OPTIONS = dict(title_field="movie_title", genre_field="class")


def prepare_ml100k(output_root: str | Path, name: str = "ml100k", overwrite: bool = False) -> PreparedDataset:
    """The embedded default dataset: ml-100k from the recbole wheel, under the paper protocol."""
    source = recbole_ml100k_folder()
    options = ProtocolOptions(**ML100K_OPTIONS)
    return prepare_dataset(
        source / "ml-100k.inter", source / "ml-100k.item", output_root, name, options,
        overwrite=overwrite, tau=0.15,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Apply the paper's protocol to a RecBole atomic dataset (filter, 4:3:3 split)."
    )
    parser.add_argument("--input", required=True,
                        help="folder holding <input_name>.inter and .item, or 'ml-100k' for recbole's copy")
    parser.add_argument("--input_name", help="base name of the input files (default: the folder name)")
    parser.add_argument("--name", required=True, help="name of the prepared dataset")
    parser.add_argument("--output", default="dataset_atomic", help="folder that will hold <name>/")
    parser.add_argument("--min_rating", type=float, default=3.0, help="keep rating >= this (if ratings exist)")
    parser.add_argument("--min_user_inter", type=int, default=20)
    parser.add_argument("--split", type=float, nargs=3, default=list(DEFAULT_SPLIT))
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--title_field", default="title")
    parser.add_argument("--genre_field", default="genre", help="item field holding the genre ('' for none)")
    parser.add_argument("--tau", type=float, help="InfoNCE temperature for this dataset's yaml")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.input == "ml-100k":
            folder, base = recbole_ml100k_folder(), "ml-100k"
        else:
            folder = Path(args.input)
            base = args.input_name or folder.name
        options = ProtocolOptions(
            min_rating=args.min_rating, min_user_inter=args.min_user_inter, split=tuple(args.split),
            seed=args.seed, title_field=args.title_field, genre_field=args.genre_field or None,
        )
        prepared = prepare_dataset(
            folder / f"{base}.inter", folder / f"{base}.item", args.output, args.name, options,
            overwrite=args.overwrite, tau=args.tau,
        )
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report(prepared, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
