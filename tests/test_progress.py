"""Progress log lines when no bar is shown: every N batches, at most one per min_seconds."""

from __future__ import annotations

import logging

import torch

from recbole_bifair.progress import log_progress, logged_batches


def test_a_line_every_n_batches_but_not_after_the_last(caplog):
    with caplog.at_level(logging.INFO):
        assert list(logged_batches(iter(range(7)), "train", every=2, total=7)) == list(range(7))
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "train: batch 2/7", "train: batch 4/7", "train: batch 6/7"]


def test_min_seconds_throttles_the_lines(caplog):
    with caplog.at_level(logging.INFO):
        list(logged_batches(iter(range(100)), "valid", every=1, total=100, min_seconds=3600))
    assert caplog.records == []


def test_a_loader_keeps_its_batches_and_type(caplog):
    loader = torch.utils.data.DataLoader(list(range(10)), batch_size=3)
    expected = [batch.tolist() for batch in loader]
    log_progress(loader, "test", every=1)
    log_progress(loader, "test", every=2)  # a second call only changes the settings
    with caplog.at_level(logging.INFO):
        assert [batch.tolist() for batch in loader] == expected
    assert isinstance(loader, torch.utils.data.DataLoader) and len(loader) == 4
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["test: batch 2/4"]
