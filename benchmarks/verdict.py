"""A verdict per paper claim (issue 13, item 4), computed from the comparison runs on disk.

Reads every ``benchmarks/results/table2/<dataset>.<group>/runs/<row>.seed<k>.json`` (written by
``run_compare.py`` through ``table2.py``) and the Z-frozen balanced-loss runs, same budget,
shipped defaults: for ml100k the ablation's (``benchmarks/results/ablation/<group>.Balanced-Z-frozen
.seed<k>.json``), for other datasets a ``run_compare.py --methods BiFair --z_learning_rate=0``
comparison in ``benchmarks/results/ablation/<dataset>.<group>/``. Prints one markdown table per claim, each cell marked holds / fails / mixed:

- (a) LLM-enhanced models are fairer than ID models (paper, Table 1): the Plain AlphaRec row
  against each stock ID row (LightGCN, BPR) on CV@20 of the group kind.
- (b) BiFair lowers CV against the best fairness baseline at comparable Recall (paper, Table 2:
  -9.05% pop / -8.88% genre CV, +5.63% / +6.74% MIN). The best baseline is the one with the
  lowest CV among Reweight, DRORec, MultiFR, PopDRO and ITFR whose Recall@20 is within 2% of
  Plain's (all of them when none is); BiFair's Recall must be within 2% of Plain's too. When no
  baseline is within 2% and BiFair's higher CV comes with higher Recall, the mark is mixed (a
  trade-off, not a like-for-like comparison).
- (c) Both levels are needed: BiFair against Separate and PlainLearnZ (CV at comparable Recall)
  and against the balanced loss with Z frozen (does learning Z buy Recall, CV or both).
- (d) The adaptive balance beats fixed group weights: BiFair against Reweight, and the Z-frozen
  balanced loss against Reweight (Z learned, or Z frozen as Reweight's is). Lower CV holds
  only at Recall within 2% of Plain's; a higher CV than a Reweight that lost Recall to get its
  CV, with more Recall kept, is a trade-off (mixed), as in (b).

A difference counts only when it exceeds the sum of the two rows' seed standard deviations
(ddof 0); smaller ones are "within noise". Usage:

    .venv/bin/python benchmarks/verdict.py [--results benchmarks/results] > verdict.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ["Reweight", "DRORec", "MultiFR", "PopDRO", "ITFR"]
ID_MODELS = ["LightGCN", "BPR"]
RECALL, TOLERANCE = "recall@20", 0.02


class Stats:
    """Mean and std (ddof 0) over seeds of one row's test metrics."""

    def __init__(self, runs: list[dict]):
        self.seeds = sorted(r["seed"] for r in runs)
        self.tests = [r["test"] for r in runs]

    def mean(self, key: str) -> float:
        return statistics.fmean(t[key] for t in self.tests)

    def std(self, key: str) -> float:
        return statistics.pstdev([t[key] for t in self.tests])

    def text(self, key: str) -> str:
        return f"{self.mean(key):.3f}±{self.std(key):.3f}"


