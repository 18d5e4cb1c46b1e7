"""``run_compare.py``: a fairness comparison of training methods and stock RecBole models, on
the same Tuner code as ``run_hyper.py`` (no second search loop).

    python run_compare.py --dataset=ml100k --model=AlphaRec --methods Plain Reweight BiFair \
        --baselines LightGCN BPR --fair_group=pop --seeds 0 1 2 --num_samples=8 --output=DIR \
        [--select=metric|fair:pop_cv@20:0.02] [--epochs=30 ...any --key=value for every run]

Each row of the table is a method (a plugin or RecBole trainer on ``--model``) or a baseline
(a stock RecBole model with its own trainer). For each row, in order:

1. **Search** on the first of ``--seeds`` (0 by default) over ``properties/hyper/<row>.yaml``
   (``<Trainer>.yaml`` for a method, ``<Model>.yaml`` for a baseline), exactly as
   ``run_hyper.py`` searches: trials report VALID metrics only, ASHA stops bad ones, and
   ``--select`` picks one trial from valid metrics; its best checkpoint is then tested.
   Folder: ``DIR/searches/<row>/`` (trials.csv, best_config.yaml, best_test_results.json).
2. **Seeds**: the picked configuration runs every other seed, as one more Tuner (a grid over
   ``seed``, FIFO, no early stopping) whose trials keep their test metrics.
   Folder: ``DIR/seeds/<row>.seeds<k...>/``.
3. Each run's results go to ``DIR/runs/<row>.seed<k>.json``.

``--num_samples=0`` skips the search: each row's shipped defaults (``properties/`` yaml plus the
fixed keys) run on every seed, as one seed Tuner (``DIR/seeds/<row>.defaults.seeds<k...>/``).
It is for budgets where a search per row does not fit; the table says so.

Then ``DIR/comparison.md``, ``comparison.csv`` and ``comparison.png`` (compare_report.py).

Resuming: rerunning the same command continues where it stopped. A finished search or seed run
(its results file exists) is never redone; an interrupted Tuner is restored from its folder
(finished trials kept, unfinished and errored ones rerun); a Tuner killed before Ray saved any
state starts again. Within a run a failed trial is retried ``--max_failures`` times (default 2).
The settings that change results (dataset, model, fair_group, num_samples, select, fixed keys,
...) are saved in ``DIR/compare.json``; a rerun with other values is refused. Rows and seeds
may be added.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from recbole_bifair.errors import PluginError
from recbole_bifair.tune.ray_compat import can_restore, keep_results_in_storage, result_dir
from recbole_bifair.tune.results import (
    BEST_TEST,
    SearchInterrupted,
    finish,
    read_trial_summary,
    write_json,
)
from recbole_bifair.tune.selection import parse_select
from recbole_bifair.tune.settings import (
    SETTINGS_FILE,
    SearchError,
    SearchSettings,
    make_settings,
    parse_overrides,
)
from recbole_bifair.tune.space import load_space
from recbole_bifair.tune.tuner import build_tuner, fit, init_ray, make_search_alg, restore_tuner

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPARE_FILE = "compare.json"
SEED_SPACE_FILE = "seed_space.yaml"
#: compare.json keys a rerun must keep (they change what a finished run means).
FIXED_SETTINGS = (
    "dataset", "model", "fair_group", "num_samples", "select", "search_seed", "search_on_seed",
    "overrides", "config_files", "scheduler", "grace_period", "reduction_factor",
)  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One row of the comparison: a method (trainer on the model) or a stock baseline model."""

    name: str
    model: str
    trainer: str | None
    space: Path


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The command's options; every other argument must be a ``--key=value`` config key."""
    parser = argparse.ArgumentParser(
        description="Fairness comparison of training methods and RecBole models on Ray Tune.",
        allow_abbrev=False,
    )
    parser.add_argument("--dataset", "-d", default="ml100k")
    parser.add_argument("--model", "-m", default="AlphaRec", help="the model every method trains")
    parser.add_argument("--methods", nargs="*", default=[], help="trainers (plugin or RecBole), one row each")
    parser.add_argument("--baselines", nargs="*", default=[], help="stock RecBole models, one row each")
    parser.add_argument("--fair_group", choices=["pop", "genre"], default="pop",
                        help="item groups balanced in training and reported (CV, MIN)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="the first one is searched on")
    parser.add_argument("--num_samples", type=int, default=8, help="trials per search; 0: no search, the defaults")
    parser.add_argument("--output", required=True, help="folder of the comparison (resumable)")
    parser.add_argument("--select", default="metric", help="metric | fair:<metric@k>:<tolerance>")
    parser.add_argument("--spaces", default=str(PROJECT_ROOT / "properties" / "hyper"),
                        help="folder of the search spaces <Trainer>.yaml / <Model>.yaml")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files of fixed keys")
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    parser.add_argument("--grace_period", type=int, default=10)
    parser.add_argument("--reduction_factor", type=float, default=3)
    parser.add_argument("--search_seed", type=int, default=0, help="seed of the searches' random draws")
    parser.add_argument("--max_concurrent", type=int, default=0)
    parser.add_argument("--cpus_per_trial", type=float, default=1)
    parser.add_argument("--gpus_per_trial", type=float, default=0)
    parser.add_argument("--max_failures", type=int, default=2, help="retries of a failed trial")
    parser.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:10001")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of a local Ray (no --address)")
    parser.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2, 3])
    return parser.parse_known_args(argv)


