"""Shared fixtures: a prepared copy of the embedded default dataset."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ml100k_root(tmp_path_factory) -> Path:
    """A data_path folder holding the prepared ml100k (paper protocol), made once per session."""
    from recbole_bifair.data.protocol import prepare_ml100k

    root = tmp_path_factory.mktemp("data")
    prepare_ml100k(root, "ml100k")
    return root
