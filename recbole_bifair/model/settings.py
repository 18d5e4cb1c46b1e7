"""Reading the model keys: the value given is used as given (0, False and "" included).

Defaults live in ``properties/model/<Model>.yaml``; a value that has no meaning for the model
raises :class:`~recbole_bifair.errors.ConfigKeyError` naming the key, the value and what is
allowed. Local to the model package (the run-wide checks of common keys are elsewhere).
"""

from __future__ import annotations

import math

from recbole_bifair.errors import ConfigKeyError


def bad_value(key: str, value, allowed: str) -> ConfigKeyError:
    return ConfigKeyError(f"{key}: {value!r} is not allowed; expected {allowed}")


def choice(config, key: str, allowed: tuple[str, ...]) -> str:
    """``config[key]``, one of ``allowed``."""
    value = config[key]
    if value not in allowed:
        raise bad_value(key, value, "one of " + ", ".join(allowed))
    return value


def number(config, key: str, kind: type = float, minimum: float | None = None, above: float | None = None):
    """``config[key]`` as ``kind`` (int or float), >= ``minimum`` or > ``above`` when given."""
    value = config[key]
    bounds = f" >= {minimum}" if minimum is not None else f" > {above}" if above is not None else ""
    allowed = f"{'an integer' if kind is int else 'a number'}{bounds}"
    if isinstance(value, bool) or value is None:
        raise bad_value(key, value, allowed)
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise bad_value(key, value, allowed) from None
    if kind is int and not isinstance(value, str) and converted != value:
        raise bad_value(key, value, allowed)  # 2.5 is not an integer
    if not math.isfinite(converted) or (minimum is not None and converted < minimum) or (
        above is not None and converted <= above
    ):
        raise bad_value(key, value, allowed)
    return converted


def text(config, key: str, allowed: str, optional: bool = False) -> str | None:
    """``config[key]`` as a non-empty string (``None`` too when ``optional``: the yaml's ``~``)."""
    value = config[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise bad_value(key, value, allowed)
    return value
