"""The report command: a markdown table and a PNG from real results files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import PROJECT_ROOT, train_and_read

from recbole_bifair.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results_file(ml100k_root, tmp_path_factory):
    """A results file written by run_recbole.py (BPR, one epoch)."""
    tmp = tmp_path_factory.mktemp("report")
    train_and_read(["--model=BPR", "--dataset=ml100k", f"--data_path={ml100k_root}", "--epochs=1"], tmp)
    return tmp / "results.json"


def report_command(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recbole_bifair.report", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def assert_png(path, min_width: int = 300) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, (path, len(data))
    height, width = imread(path).shape[:2]
    assert width >= min_width and height >= 200


def test_one_run_writes_table_and_group_bars_beside_the_file(results_file):
    done = report_command(str(results_file), cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    table, image = results_file.with_suffix(".md"), results_file.with_suffix(".png")
    assert_png(image)
    results = json.loads(results_file.read_text())
    row = table.read_text().splitlines()[2]
    assert f"| {results['test']['recall@20']:.4f} |" in row and "| BPR | Trainer | ml100k |" in row


def test_several_runs_write_a_scatter_into_the_output_folder(results_file, tmp_path):
    second = tmp_path / "other.json"
    results = json.loads(results_file.read_text())
    results["test"]["recall@20"] /= 2  # a second point elsewhere on the plot
    second.write_text(json.dumps(results))
    table, image = write_report([results_file, second], output=tmp_path / "out", name="both")
    assert image == tmp_path / "out" / "both.png"
    assert_png(image)
    assert len(table.read_text().splitlines()) == 4  # header, rule, two runs


def test_a_file_that_is_not_a_results_file_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "BPR"}))
    done = report_command(str(bad), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {bad}: lacks trainer, dataset, test; is it a file written by run_recbole.py --results_file?"
    ]
    assert not (tmp_path / "bad.png").exists()
