"""Results you can look at: a markdown table and a PNG from one or more results files.

    python -m recbole_bifair.report RESULTS.json [MORE.json ...] [--output DIR] [--name NAME]
        [--topk 20] [--groups pop]

Reads the JSON files that ``run_recbole.py --results_file=`` writes and writes, into ``DIR``
(by default the folder of the first file), ``NAME.md`` (one row per run: model, trainer,
dataset, seed, test Recall/NDCG/Hit and the fairness figures) and ``NAME.png``:

- one run: the test Recall of each item group (``per_group``), one panel per group kind
  (popularity, genre); the dashed line is the mean over groups;
- several runs: test Recall@K against the group CV@K of ``--groups`` (upper left is better:
  accurate and even), one point per run, named in the legend.

``NAME`` defaults to the first file's name without ``.json`` for one run and ``report`` for
several. Both files are written atomically. A missing or malformed results file ends with one
``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recbole_bifair.data.atomic import atomic_write
from recbole_bifair.errors import DataError, PluginError

REQUIRED_KEYS = ("model", "trainer", "dataset", "test")
GROUP_TITLES = {"pop": "popularity groups", "genre": "genre groups"}


@dataclass
class Run:
    """One results file."""

    path: Path
    results: dict

    @property
    def label(self) -> str:
        r = self.results
        return f"{r['model']} / {r['trainer']} on {r['dataset']} (seed {r.get('seed', '?')})"

    def test(self, key: str) -> float | None:
        value = self.results["test"].get(key)
        return float(value) if value is not None else None


def load_run(path: str | Path) -> Run:
    """Read one results file; a missing, unreadable or foreign file is a :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: results file not found; write one with run_recbole.py --results_file={path}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a results JSON ({error})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        raise DataError(
            f"{path}: lacks {', '.join(missing)}; is it a file written by run_recbole.py --results_file?"
        )
    return Run(path, results)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown_table(runs: Sequence[Run], k: int) -> str:
    """One row per run with the test metrics at cut-off ``k`` (``-`` where a run lacks one)."""
    columns = [f"recall@{k}", f"ndcg@{k}", f"hit@{k}", f"pop_cv@{k}", f"pop_min@{k}",
               f"genre_cv@{k}", f"genre_min@{k}"]
    lines = [
        "| run | model | trainer | dataset | seed | " + " | ".join(columns) + " | epochs |",
        "|---" * (len(columns) + 6) + "|",
    ]
    for run in runs:
        r = run.results
        epochs = len((r.get("timing") or {}).get("epoch_seconds") or [])
        lines.append(
            f"| {run.path.stem} | {r['model']} | {r['trainer']} | {r['dataset']} | {r.get('seed', '-')} | "
            + " | ".join(_cell(run.test(c)) for c in columns)
            + f" | {epochs} |"
        )
    return "\n".join(lines) + "\n"


def group_bars_figure(run: Run, k: int):
    """Per-group test Recall@k of one run: one bar panel per group kind in ``per_group``."""
    from matplotlib.figure import Figure

    panels = [(key.split("@")[0], groups) for key, groups in (run.results.get("per_group") or {}).items()
              if key.endswith(f"@{k}") and groups]
    if not panels:
        raise DataError(f"{run.path}: no per-group test Recall@{k} to plot (per_group is empty)")
    widths = [max(2.5, 0.45 * len(groups)) for _, groups in panels]
    figure = Figure(figsize=(sum(widths) + 1.5, 4.2), layout="constrained")
    axes = figure.subplots(1, len(panels), width_ratios=widths, squeeze=False)[0]
    for ax, (kind, groups) in zip(axes, panels, strict=True):
        names, values = list(groups), [float(v) for v in groups.values()]
        ax.bar(range(len(names)), values, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=60 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
        ax.axhline(sum(values) / len(values), color="tab:gray", linestyle="--", linewidth=1)
        cv = run.test(f"{kind}_cv@{k}")
        ax.set_title(f"{GROUP_TITLES.get(kind, kind)}" + (f" (CV {cv:.3f})" if cv is not None else ""))
        ax.set_ylabel(f"test Recall@{k}")
    figure.suptitle(run.label)
    return figure


def scatter_figure(runs: Sequence[Run], k: int, kind: str):
    """Test Recall@k against group CV@k across runs, one labelled point each."""
    from matplotlib.figure import Figure

    points = [(run, run.test(f"{kind}_cv@{k}"), run.test(f"recall@{k}")) for run in runs]
    lacking = [str(run.path) for run, cv, recall in points if cv is None or recall is None]
    if lacking:
        raise DataError(f"{lacking[0]}: no test {kind}_cv@{k} or recall@{k} to plot; use --topk/--groups it has")
    figure = Figure(figsize=(9, 5), layout="constrained")
    ax = figure.subplots()
    markers = "osD^vP*Xh<>"
    for index, (run, cv, recall) in enumerate(points):
        r = run.results
        ax.scatter(cv, recall, s=45, marker=markers[index % len(markers)],
                   label=f"{run.path.stem} ({r['model']} / {r['trainer']})")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    ax.set_xlabel(f"test {kind} CV@{k} (lower = more even across {GROUP_TITLES.get(kind, kind)})")
    ax.set_ylabel(f"test Recall@{k}")
    ax.set_title(f"Recall vs {kind} CV across {len(runs)} runs (upper left: accurate and even)")
    ax.grid(alpha=0.3)
    return figure


def write_report(paths: Sequence[str | Path], output: str | Path | None = None, name: str | None = None,
                 k: int = 20, kind: str = "pop") -> tuple[Path, Path]:
    """Write ``NAME.md`` and ``NAME.png`` into ``output``; return their paths."""
    runs = [load_run(path) for path in paths]
    folder = Path(output) if output is not None else runs[0].path.parent
    name = name or (runs[0].path.stem if len(runs) == 1 else "report")
    figure = group_bars_figure(runs[0], k) if len(runs) == 1 else scatter_figure(runs, k, kind)
    table_path, image_path = folder / f"{name}.md", folder / f"{name}.png"
    with atomic_write(table_path) as tmp:
        tmp.write_text(markdown_table(runs, k), encoding="utf-8")
    with atomic_write(image_path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return table_path, image_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_bifair.report", description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="results JSON files written by run_recbole.py --results_file")
    parser.add_argument("--output", default=None, help="folder for NAME.md and NAME.png (default: beside the first file)")
    parser.add_argument("--name", default=None, help="file name without suffix (default: the file's, or 'report')")
    parser.add_argument("--topk", type=int, default=20, help="cut-off K of the metrics (default 20)")
    parser.add_argument("--groups", default="pop", choices=sorted(GROUP_TITLES), help="CV of these groups in the scatter")
    args = parser.parse_args(argv)
    try:
        table_path, image_path = write_report(args.results, args.output, args.name, args.topk, args.groups)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {table_path} and {image_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
