"""Progress on long work when no progress bar is shown: a log line every N batches.

``show_progress: ~`` (the default) becomes True when stderr is a terminal (RecBole's and the
plugin trainers' tqdm bars) and False otherwise (a log file, a pipe, a Ray worker). Without
bars, :func:`log_progress` makes a RecBole dataloader log ``<label>: batch i/n, s elapsed,
about s left`` every ``progress_log_steps`` batches but at most once per
``progress_log_seconds``, so a 77-second epoch or a 30-second validation is not silent in a log
file, and a validation over hundreds of small batches does not flood it. It works for every trainer, stock or plugin, because
it sits on the dataloader that every trainer iterates, not in a trainer's loop.
"""

from __future__ import annotations

from functools import cache
from logging import getLogger
from time import perf_counter


def logged_batches(batches, label: str, every: int, total: int, min_seconds: float = 0.0):
    """Yield ``batches``, logging a line after every ``every``-th one has been used, at most one
    line per ``min_seconds`` (a validation over hundreds of small batches stays readable)."""
    start = last = perf_counter()
    for step, batch in enumerate(batches, start=1):
        yield batch  # the caller trains or evaluates on it before the next one is drawn
        now = perf_counter()
        if every and step % every == 0 and step < total and now - last >= min_seconds:
            last, elapsed = now, now - start
            left = elapsed / step * (total - step)
            getLogger().info(
                f"{label}: batch {step}/{total}, {elapsed:.0f} s elapsed, about {left:.0f} s left"
            )


@cache
def _with_progress_log(loader_class: type) -> type:
    """A subclass of ``loader_class`` (same name, same instance layout) whose iteration logs."""

    def __iter__(self):
        batches = super(subclass, self).__iter__()
        return logged_batches(batches, self.progress_label, self.progress_every, len(self),
                              self.progress_min_seconds)

    subclass = type(loader_class.__name__, (loader_class,), {"__iter__": __iter__, "logs_progress": True})
    return subclass


def log_progress(loader, label: str, every: int, min_seconds: float = 0.0) -> None:
    """Make ``loader`` (in place) log its progress every ``every`` batches, at most once per
    ``min_seconds``; ``every`` 0 leaves it as it is."""
    if loader is None or every <= 0:
        return
    if not getattr(loader, "logs_progress", False):
        loader.__class__ = _with_progress_log(type(loader))
    loader.progress_label, loader.progress_every, loader.progress_min_seconds = label, every, min_seconds
