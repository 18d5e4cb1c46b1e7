"""Errors that the command lines turn into one clear line instead of a traceback.

Every message names the file, key or name at fault and what to do about it.
"""

from __future__ import annotations

import difflib


class PluginError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""


class UnknownNameError(PluginError, ValueError):
    """An unknown model, trainer, dataset or metric name."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, sorted(available)
        close = difflib.get_close_matches(name, self.available, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"unknown {kind} {name!r}.{hint} Available {kind}s: {', '.join(self.available)}"
        )


class ConfigKeyError(PluginError, KeyError):
    """A configuration key that is missing, misspelled or has a bad value."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(PluginError):
    """A data file or folder that is missing or malformed."""


class EmbeddingError(DataError):
    """An item-embedding file that does not match its item file."""


class NonFiniteLossError(PluginError):
    """The training loss became NaN or Inf."""
