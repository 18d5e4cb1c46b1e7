"""Command line of ``run_recbole.py``: parse the plugin's own options, run, print a table.

Plugin errors (unknown names, bad files or keys, bad values) end the program with one line on
stderr and exit code 2, not a traceback. Warnings that RecBole 1.2.1's own code raises under
newer pandas and torch (deprecations a user can do nothing about) are hidden here, in the command
line only: library users keep Python's default warning filters.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from recbole_bifair.errors import PluginError

HEADLINE_KEYS = (
    "recall@20", "ndcg@20", "hit@20", "pop_cv@20", "pop_min@20", "genre_cv@20", "genre_min@20",
)


def quiet_recbole_warnings() -> None:
    """Hide RecBole 1.2.1's deprecation noise: pandas' FutureWarnings raised from its dataset code
    (chained assignment, ``Series.agg(len)``) and torch's ``torch.cuda.amp.GradScaler``
    FutureWarning raised by its trainer. Other warnings, the plugin's included, still show."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.data\.dataset\.")
    warnings.filterwarnings(
        "ignore", message=r"`torch\.cuda\.amp\.GradScaler", category=FutureWarning,
        module=r"recbole\.trainer\.",
    )


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--model", "-m", default="AlphaRec", help="model name (plugin or RecBole)")
    parser.add_argument("--trainer", "-t", default=None,
                        help="trainer name (default: Plain for the plugin's LLM models, else RecBole's for the model)")
    parser.add_argument("--dataset", "-d", default="ml100k", help="dataset name under data_path")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--results_file", default=None, help="write the results JSON here")
    parser.add_argument("--resume", default=None, help="checkpoint to resume training from")
    return parser.parse_known_args(argv)


def results_table(results: dict) -> str:
    """A compact two-row table of the headline metrics (valid and test)."""
    keys = [k for k in HEADLINE_KEYS if k in results["test"] or k in results["valid"]]
    keys += [k for k in results["test"] if k not in keys]
    width = max(10, *(len(k) for k in keys))
    header = f"{'':6}" + "".join(f"{k:>{width + 1}}" for k in keys)
    lines = [f"{results['model']} / {results['trainer']} on {results['dataset']} (seed {results['seed']})", header]
    for split in ("valid", "test"):
        values = results[split]
        lines.append(f"{split:6}" + "".join(
            f"{values[k]:>{width + 1}.4f}" if k in values else f"{'-':>{width + 1}}" for k in keys
        ))
    timing = results["timing"]
    epochs = timing["epoch_seconds"]
    if epochs:
        lines.append(
            f"{len(epochs)} epochs, {sum(epochs) / len(epochs):.3f} s/epoch, "
            f"{timing['eval_seconds_mean']:.3f} s/evaluation, {timing['total_seconds']:.1f} s total"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, _rest = parse_args(sys.argv[1:] if argv is None else argv)
    quiet_recbole_warnings()
    try:
        from recbole_bifair.quick_start import run

        config_dict = {"trainer": args.trainer} if args.trainer else {}
        results = run(
            args.model,
            args.dataset,
            config_file_list=args.config_files.split() if args.config_files else None,
            config_dict=config_dict,
            results_file=args.results_file,
            resume=args.resume,
        )
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(results_table(results))
    return 0