def make_rows(args: argparse.Namespace) -> list[Row]:
    """The table's rows with their space files; SearchError for a missing one or a repeat."""
    spaces = Path(args.spaces)
    rows = [Row(m, args.model, m, spaces / f"{m}.yaml") for m in args.methods]
    rows += [Row(b, b, None, spaces / f"{b}.yaml") for b in args.baselines]
    if not rows:
        raise SearchError("nothing to compare: give --methods and/or --baselines")
    names = [r.name for r in rows]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SearchError(f"each row once: {', '.join(repeated)} given twice")
    for row in rows:
        if not row.space.is_file():
            raise SearchError(f"{row.space}: no search space for {row.name} (write one, or pass --spaces=DIR)")
    return rows


def fixed_settings(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """What compare.json records of this command (see FIXED_SETTINGS)."""
    return {
        "dataset": args.dataset, "model": args.model, "fair_group": args.fair_group,
        "num_samples": args.num_samples, "select": args.select, "search_seed": args.search_seed,
        "search_on_seed": args.seeds[0], "overrides": overrides,
        "config_files": [str(Path(f).resolve()) for f in (args.config_files or "").split()],
        "scheduler": args.scheduler, "grace_period": args.grace_period, "reduction_factor": args.reduction_factor,
    }  # fmt: skip


def check_or_save_settings(output: Path, settings: dict[str, Any]) -> None:
    """Save compare.json, or refuse a rerun whose settings differ from the saved ones."""
    path = output / COMPARE_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in FIXED_SETTINGS if saved.get(k) != json.loads(json.dumps(settings.get(k)))]
        if changed:
            key = changed[0]
            raise SearchError(
                f"{output} holds a comparison made with {key}={saved.get(key)!r}, not {settings.get(key)!r}; "
                "rerun with the same settings to continue it, or pass another --output"
            )
        return
    write_json(settings, path)


def search_namespace(args: argparse.Namespace, row: Row) -> argparse.Namespace:
    """The options run_hyper.py's make_settings reads, for this row's search."""
    return argparse.Namespace(
        model=row.model, trainer=row.trainer, dataset=args.dataset, config_files=args.config_files,
        search="auto", cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        scheduler=args.scheduler, num_samples=args.num_samples, max_concurrent=args.max_concurrent,
        max_failures=args.max_failures, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, select=args.select, search_seed=args.search_seed,
    )  # fmt: skip


