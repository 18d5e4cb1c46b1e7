"""Helpers for tests that run the command lines (importable as ``helpers``: pytest pythonpath)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python run_recbole.py ARGS`` in a subprocess with one thread; return the result."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run_recbole.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def train_and_read(args: list[str], tmp_path: Path, timeout: int = 600) -> dict:
    """Train through run_recbole.py and return the results JSON (fails with the log on error)."""
    results = tmp_path / "results.json"
    done = run_cli([*args, f"--results_file={results}"], cwd=tmp_path, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(results.read_text())
