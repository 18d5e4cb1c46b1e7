"""``run_hyper.py``'s command line: parse and check the options, start or resume a search,
write its outputs, print one summary line (or one ``error:`` line).

Exit codes: 0 done (summary on stdout), 2 bad input or a failed search (one ``error:`` line),
130 interrupted (Ctrl-C or SIGUSR1: one ``interrupted:`` line with the trials counted by status
and the ``--resume`` command that continues the search)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recbole_bifair.errors import PluginError
from recbole_bifair.tune.ray_compat import keep_results_in_storage
from recbole_bifair.tune.results import SearchInterrupted, finish
from recbole_bifair.tune.selection import parse_select
from recbole_bifair.tune.settings import SearchError, SearchSettings, make_settings, parse_overrides
from recbole_bifair.tune.space import load_space
from recbole_bifair.tune.tuner import (
    SearchFailed,
    build_tuner,
    fit,
    init_ray,
    make_search_alg,
    restore_tuner,
)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The driver's own options; everything else must be ``--key=value`` config keys."""
    parser = argparse.ArgumentParser(description="Hyper-parameter search with Ray Tune.", allow_abbrev=False)
    parser.add_argument("--model", "-m", help="model name (plugin or RecBole)")
    parser.add_argument("--trainer", "-t", default=None, help="trainer name (default: RecBole's for the model)")
    parser.add_argument("--dataset", "-d", default="ml100k", help="dataset name under data_path")
    parser.add_argument("--space", help="search-space yaml (properties/hyper/<Model>.yaml)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files of fixed keys")
    parser.add_argument("--num_samples", type=int, default=None, help="samples (grid: repeats); default 10, grid 1")
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    parser.add_argument("--search", choices=["auto", "random", "grid", "optuna", "hyperopt"], default="auto",
                        help="auto: grid when every entry is a plain list, else random")
    parser.add_argument("--max_concurrent", type=int, default=0, help="0: as many as resources allow")
    parser.add_argument("--cpus_per_trial", type=float, default=1)
    parser.add_argument("--gpus_per_trial", type=float, default=0)
    parser.add_argument("--max_failures", type=int, default=1, help="retries of a failed trial")
    parser.add_argument("--grace_period", type=int, default=10, help="ASHA: evaluations before a trial can stop")
    parser.add_argument("--reduction_factor", type=float, default=3, help="ASHA reduction factor")
    parser.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://host:10001")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of a local Ray (no --address)")
    parser.add_argument("--storage", default="ray_results", help="folder holding the run folder")
    parser.add_argument("--name", default=None, help="run folder name (default <model>_<dataset>_<time>)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run --storage/--name")
    parser.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2, 3], help="Ray Tune verbosity")
    parser.add_argument("--search_seed", type=int, default=None,
                        help="seed of the random/grid search's draws (default: unseeded)")
    parser.add_argument("--select", default=None,
                        help="metric (default): best valid metric; fair:<metric@k>:<tol>, e.g. fair:pop_cv@20:0.02: "
                        "the best valid fairness metric among trials within tol of the best valid metric")
    return parser.parse_known_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Option combinations that cannot work, as one-line errors."""
    if args.resume and not args.name:
        raise SearchError("--resume needs --name (and the same --storage) of the run to continue")
    if not args.resume and (not args.model or not args.space):
        raise SearchError("--model and --space are required (or --resume with --name)")
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise SearchError("--cpus_per_trial must be > 0 and --gpus_per_trial >= 0")
    if args.num_samples is not None and args.num_samples < 1:
        raise SearchError("--num_samples must be at least 1")
    if args.select is not None:
        parse_select(args.select)


def start(args: argparse.Namespace, rest: list[str], storage: Path):
    """Settings, run folder and Tuner of a new search."""
    space = load_space(args.space)
    settings = make_settings(argparse.Namespace(**{**vars(args), "select": args.select or "metric"}),
                             parse_overrides(rest), space)
    name = args.name or f"{settings.model}_{settings.dataset}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = storage / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SearchError(f"{run_dir} already exists; pass --resume to continue it, or another --name")
    make_search_alg(settings)  # a missing optuna/hyperopt fails here, before Ray starts
    settings.save(run_dir)
    keep_results_in_storage(storage)
    init_ray(args.address, args.num_cpus, settings.cpus_per_trial)
    return settings, run_dir, build_tuner(settings, space, storage, name, args.verbose)


def resume(args: argparse.Namespace, rest: list[str], storage: Path):
    """Settings, run folder and restored Tuner of an interrupted search."""
    if rest:
        print(f"warning: --resume keeps the saved settings; ignoring {' '.join(rest)}", file=sys.stderr)
    run_dir = storage / args.name
    settings = SearchSettings.load(run_dir)
    if args.select is not None:  # a new rule over the same trials
        settings.select = args.select
    keep_results_in_storage(storage)
    init_ray(args.address, args.num_cpus, settings.cpus_per_trial)
    return settings, run_dir, restore_tuner(settings, run_dir)


def resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    """The command that continues the search in ``run_dir``."""
    command = f"python run_hyper.py --resume --name={run_dir.name} --storage={run_dir.parent}"
    if args.address:
        command += f" --address={args.address}"
    if args.num_cpus:
        command += f" --num_cpus={args.num_cpus}"
    return command


def main(argv: list[str] | None = None) -> int:
    """``run_hyper.py``: exit 0 with a one-line summary, 2 with a one-line error, 130 when
    interrupted (with the ``--resume`` command)."""
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    storage = Path(args.storage).expanduser().resolve()
    run_dir = None
    try:
        check_args(args)
        settings, run_dir, tuner = (resume if args.resume else start)(args, rest, storage)
        summary = finish(settings, fit(tuner, args.verbose), run_dir)
    except SearchInterrupted as interrupted:
        print(f"interrupted: {interrupted}; continue with: {resume_command(args, run_dir)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside Tuner.fit (Ray catches the first Ctrl-C inside it)
        where = f"; continue with: {resume_command(args, run_dir)}" if run_dir else ""
        print(f"interrupted{where}", file=sys.stderr)
        return 130
    except PluginError as error:
        hint = f"; continue with: {resume_command(args, run_dir)}" if isinstance(error, SearchFailed) else ""
        print(f"error: {error}{hint}", file=sys.stderr)
        return 2
    print(summary)
    return 0
