"""benchmarks/verdict.py on hand-made comparison runs: each claim's mark follows its rule."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "verdict.py"
spec = importlib.util.spec_from_file_location("verdict", SCRIPT)
verdict = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verdict)


def stats(recall: float, cv: float, spread: float = 0.001) -> "verdict.Stats":
    """Three seeds around (recall, cv), std ~ spread."""
    runs = [{"seed": k, "test": {"recall@20": recall + d, "pop_cv@20": cv + d, "pop_min@20": 0.05}}
            for k, d in enumerate((-spread, 0.0, spread))]  # fmt: skip
    return verdict.Stats(runs)


PLAIN = stats(0.20, 0.70)


@pytest.mark.parametrize(
    "row, ref, mark",
    [
        (stats(0.20, 0.50), stats(0.20, 0.60), "holds"),  # lower CV at Plain's Recall
        (stats(0.17, 0.50), stats(0.20, 0.60), "mixed"),  # lower CV, but 15% below Plain's Recall
        (stats(0.20, 0.65), stats(0.20, 0.60), "fails"),  # higher CV against a comparable ref
        (stats(0.22, 0.65), stats(0.15, 0.60), "mixed"),  # higher CV, but the ref lost Recall for its CV
        (stats(0.20, 0.601, 0.01), stats(0.20, 0.60, 0.01), "mixed"),  # within the seeds' noise
    ],
)
def test_lower_cv_mark(row, ref, mark):
    assert verdict.lower_cv_mark(row, ref, PLAIN, "pop_cv@20") == mark


def write_run(path: Path, row: str, seed: int, recall: float, cv: float, dataset="games", group="pop") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    test = {"recall@20": recall, f"{group}_cv@20": cv, f"{group}_min@20": 0.05}
    path.write_text(json.dumps({"row": row, "seed": seed, "dataset": dataset, "fair_group": group, "test": test}))


def test_load_reads_comparisons_and_z_frozen_comparisons(tmp_path, capsys):
    for seed in (0, 1, 2):
        for row, recall, cv in (("Plain", 0.20, 0.40), ("BiFair", 0.24, 0.55), ("PopDRO", 0.20, 0.37),
                                ("LightGCN", 0.17, 0.90)):  # fmt: skip
            write_run(tmp_path / "table2" / "games.pop" / "runs" / f"{row}.seed{seed}.json", row, seed, recall, cv)
        write_run(tmp_path / "ablation" / "games.pop" / "runs" / f"BiFair.seed{seed}.json", "BiFair", seed, 0.205, 0.41)
    (tmp_path / "ablation" / "games.pop" / "compare.json").write_text(json.dumps({"overrides": {"z_learning_rate": 0}}))
    cells = verdict.load(tmp_path)
    assert set(cells[("games", "pop")]) == {"Plain", "BiFair", "PopDRO", "LightGCN", "Balanced-Z-frozen"}
    assert cells[("games", "pop")]["Balanced-Z-frozen"].mean("recall@20") == pytest.approx(0.205)
    assert verdict.main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| games, pop | **holds** | Plain CV 0.400" in out  # (a): Plain fairer than LightGCN
    assert "| games, pop | **fails** | BiFair CV 0.550±0.000 vs PopDRO" in out  # (b)
    assert "baselines not run: Reweight, DRORec, MultiFR, ITFR" in out


def test_load_refuses_an_ablation_comparison_that_learns_z(tmp_path):
    write_run(tmp_path / "ablation" / "games.pop" / "runs" / "BiFair.seed0.json", "BiFair", 0, 0.2, 0.4)
    (tmp_path / "ablation" / "games.pop" / "compare.json").write_text(json.dumps({"overrides": {}}))
    with pytest.raises(SystemExit, match="not a Z-frozen comparison"):
        verdict.load(tmp_path)
