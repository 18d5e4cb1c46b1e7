"""The comparison's outputs, from the per-run results JSON (``DIR/runs/<row>.seed<k>.json``):

- ``comparison.md``: one line per row, test metrics @K as mean ± std over its seeds (ddof 0),
  the picked configuration and the selection rule;
- ``comparison.csv``: the same numbers, mean and std in separate columns;
- ``comparison.png``: test Recall against test CV of the balanced group kind, error bars of one
  std over seeds, the Pareto front (no other row has both higher Recall and lower CV) joined.

All three are written atomically (temp file + rename).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from recbole_bifair.data.atomic import atomic_write

REPORT_MD, REPORT_CSV, REPORT_PNG = "comparison.md", "comparison.csv", "comparison.png"


def columns(fair_group: str, k: int = 20) -> list[tuple[str, str]]:
    """(header, metric key) of the table's metric columns."""
    return [
        (f"R@{k}", f"recall@{k}"), (f"N@{k}", f"ndcg@{k}"),
        (f"{fair_group} CV@{k}", f"{fair_group}_cv@{k}"), (f"{fair_group} MIN@{k}", f"{fair_group}_min@{k}"),
    ]  # fmt: skip


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (ddof 0) of the finite values; NaN, NaN if there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.pstdev(finite)


def cell(values: list[float]) -> str:
    """``0.2301 ± 0.0040`` (one seed: the value alone)."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f}" if len(values) == 1 else f"{mean:.4f} ± {std:.4f}"


def load_runs(output: Path, row_name: str, seeds: list[int]) -> list[dict[str, Any]]:
    """The row's results JSON for each seed that has one, in seed order."""
    paths = [output / "runs" / f"{row_name}.seed{s}.json" for s in seeds]
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths if p.is_file()]


def summarise(output: Path, rows, args) -> list[dict[str, Any]]:
    """One dict per row: name, model, trainer, config, seeds run, and mean/std per metric."""
    table = []
    for row in rows:
        runs = load_runs(output, row.name, args.seeds)
        entry = {
            "row": row.name, "model": row.model, "trainer": row.trainer or "(RecBole's)",
            "config": runs[0]["params"] if runs else {}, "seeds": [r["seed"] for r in runs],
            "select": runs[0].get("select") if runs else None,
        }  # fmt: skip
        for _, key in columns(args.fair_group):
            entry[key] = mean_std([r["test"].get(key, math.nan) for r in runs])
            entry[f"values:{key}"] = [r["test"].get(key, math.nan) for r in runs]
        entry["epochs"] = [r.get("epochs") for r in runs]
        table.append(entry)
    return table


def config_text(config: dict[str, Any]) -> str:
    """``learning_rate=0.00123 xi=lr``: a picked configuration, short."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def markdown(table: list[dict[str, Any]], args) -> str:
    """The comparison table."""
    heads = columns(args.fair_group)
    rule = next((e["select"] for e in table if e["select"]), "best valid metric")
    if args.num_samples == 0:
        how = "Each row ran its shipped defaults (no search, --num_samples=0)"
    else:
        how = (f"Each row's configuration was searched on seed {args.seeds[0]} ({args.num_samples} trials, "
               f"VALID metrics only, picked by: {rule})")  # fmt: skip
    lines = [
        f"Test metrics of {args.dataset}, {args.fair_group} groups: mean ± std over seeds (ddof 0). {how} "
        f"and run on seeds {', '.join(map(str, args.seeds))}.",
        "",
        "| row | model | trainer | seeds | " + " | ".join(h for h, _ in heads) + " | epochs | config |",
        "|---" * (len(heads) + 6) + "|",
    ]
    for entry in table:
        epochs = [e for e in entry["epochs"] if e is not None]
        span = f"{min(epochs)}-{max(epochs)}" if epochs else "n/a"
        cells = " | ".join(cell(entry[f"values:{key}"]) for _, key in heads)
        lines.append(f"| {entry['row']} | {entry['model']} | {entry['trainer']} | {len(entry['seeds'])} | "
                     f"{cells} | {span} | {config_text(entry['config'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_csv(table: list[dict[str, Any]], args, path: Path) -> None:
    """comparison.csv: mean and std columns per metric."""
    heads = columns(args.fair_group)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "model", "trainer", "seeds", *(f"{key}_{s}" for _, key in heads for s in ("mean", "std")),
                         "config"])  # fmt: skip
        for entry in table:
            writer.writerow([entry["row"], entry["model"], entry["trainer"], " ".join(map(str, entry["seeds"])),
                             *(v for _, key in heads for v in entry[key]), json.dumps(entry["config"])])  # fmt: skip


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower x = CV, higher y = Recall),
    sorted by x."""
    front = [
        i for i, (x, y) in enumerate(points)
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for x2, y2 in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def plot(table: list[dict[str, Any]], args, path: Path) -> None:
    """comparison.png: Recall vs CV with one-std error bars and the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recall, cv = f"recall@{20}", f"{args.fair_group}_cv@{20}"
    shown = [e for e in table if math.isfinite(e[recall][0]) and math.isfinite(e[cv][0])]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for index, entry in enumerate(shown):
        (x, xerr), (y, yerr) = entry[cv], entry[recall]
        marker = "osD^v"[index // 10 % 5]  # the colour cycle has 10 colours: rows 11+ change marker
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, capsize=3, ms=7, color=f"C{index % 10}",
                    label=f"{entry['row']} ({len(entry['seeds'])} seed{'s' * (len(entry['seeds']) != 1)})")  # fmt: skip
    front = pareto_front([(e[cv][0], e[recall][0]) for e in shown])
    if len(front) > 1:
        ax.plot([shown[i][cv][0] for i in front], [shown[i][recall][0] for i in front], "k--", lw=1,
                alpha=0.6, label="Pareto front")  # fmt: skip
    ax.set_xlabel(f"test {args.fair_group} CV@20 (lower is fairer)")
    ax.set_ylabel("test Recall@20")
    ax.set_title(f"{args.dataset}, {args.fair_group} groups: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(output: Path, rows, args) -> str:
    """Write comparison.md, .csv and .png under ``output``; return the markdown."""
    table = summarise(output, rows, args)
    text = markdown(table, args)
    with atomic_write(output / REPORT_MD) as tmp:
        tmp.write_text(text, encoding="utf-8")
    write_csv(table, args, output / REPORT_CSV)
    plot(table, args, output / REPORT_PNG)
    return text
