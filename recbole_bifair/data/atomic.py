"""Reading and writing RecBole atomic files, and writing a dataset folder atomically.

RecBole atomic files are tab-separated with a header of ``name:type`` columns, where type is
one of ``token``, ``token_seq``, ``float``, ``float_seq``. Every writer here writes into a
temporary sibling and renames it into place, so a crash never leaves half a file or half a
dataset folder, and an existing dataset is never overwritten unless the caller asks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from recbole_bifair.errors import DataError

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def parse_header(path: Path) -> list[tuple[str, str]]:
    """Return ``[(field, type), ...]`` from the header line of an atomic file."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").rstrip("\r")
    columns = []
    for column in header.split("\t"):
        name, sep, kind = column.rpartition(":")
        if not sep or kind not in ATOMIC_TYPES:
            raise DataError(
                f"{path}: header column {column!r} is not 'name:type' with type in "
                f"{ATOMIC_TYPES}; fix the first line of the file"
            )
        columns.append((name, kind))
    return columns


def read_atomic(path: str | Path) -> pd.DataFrame:
    """Read an atomic file into a DataFrame whose columns are the bare field names.

    ``token`` and ``token_seq`` columns stay strings; ``float`` columns become floats.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    columns = parse_header(path)
    dtypes = {name: (float if kind == "float" else str) for name, kind in columns}
    frame = pd.read_csv(
        path,
        sep="\t",
        header=0,
        names=[name for name, _ in columns],
        dtype=dtypes,
        keep_default_na=False,
        na_values={name: [""] for name, kind in columns if kind == "float"},
        quoting=3,  # csv.QUOTE_NONE: titles may contain quotes
        engine="c",
    )
    frame.attrs["atomic_types"] = dict(columns)
    return frame


def atomic_types(frame: pd.DataFrame, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The atomic type of each column: from ``frame.attrs`` when read from a file, else inferred."""
    known = dict(frame.attrs.get("atomic_types", {}))
    known.update(overrides or {})
    types = {}
    for name in frame.columns:
        if name in known:
            types[name] = known[name]
        elif pd.api.types.is_float_dtype(frame[name]) or pd.api.types.is_integer_dtype(
            frame[name]
        ):
            types[name] = "float" if name in ("rating", "timestamp") else "token"
        else:
            types[name] = "token"
    return types


def _clean_text(value: object) -> str:
    """Tabs and newlines would break the atomic format; fold them into spaces."""
    text = "" if value is None else str(value)
    if "\t" in text or "\n" in text or "\r" in text:
        text = " ".join(text.replace("\t", " ").replace("\r", " ").replace("\n", " ").split())
    return text


def write_atomic(
    frame: pd.DataFrame, path: str | Path, types: dict[str, str] | None = None
) -> None:
    """Write ``frame`` as an atomic file via a temporary file and a rename."""
    path = Path(path)
    types = atomic_types(frame, types)
    header = "\t".join(f"{name}:{types[name]}" for name in frame.columns)
    out = frame.copy()
    for name in out.columns:
        if types[name] in ("token", "token_seq"):
            out[name] = out[name].map(_clean_text)
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(header + "\n")
            out.to_csv(handle, sep="\t", header=False, index=False, quoting=3, escapechar="\\")


def _read_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


# 0666 less the umask, read once at import: the mode ``open(path, "w")`` gives a new file.
NEW_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, NEW_FILE_MODE)  # mkstemp makes 0600; a written file reads like any other
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it onto ``path`` only on success.

    An existing non-empty ``path`` is refused unless ``overwrite``; with ``overwrite`` the old
    folder is moved aside first and deleted only after the new one is in place.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise DataError(
            f"{path}: folder already holds a dataset; pass --overwrite to replace it "
            "or choose another output name"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