def ensure_ray(args: argparse.Namespace) -> None:
    """Start or join Ray on first need (a rerun with nothing left to do never starts it)."""
    import ray

    if not ray.is_initialized():
        init_ray(args.address, args.num_cpus, args.cpus_per_trial)


def run_tuner(args: argparse.Namespace, settings: SearchSettings, space, storage: Path, name: str):
    """Fit the Tuner of ``storage/name``: restored where Ray left a state there, else new."""
    run_dir = storage / name
    ensure_ray(args)
    keep_results_in_storage(storage)
    if (run_dir / SETTINGS_FILE).is_file() and can_restore(run_dir):
        return fit(restore_tuner(SearchSettings.load(run_dir), run_dir), args.verbose)
    shutil.rmtree(run_dir, ignore_errors=True)  # killed before Ray saved a state: start again
    settings.save(run_dir)
    return fit(build_tuner(settings, space, storage, name, args.verbose), args.verbose)


def search(args: argparse.Namespace, overrides: dict[str, Any], row: Row, output: Path) -> dict[str, Any]:
    """The row's search on the first seed (skipped when done): best_test_results.json's payload."""
    storage = output / "searches"
    run_dir = storage / row.name
    if (run_dir / BEST_TEST).is_file():
        return json.loads((run_dir / BEST_TEST).read_text(encoding="utf-8"))
    space = load_space(row.space)
    if (run_dir / SETTINGS_FILE).is_file():
        settings = SearchSettings.load(run_dir)
    else:
        row_overrides = {**overrides, "seed": args.seeds[0], "fair_group": args.fair_group}
        settings = make_settings(search_namespace(args, row), row_overrides, space)
    make_search_alg(settings)
    result_grid = run_tuner(args, settings, space, storage, row.name)
    print(f"{row.name}: {finish(settings, result_grid, run_dir)}", flush=True)
    return json.loads((run_dir / BEST_TEST).read_text(encoding="utf-8"))


def run_path(output: Path, row: Row, seed: int) -> Path:
    """``DIR/runs/<row>.seed<k>.json``."""
    return output / "runs" / f"{row.name}.seed{seed}.json"


def run_payload(row: Row, args: argparse.Namespace, seed: int, params: dict, summary: dict, **extra) -> dict:
    """One run's results JSON."""
    return {
        "row": row.name, "model": row.model, "trainer": row.trainer, "dataset": args.dataset,
        "fair_group": args.fair_group, "seed": seed, "params": params,
        "valid": summary.get("valid", {}), "test": summary.get("test", {}), "epochs": summary.get("epochs"),
        "seconds_per_epoch": summary.get("seconds_per_epoch"), "model_file": summary.get("model_file"),
        "node_id": summary.get("node_id"), **extra,
    }  # fmt: skip


def write_search_seed_run(output: Path, row: Row, args: argparse.Namespace, best: dict) -> None:
    """The searched seed's run: the picked trial, its valid metrics and its test metrics."""
    path = run_path(output, row, args.seeds[0])
    if path.is_file():
        return
    trial_dir = Path(best["model_file"]).parent.parent if best.get("model_file") else None
    summary = read_trial_summary(trial_dir) or {}
    summary = {**summary, "valid": best.get("valid") or summary.get("valid", {}), "test": best["test"],
               "model_file": best["model_file"]}  # fmt: skip
    write_json(run_payload(row, args, args.seeds[0], best["params"], summary,
                           trial_id=best["trial_id"], select=best.get("select")), path)  # fmt: skip


def seed_runs(args: argparse.Namespace, row: Row, output: Path, best: dict) -> None:
    """Run the picked configuration on every seed that has no results file yet."""
    missing = [s for s in args.seeds[1:] if not run_path(output, row, s).is_file()]
    if not missing:
        return
    searched = SearchSettings.load(output / "searches" / row.name)
    storage, name = output / "seeds", f"{row.name}.seeds{'-'.join(map(str, missing))}"
    space_file = seed_space_file(storage / name, missing)
    settings = dataclasses.replace(
        searched, space_file=str(space_file), search="grid", scheduler="fifo", num_samples=1, record_test=True,
        fixed_from_space={**searched.fixed_from_space, **best["params"]}, select="metric", search_seed=None,
    )  # fmt: skip
    run_seeds(args, row, output, settings, storage, name, missing, best["params"])