def load(results: Path) -> dict[tuple[str, str], dict[str, Stats]]:
    """(dataset, group) -> row -> Stats, from the comparisons and the Z-frozen ablation runs."""
    rows: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for path in sorted((results / "table2").glob("*.*/runs/*.seed*.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        rows.setdefault((run["dataset"], run["fair_group"]), {}).setdefault(run["row"], []).append(run)
    for path in sorted((results / "ablation").glob("*.Balanced-Z-frozen.seed*.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        group = path.name.split(".")[0]
        rows.setdefault(("ml100k", group), {}).setdefault("Balanced-Z-frozen", []).append(run)
    for compare in sorted((results / "ablation").glob("*.*/compare.json")):
        if json.loads(compare.read_text(encoding="utf-8")).get("overrides", {}).get("z_learning_rate") != 0:
            raise SystemExit(f"{compare}: not a Z-frozen comparison (overrides lack z_learning_rate=0)")
        for path in sorted(compare.parent.glob("runs/BiFair.seed*.json")):
            run = json.loads(path.read_text(encoding="utf-8"))
            rows.setdefault((run["dataset"], run["fair_group"]), {}).setdefault("Balanced-Z-frozen", []).append(run)
    return {cell: {row: Stats(runs) for row, runs in by_row.items()} for cell, by_row in rows.items()}


def differs(a: Stats, b: Stats, key: str) -> float:
    """a - b where it exceeds the seeds' noise (sum of stds), else 0."""
    delta = a.mean(key) - b.mean(key)
    return delta if abs(delta) > a.std(key) + b.std(key) else 0.0


def comparable(row: Stats, plain: Stats) -> bool:
    """Recall@20 within 2% of Plain's (the paper's 'comparable accuracy')."""
    return row.mean(RECALL) >= (1 - TOLERANCE) * plain.mean(RECALL)


def lower_cv_mark(row: Stats, ref: Stats, plain: Stats, cv: str) -> str:
    """Claims (b) and (d): does ``row`` have a lower CV than ``ref`` at Plain's Recall?

    Lower CV holds when ``row`` is within 2% of Plain's Recall (mixed otherwise); a higher CV
    fails, except against a ``ref`` that lost Recall to get its CV while ``row`` kept more: a
    trade-off (mixed). Differences within the seeds' noise are mixed.
    """
    d = differs(row, ref, cv)
    if d < 0:
        return "holds" if comparable(row, plain) else "mixed"
    if d > 0 and not comparable(ref, plain) and differs(row, ref, RECALL) > 0:
        return "mixed"
    return "fails" if d > 0 else "mixed"


def pct(a: float, b: float) -> str:
    return f"{100 * (a - b) / b:+.1f}%"


def missing(names: list[str], what: str) -> str:
    """A note naming the rows a verdict could not look at (not run in this cell)."""
    return f" ({what} not run: {', '.join(names)})" if names else ""


def verdict_line(cell: str, head: str, marks: list[str], parts: list[str]) -> str | None:
    """One table line: the common mark of the comparisons (mixed when they disagree)."""
    if not parts:
        return None
    mark = marks[0] if len(set(marks)) == 1 else "mixed"
    return f"| {cell} | **{mark}** | {head}; {'; '.join(parts)} |"


def claim_a(cell, rows, group) -> str | None:
    cv = f"{group}_cv@20"
    if "Plain" not in rows or not any(m in rows for m in ID_MODELS):
        return None
    plain, parts, marks = rows["Plain"], [], []
    for model in (m for m in ID_MODELS if m in rows):
        d = differs(plain, rows[model], cv)
        marks.append("holds" if d < 0 else "fails" if d > 0 else "mixed")
        parts.append(f"{model} CV {rows[model].text(cv)} R {rows[model].text(RECALL)}")
    return verdict_line(cell, f"Plain CV {plain.text(cv)} R {plain.text(RECALL)}", marks, parts)


def claim_b(cell, rows, group) -> str | None:
    cv, mn = f"{group}_cv@20", f"{group}_min@20"
    present = [b for b in BASELINES if b in rows]
    if "BiFair" not in rows or "Plain" not in rows or not present:
        return None
    plain, bifair = rows["Plain"], rows["BiFair"]
    close = [b for b in present if comparable(rows[b], plain)]
    best = min(close or present, key=lambda b: rows[b].mean(cv))
    mark = lower_cv_mark(bifair, rows[best], plain, cv)
    note = "" if close else " (no baseline within 2% of Plain's Recall: the lowest CV of all)"
    note += missing([b for b in BASELINES if b not in rows], "baselines")
    return (f"| {cell} | **{mark}** | BiFair CV {bifair.text(cv)} vs {best} {rows[best].text(cv)} "
            f"({pct(bifair.mean(cv), rows[best].mean(cv))}); MIN {pct(bifair.mean(mn), rows[best].mean(mn))}; "
            f"R {bifair.text(RECALL)} = {pct(bifair.mean(RECALL), plain.mean(RECALL))} vs Plain{note}; "
            f"seeds {','.join(map(str, bifair.seeds))} |")  # fmt: skip


def claim_c(cell, rows, group) -> str | None:
    cv = f"{group}_cv@20"
    if "BiFair" not in rows:
        return None
    bifair, parts, marks = rows["BiFair"], [], []
    for control in ("Separate", "PlainLearnZ", "Balanced-Z-frozen"):
        if control not in rows:
            continue
        other = rows[control]
        d_cv, d_r = differs(bifair, other, cv), differs(bifair, other, RECALL)
        if d_cv <= 0 and d_r >= 0 and (d_cv < 0 or d_r > 0):
            verdict, mark = "BiFair dominates", "holds"
        elif d_cv >= 0 and d_r <= 0 and (d_cv > 0 or d_r < 0):
            verdict, mark = "BiFair dominated", "fails"
        elif d_cv == 0 and d_r == 0:
            verdict, mark = "within noise", "mixed"
        else:
            verdict, mark = "trade-off", "mixed"
        marks.append(mark)
        parts.append(f"{control}: CV {other.text(cv)} R {other.text(RECALL)} ({verdict})")
    absent = missing([c for c in ("Separate", "PlainLearnZ", "Balanced-Z-frozen") if c not in rows], "controls")
    return verdict_line(cell, f"BiFair CV {bifair.text(cv)} R {bifair.text(RECALL)}", marks, parts + ([absent.strip(" ()")] if absent else []))


def claim_d(cell, rows, group) -> str | None:
    cv = f"{group}_cv@20"
    if "Reweight" not in rows or "Plain" not in rows:
        return None
    fixed, plain, parts, marks = rows["Reweight"], rows["Plain"], [], []
    for adaptive in ("BiFair", "Balanced-Z-frozen"):
        if adaptive not in rows:
            continue
        row = rows[adaptive]
        marks.append(lower_cv_mark(row, fixed, plain, cv))
        parts.append(f"{adaptive} CV {row.text(cv)} R {row.text(RECALL)} ({pct(row.mean(cv), fixed.mean(cv))} CV)")
    return verdict_line(cell, f"Reweight CV {fixed.text(cv)} R {fixed.text(RECALL)}", marks, parts)


CLAIMS = {
    "(a) LLM-enhanced (Plain AlphaRec) fairer than ID models": claim_a,
    "(b) BiFair lowers CV against the best fairness baseline at comparable Recall": claim_b,
    "(c) both levels needed (Separate, PlainLearnZ, balanced loss with Z frozen)": claim_c,
    "(d) adaptive balance beats fixed group weights (Reweight)": claim_d,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    cells = load(Path(args.results))
    for title, claim in CLAIMS.items():
        print(f"### {title}\n\n| data, groups | verdict | numbers (test, mean±std over seeds) |\n|---|---|---|")
        for (dataset, group), rows in sorted(cells.items()):
            line = claim(f"{dataset}, {group}", rows, group)
            print(line if line else f"| {dataset}, {group} | not run | rows missing |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
