"""Search-space files: ``key: {distribution: [arguments]}`` yaml, checked and turned into a
Ray Tune ``param_space`` (format in docs/tuning.md)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recbole_bifair.errors import PluginError


class SpaceError(PluginError, ValueError):
    """A search-space file that is missing or malformed."""


def _yaml_loader() -> type:
    """A SafeLoader that reads ``1e-4`` as a float, as RecBole's config loader does."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return Loader


def read_yaml(path: Path) -> Any:
    """Parse a yaml file with RecBole's number rules."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bounds(args: list, log: bool = False, ints: bool = False) -> str | None:
    """Why ``[low, high, (q)]`` is not a valid range, or None."""
    if not all(_is_number(a) for a in args):
        return "bounds must be numbers"
    if ints and not all(_is_int(a) for a in args):
        return "bounds must be integers"
    low, high = args[0], args[1]
    if not low < high:
        return f"lower bound {low} must be below upper bound {high}"
    if log and low <= 0:
        return f"a log range needs a positive lower bound, got {low}"
    if len(args) == 3 and not args[2] > 0:
        return f"step q must be positive, got {args[2]}"
    return None


def _check_normal(args: list) -> str | None:
    if not all(_is_number(a) for a in args):
        return "mean and sd must be numbers"
    if not args[1] > 0:
        return f"sd must be positive, got {args[1]}"
    if len(args) == 3 and not args[2] > 0:
        return f"step q must be positive, got {args[2]}"
    return None


def _check_options(args: list) -> str | None:
    return None if args else "needs at least one option"


# name -> (allowed numbers of arguments (None: any), validator, ray.tune function, usage)
DISTRIBUTIONS: dict[str, tuple[tuple[int, ...] | None, Any, str, str]] = {
    "uniform": ((2,), _check_bounds, "uniform", "[low, high]"),
    "quniform": ((3,), _check_bounds, "quniform", "[low, high, q]"),
    "loguniform": ((2,), lambda a: _check_bounds(a, log=True), "loguniform", "[low, high]"),
    "qloguniform": ((3,), lambda a: _check_bounds(a, log=True), "qloguniform", "[low, high, q]"),
    "randint": ((2,), lambda a: _check_bounds(a, ints=True), "randint", "[low, high) integers"),
    "qrandint": ((3,), lambda a: _check_bounds(a, ints=True), "qrandint", "[low, high, q] integers"),
    "lograndint": ((2,), lambda a: _check_bounds(a, log=True, ints=True), "lograndint", "[low, high) integers"),
    "randn": ((2,), _check_normal, "randn", "[mean, sd]"),
    "qrandn": ((3,), _check_normal, "qrandn", "[mean, sd, q]"),
    "choice": (None, _check_options, "choice", "[option, ...]"),
    "grid_search": (None, _check_options, "grid_search", "[value, ...]"),
}


@dataclass
class SearchSpace:
    """A parsed space file: ``entries`` name -> (distribution, args); ``fixed`` constants."""

    path: str
    entries: dict[str, tuple[str, list]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def is_grid(self) -> bool:
        """True when every tuned entry is a grid (plain lists in the file)."""
        return bool(self.entries) and all(d == "grid_search" for d, _ in self.entries.values())

    def to_ray(self, grid_as_choice: bool = False) -> dict[str, Any]:
        """The Tuner's ``param_space`` (grids become choices for optuna/hyperopt)."""
        from ray import tune

        space: dict[str, Any] = dict(self.fixed)
        for name, (dist, args) in self.entries.items():
            if dist == "grid_search":
                space[name] = tune.choice(args) if grid_as_choice else tune.grid_search(args)
            elif dist == "choice":
                space[name] = tune.choice(args)
            else:
                space[name] = getattr(tune, DISTRIBUTIONS[dist][2])(*args)
        return space


def _parse_entry(path: Path, name: str, value: Any) -> tuple[str, list] | None:
    """``(distribution, args)`` for one entry, None for a fixed value; SpaceError if malformed."""
    where = f"{path}: entry {name!r}"
    if isinstance(value, list):
        value = {"grid_search": value}
    if not isinstance(value, dict):
        if value is None:
            raise SpaceError(f"{where} has no value")
        return None
    if len(value) != 1:
        raise SpaceError(f"{where} must name exactly one distribution, got {sorted(map(str, value))}")
    (dist, args), = value.items()
    if dist == "grid":
        dist = "grid_search"
    if dist not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {dist!r}; known: {', '.join(DISTRIBUTIONS)}")
    arities, check, _, usage = DISTRIBUTIONS[dist]
    if not isinstance(args, list) or (arities is not None and len(args) not in arities):
        raise SpaceError(f"{where}: {dist} takes {usage}, got {args!r}")
    problem = check(args)
    if problem:
        raise SpaceError(f"{where}: {dist} {args!r}: {problem}")
    return dist, args


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space yaml file (see docs/tuning.md for the format)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: search-space file not found")
    try:
        data = read_yaml(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise SpaceError(f"{path}: not valid yaml{line}") from None
    if not isinstance(data, dict) or not data:
        raise SpaceError(f"{path}: a search space must be a non-empty mapping of key: distribution")
    space = SearchSpace(path=str(path.resolve()))
    for name, value in data.items():
        parsed = _parse_entry(path, str(name), value)
        if parsed is None:
            space.fixed[str(name)] = value
        else:
            space.entries[str(name)] = parsed
    if not space.entries:
        raise SpaceError(f"{path}: no entry to tune (every value is fixed)")
    return space




def resolve_search(search: str, space: SearchSpace) -> str:
    """The search algorithm: ``grid`` when every entry is a plain list, else ``random``."""
    if search == "auto":
        return "grid" if space.is_grid else "random"
    if search == "grid" and not space.is_grid:
        sampled = [n for n, (d, _) in space.entries.items() if d != "grid_search"]
        raise SpaceError(f"{space.path}: --search=grid needs plain lists; entry {sampled[0]!r} is a distribution")
    return search

