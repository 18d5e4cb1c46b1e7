"""Convert Amazon review dumps to RecBole atomic files (``<name>.inter`` and ``<name>.item``).

Categories: ``movies`` = Movies_and_TV, ``games`` = Video_Games, ``books`` = Books. Formats are
recognised by file name (``<Cat>`` is the long name above):

* 2014 (McAuley): ``reviews_<Cat>_5.json.gz`` (JSON lines: reviewerID, asin, overall,
  unixReviewTime) or ``ratings_<Cat>.csv`` (user,item,rating,time; no header), plus
  ``meta_<Cat>.json.gz`` whose lines are Python literals (read with ``ast.literal_eval``,
  never ``eval``) with ``categories`` a list of paths such as ``[['Video Games', 'PC'], ...]``.
* 2018: ``<Cat>_5.json.gz`` or ``<Cat>.json.gz`` (JSON lines as 2014) plus
  ``meta_<Cat>.json.gz`` (JSON lines: asin, title, ``category`` a flat path).
* 2023: ``<Cat>.jsonl.gz`` (user_id, parent_asin, rating, timestamp in ms; ``parent_asin`` is
  the item id and timestamps are converted to seconds) plus ``meta_<Cat>.jsonl.gz``
  (parent_asin, title, ``categories`` a flat path that often omits the root).

When a folder holds both a 5-core and a full file, the 5-core file is used.

Genre rule (:func:`genre_from_categories`, the only place it lives): the genre is the entry
right below the category root ("Movies & TV", "Video Games", "Books") in the first path that
starts with the root; a flat path that does not start with the root is taken to be below it
already (as 2023 lists often are), so its first entry is the genre; otherwise ``Other``.

Items with no title are dropped with their interactions; interactions whose item has no
metadata are dropped; duplicate (user, item) pairs keep the latest by timestamp. All counts
are in the returned :class:`ConversionReport`. Files are streamed line by line; only compact
code arrays of interactions and the titles/genres of interacted items are held in memory.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import html
import json
import sys
import warnings
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from recbole_bifair.data.atomic import atomic_directory, write_atomic
from recbole_bifair.errors import DataError, PluginError, UnknownNameError

CATEGORIES = {  # short name -> (file name part, category root)
    "movies": ("Movies_and_TV", "Movies & TV"),
    "games": ("Video_Games", "Video Games"),
    "books": ("Books", "Books"),
}
FORMATS = ("2014", "2018", "2023")
OTHER_GENRE = "Other"
SHOWN_LINE_NUMBERS = 5
INTER_TYPES = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
ITEM_TYPES = {"item_id": "token", "title": "token_seq", "genre": "token"}


def expected_file_names(cat: str, fmt: str) -> tuple[list[str], str]:
    """Interaction file names (preferred first) and the metadata file name of a format."""
    if fmt == "2014":
        return [f"reviews_{cat}_5.json.gz", f"ratings_{cat}.csv"], f"meta_{cat}.json.gz"
    if fmt == "2018":
        return [f"{cat}_5.json.gz", f"{cat}.json.gz"], f"meta_{cat}.json.gz"
    return [f"{cat}.jsonl.gz"], f"meta_{cat}.jsonl.gz"


@dataclass
class AmazonFiles:
    fmt: str
    interactions: Path
    meta: Path


@dataclass
class ConversionReport:
    category: str
    fmt: str
    inter_path: Path
    item_path: Path
    users: int = 0
    items: int = 0
    interactions: int = 0
    records_read: int = 0
    duplicates_dropped: int = 0
    no_metadata_dropped: int = 0
    untitled_items_dropped: int = 0
    untitled_interactions_dropped: int = 0
    malformed_lines: dict[str, int] = field(default_factory=dict)
    truncated_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"amazon {self.fmt} {self.category} -> {self.inter_path.parent}",
            f"  users {self.users}, items {self.items}, interactions {self.interactions}",
            f"  read {self.records_read} interactions; dropped {self.duplicates_dropped} "
            f"duplicates, {self.no_metadata_dropped} without item metadata, "
            f"{self.untitled_interactions_dropped} of {self.untitled_items_dropped} untitled items",
        ]
        for name, count in self.malformed_lines.items():
            lines.append(f"  skipped {count} malformed lines in {name}")
        for name in self.truncated_files:
            lines.append(f"  {name} was truncated; used the lines before the damage")
        return "\n".join(lines)


def genre_from_categories(categories: object, root: str) -> str:
    """The genre of an item from its category list (2014 nested, 2018/2023 flat): see module doc."""
    if not isinstance(categories, list) or not categories:
        return OTHER_GENRE
    nested = all(isinstance(path, list) for path in categories)
    paths = categories if nested else [categories]
    wanted = root.casefold()
    for path in paths:
        entries = [html.unescape(str(entry)).strip() for entry in path]
        if entries and entries[0].casefold() == wanted:
            return entries[1] if len(entries) > 1 and entries[1] else OTHER_GENRE
    if not nested:
        first = html.unescape(str(categories[0])).strip()
        return first or OTHER_GENRE
    return OTHER_GENRE


def _category(category: str) -> tuple[str, str]:
    if category not in CATEGORIES:
        raise UnknownNameError("category", category, list(CATEGORIES))
    return CATEGORIES[category]


def _available_files(input_dir_or_files: str | Path | Sequence[str | Path]) -> dict[str, Path]:
    """File name -> path, from a folder's listing or an explicit list of files."""
    if isinstance(input_dir_or_files, (str, Path)):
        folder = Path(input_dir_or_files)
        if not folder.is_dir():
            raise DataError(f"{folder}: input folder not found; pass the folder holding the files")
        return {path.name: path for path in folder.iterdir() if path.is_file()}
    files = [Path(item) for item in input_dir_or_files]
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: input file not found")
    return {path.name: path for path in files}