def default_runs(args: argparse.Namespace, overrides: dict[str, Any], row: Row, output: Path) -> None:
    """``--num_samples=0``: the row's shipped defaults on every seed that has no results file yet."""
    missing = [s for s in args.seeds if not run_path(output, row, s).is_file()]
    if not missing:
        return
    storage, name = output / "seeds", f"{row.name}.defaults.seeds{'-'.join(map(str, missing))}"
    space_file = seed_space_file(storage / name, missing)
    if (storage / name / SETTINGS_FILE).is_file():
        settings = SearchSettings.load(storage / name)
    else:
        namespace = search_namespace(args, row)
        namespace.search, namespace.scheduler, namespace.num_samples, namespace.select = "grid", "fifo", 1, "metric"
        settings = make_settings(namespace, {**overrides, "fair_group": args.fair_group}, load_space(space_file))
        settings = dataclasses.replace(settings, record_test=True, search_seed=None)
    run_seeds(args, row, output, settings, storage, name, missing, {})


def seed_space_file(run_dir: Path, seeds: list[int]) -> Path:
    """The seed grid of a seed Tuner, written once."""
    space_file = run_dir / SEED_SPACE_FILE
    if not space_file.is_file():
        space_file.parent.mkdir(parents=True, exist_ok=True)
        space_file.write_text(yaml.safe_dump({"seed": seeds}), encoding="utf-8")
    return space_file


def run_seeds(args, row: Row, output: Path, settings: SearchSettings, storage: Path, name: str,
              missing: list[int], params: dict[str, Any]) -> None:  # fmt: skip
    """Fit a seed Tuner and write each finished seed's results file; SearchInterrupted if any is left."""
    result_grid = run_tuner(args, settings, load_space(settings.space_file), storage, name)
    finished = {}
    for result in result_grid:
        summary = read_trial_summary(result_dir(result))
        seed = int((result.config or {}).get("seed", -1))
        if summary is not None:
            finished[seed] = summary
            write_json(run_payload(row, args, seed, params, summary), run_path(output, row, seed))
    left = [s for s in missing if s not in finished]
    if left:
        raise SearchInterrupted(
            f"{row.name}: seeds {', '.join(map(str, left))} did not finish (interrupted, or failed "
            f"{args.max_failures + 1} times: see {storage / name})"
        )
    print(f"{row.name}: seeds {', '.join(map(str, missing))} done", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``run_compare.py``: exit 0 with the table, 2 with one ``error:`` line, 130 interrupted."""
    from recbole_bifair.tune.compare_report import write_report

    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    output = Path(args.output).expanduser().resolve()
    try:
        overrides = parse_overrides(rest)
        parse_select(args.select)
        if args.num_samples < 0 or len(set(args.seeds)) != len(args.seeds):
            raise SearchError("--num_samples must be 0 (no search: the defaults) or more, and --seeds must not repeat")
        rows = make_rows(args)
        output.mkdir(parents=True, exist_ok=True)
        check_or_save_settings(output, fixed_settings(args, overrides))
        for row in rows:
            if args.num_samples == 0:
                default_runs(args, overrides, row, output)
                continue
            best = search(args, overrides, row, output)
            write_search_seed_run(output, row, args, best)
            seed_runs(args, row, output, best)
        table = write_report(output, rows, args)
    except (SearchInterrupted, KeyboardInterrupt) as interrupted:
        detail = f": {interrupted}" if str(interrupted) else ""
        print(f"interrupted{detail}; rerun the same command to continue", file=sys.stderr)
        return 130
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table)
    print(f"outputs in {output}")
    return 0