def detect_amazon_files(
    category: str, input_dir_or_files: str | Path | Sequence[str | Path], fmt: str = "auto"
) -> AmazonFiles:
    """Find the interaction and metadata files of ``category`` and tell their format."""
    cat, _ = _category(category)
    if fmt != "auto" and fmt not in FORMATS:
        raise UnknownNameError("format", fmt, ["auto", *FORMATS])
    available = _available_files(input_dir_or_files)
    found, expected, lacking_meta = [], [], []
    for candidate in FORMATS if fmt == "auto" else (fmt,):
        inter_names, meta_name = expected_file_names(cat, candidate)
        expected.append(f"{candidate}: {' or '.join(inter_names)} with {meta_name}")
        inter_name = next((name for name in inter_names if name in available), None)
        if inter_name is not None and meta_name in available:
            found.append(AmazonFiles(candidate, available[inter_name], available[meta_name]))
        elif inter_name is not None:
            lacking_meta.append(f"{available[inter_name]}: found no {meta_name} beside it; add it")
    if not found and lacking_meta:
        raise DataError(lacking_meta[0])
    if not found:
        raise DataError(
            f"{input_dir_or_files}: no Amazon {category} files found; expected "
            + "; ".join(expected)
        )
    if len(found) > 1:
        raise DataError(
            f"{input_dir_or_files}: files of several formats ({', '.join(f.fmt for f in found)}); "
            "pass --format to choose one"
        )
    return found[0]


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _lines(
    path: Path, strict: bool, progress: bool, report: ConversionReport
) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)``; a truncated or corrupt gzip ends the file (or raises)."""
    line_number = 0
    show = progress and sys.stderr.isatty()
    try:
        with _open_text(path) as handle:
            for line_number, line in enumerate(
                tqdm(handle, desc=path.name, unit=" lines", disable=not show), start=1
            ):
                yield line_number, line
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        message = (
            f"{path}: compressed file is truncated or corrupt after line {line_number} ({exc}); "
            "download it again"
        )
        if strict:
            raise DataError(message) from exc
        warnings.warn(message + "; using the lines read so far", stacklevel=3)
        report.truncated_files.append(path.name)


def _records(
    path: Path,
    parse: Callable[[str], tuple],
    strict: bool,
    progress: bool,
    report: ConversionReport,
) -> Iterator[tuple]:
    """Yield parsed records; malformed lines are counted and skipped (or raise when strict)."""
    bad_lines: list[int] = []
    bad_count = 0
    for line_number, line in _lines(path, strict, progress, report):
        if not line.strip():
            continue
        try:
            yield parse(line)
        except (ValueError, SyntaxError, TypeError, KeyError, RecursionError) as exc:
            if strict:
                raise DataError(
                    f"{path}: line {line_number} is not a valid record ({type(exc).__name__}: "
                    f"{exc}); fix the line or run without --strict to skip bad lines"
                ) from exc
            bad_count += 1
            if len(bad_lines) < SHOWN_LINE_NUMBERS:
                bad_lines.append(line_number)
    if bad_count:
        report.malformed_lines[path.name] = bad_count
        shown = ", ".join(map(str, bad_lines)) + (", ..." if bad_count > len(bad_lines) else "")
        warnings.warn(f"{path}: skipped {bad_count} malformed lines (lines {shown})", stacklevel=2)


def _as_record(parsed: object) -> dict:
    if not isinstance(parsed, dict):
        raise TypeError(f"expected an object, got {type(parsed).__name__}")
    return parsed


def _text_id(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"bad id {value!r}")
    return value.strip()


def _parse_review_json(line: str) -> tuple[str, str, float, float]:
    record = _as_record(json.loads(line))
    return (
        _text_id(record["reviewerID"]),
        _text_id(record["asin"]),
        float(record["overall"]),
        float(record["unixReviewTime"]),
    )


def _parse_rating_csv(line: str) -> tuple[str, str, float, float]:
    user, item, rating, time = line.rstrip("\r\n").split(",")
    return _text_id(user), _text_id(item), float(rating), float(time)


def _parse_review_2023(line: str) -> tuple[str, str, float, float]:
    record = _as_record(json.loads(line))
    return (
        _text_id(record["user_id"]),
        _text_id(record["parent_asin"]),
        float(record["rating"]),
        float(record["timestamp"]) / 1000.0,
    )


def _parse_meta_2014(line: str) -> tuple[str, object, object]:
    record = _as_record(ast.literal_eval(line))
    return _text_id(record["asin"]), record.get("title"), record.get("categories")


def _parse_meta_2018(line: str) -> tuple[str, object, object]:
    record = _as_record(json.loads(line))
    return _text_id(record["asin"]), record.get("title"), record.get("category")


def _parse_meta_2023(line: str) -> tuple[str, object, object]:
    record = _as_record(json.loads(line))
    return _text_id(record["parent_asin"]), record.get("title"), record.get("categories")


def _interaction_parser(files: AmazonFiles) -> Callable[[str], tuple]:
    if files.fmt == "2023":
        return _parse_review_2023
    return _parse_rating_csv if files.interactions.suffix == ".csv" else _parse_review_json


META_PARSERS = {"2014": _parse_meta_2014, "2018": _parse_meta_2018, "2023": _parse_meta_2023}


@dataclass
class _Interactions:
    """Interactions as code arrays; ids are coded in order of first appearance."""

    user_ids: dict[str, int] = field(default_factory=dict)
    item_ids: dict[str, int] = field(default_factory=dict)
    users: array = field(default_factory=lambda: array("i"))
    items: array = field(default_factory=lambda: array("i"))
    ratings: array = field(default_factory=lambda: array("d"))
    times: array = field(default_factory=lambda: array("d"))

    def add(self, user: str, item: str, rating: float, time: float) -> None:
        self.users.append(self.user_ids.setdefault(user, len(self.user_ids)))
        self.items.append(self.item_ids.setdefault(item, len(self.item_ids)))
        self.ratings.append(rating)
        self.times.append(time)


def _read_interactions(files, strict, progress, report) -> _Interactions:
    interactions = _Interactions()
    parse = _interaction_parser(files)
    for user, item, rating, time in _records(files.interactions, parse, strict, progress, report):
        interactions.add(user, item, rating, time)
    report.records_read = len(interactions.users)
    return interactions


def _read_item_info(files, root, wanted: dict[str, int], strict, progress, report):
    """Title and genre of the wanted items, by item code, and the codes of untitled items."""
    titled: dict[int, tuple[str, str]] = {}
    untitled: set[int] = set()
    for asin, title, categories in _records(
        files.meta, META_PARSERS[files.fmt], strict, progress, report
    ):
        code = wanted.get(asin)
        if code is None or code in titled:
            continue
        if isinstance(title, str) and title.strip():
            titled[code] = (html.unescape(title.strip()), genre_from_categories(categories, root))
            untitled.discard(code)
        else:
            untitled.add(code)
    return titled, untitled


def _inter_frame(interactions: _Interactions, titled, untitled, report) -> pd.DataFrame:
    """Drop interactions of unknown or untitled items and duplicate pairs (keep the latest)."""
    frame = pd.DataFrame(
        {
            "user": np.frombuffer(interactions.users, dtype=np.int32),
            "item": np.frombuffer(interactions.items, dtype=np.int32),
            "rating": np.frombuffer(interactions.ratings, dtype=np.float64),
            "timestamp": np.frombuffer(interactions.times, dtype=np.float64),
        }
    )
    is_untitled = frame["item"].isin(np.fromiter(untitled, dtype=np.int32, count=len(untitled)))
    is_titled = frame["item"].isin(np.fromiter(titled, dtype=np.int32, count=len(titled)))
    report.untitled_interactions_dropped = int(is_untitled.sum())
    report.no_metadata_dropped = int((~is_untitled & ~is_titled).sum())
    report.untitled_items_dropped = int(frame.loc[is_untitled, "item"].nunique())
    frame = frame[is_titled]
    by_time = frame.sort_values("timestamp", kind="stable")
    deduped = by_time.drop_duplicates(["user", "item"], keep="last")
    report.duplicates_dropped = len(frame) - len(deduped)
    return deduped.sort_values(["user", "timestamp"], kind="stable")


def _output_frames(interactions, titled, untitled, report) -> tuple[pd.DataFrame, pd.DataFrame]:
    coded = _inter_frame(interactions, titled, untitled, report)
    user_names = np.array(list(interactions.user_ids), dtype=object)
    item_names = np.array(list(interactions.item_ids), dtype=object)
    inter = pd.DataFrame(
        {
            "user_id": user_names[coded["user"].to_numpy()] if len(coded) else [],
            "item_id": item_names[coded["item"].to_numpy()] if len(coded) else [],
            "rating": coded["rating"].to_numpy(),
            "timestamp": coded["timestamp"].to_numpy(),
        }
    )
    kept_items = sorted(coded["item"].unique())
    item = pd.DataFrame(
        {
            "item_id": [item_names[code] for code in kept_items],
            "title": [titled[code][0] for code in kept_items],
            "genre": [titled[code][1] for code in kept_items],
        }
    )
    report.users, report.items = int(inter["user_id"].nunique()), len(item)
    report.interactions = len(inter)
    return inter, item


def convert_amazon(
    category: str,
    input_dir_or_files: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    name: str | None = None,
    fmt: str = "auto",
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert one category's Amazon files into ``output_dir/<name>.inter`` and ``.item``.

    ``name`` defaults to the output folder's name (RecBole looks for ``<dataset>/<dataset>.*``).
    """
    _, root = _category(category)
    files = detect_amazon_files(category, input_dir_or_files, fmt)
    output_dir = Path(output_dir)
    name = name or output_dir.name
    report = ConversionReport(
        category, files.fmt, output_dir / f"{name}.inter", output_dir / f"{name}.item"
    )
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        interactions = _read_interactions(files, strict, progress, report)
        titled, untitled = _read_item_info(
            files, root, interactions.item_ids, strict, progress, report
        )
        inter, item = _output_frames(interactions, titled, untitled, report)
        if inter.empty:
            raise DataError(
                f"{files.interactions}: no interactions left after dropping items without "
                f"metadata or title; check that {files.meta.name} matches it"
            )
        write_atomic(inter, tmp / report.inter_path.name, INTER_TYPES)
        write_atomic(item, tmp / report.item_path.name, ITEM_TYPES)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_bifair.data.amazon",
        description="Convert Amazon 2014/2018/2023 review dumps to RecBole atomic files.",
    )
    parser.add_argument("--category", required=True, choices=sorted(CATEGORIES))
    parser.add_argument("--input", required=True, nargs="+", help="folder, or the files")
    parser.add_argument(
        "--output", required=True, help="dataset folder, e.g. dataset_atomic/games_raw"
    )
    parser.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    parser.add_argument("--name", default=None, help="dataset name (default: output folder name)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = parser.parse_args(argv)
    inputs = args.input[0] if len(args.input) == 1 and Path(args.input[0]).is_dir() else args.input
    try:
        report = convert_amazon(
            args.category,
            inputs,
            args.output,
            name=args.name,
            fmt=args.format,
            strict=args.strict,
            overwrite=args.overwrite,
        )
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
