"""Hyper-parameter search with Ray Tune for plugin and stock RecBole models.

    python run_hyper.py --model=BPR --dataset=ml100k --space=properties/hyper/BPR.yaml \
        [--num_samples=N] [--scheduler=asha|fifo] [--search=random|grid|optuna|hyperopt] ...

How a search runs:

- The driver builds the run's Config once (so unknown names and bad keys fail before Ray
  starts), prepares the default dataset if needed, and resolves ``data_path`` and the config
  files to absolute paths (:mod:`.settings`).
- Each trial imports :mod:`recbole_bifair` (registering the plugin metrics in that worker),
  trains through :func:`recbole_bifair.quick_start.run` with its own ``checkpoint_dir`` inside
  the trial folder and its own device (``gpu_id`` = the GPU Ray gave it, ``''`` on CPU), and
  reports the validation metrics after every evaluation, so ASHA can stop bad trials early
  (:mod:`.trial`). The test split is never reported; selection uses the validation metric only.
- Only the best trial (best validation score) is evaluated on test, from its best checkpoint,
  in a Ray task with the same resources as a trial.
- The run folder ``<storage>/<name>/`` receives ``trials.csv``, ``best_config.yaml`` and
  ``best_test_results.json`` (:mod:`.results`); ``--resume`` continues an interrupted search
  there (:mod:`.cli`, :mod:`.tuner`).

The modules, one job each:

- :mod:`.space`: search-space yaml files -> ``param_space``;
- :mod:`.ray_compat`: the Ray-version gates (2.6 pinned; 2.7+, 2.41+ moved APIs);
- :mod:`.settings`: the settings of a search (driver side, saved for ``--resume``);
- :mod:`.trial`: one trial in a Ray worker, and the best checkpoint's test evaluation;
- :mod:`.tuner`: building, restoring and running the Tuner;
- :mod:`.selection`: which trial a search picks (``--select``), from valid metrics only;
- :mod:`.results`: trials.csv (each trial's status), best_config.yaml, best_test_results.json,
  the summary line;
- :mod:`.cli`: ``run_hyper.py``'s command line;
- :mod:`.compare`, :mod:`.compare_report`: ``run_compare.py`` (methods x seeds on the same
  Tuner code) and its table, CSV and plot.
"""

from recbole_bifair.tune.cli import (
    check_args,
    main,
    parse_args,
    resume,
    resume_command,
    start,
)
from recbole_bifair.tune.ray_compat import (
    air_config_classes,
    can_restore,
    current_trial_dir,
    hide_restore_hint,
    keep_results_in_storage,
    quiet_output,
    ray_version,
    report,
    result_dir,
    run_config,
    trial_ids,
)
from recbole_bifair.tune.results import (
    BEST_CONFIG,
    BEST_TEST,
    COMPLETED,
    EARLY_STOPPED_FILE,
    ERROR,
    INTERRUPTED,
    NOT_STARTED,
    STATUS_WORDS,
    STOPPED,
    TRIALS_CSV,
    SearchInterrupted,
    TrialRow,
    best_config,
    best_row,
    collect_rows,
    early_stopped,
    finish,
    planned_trials,
    read_trial_summary,
    run_best_on_test,
    status_counts,
    trial_row,
    trial_status,
    write_best_config,
    write_json,
    write_trials_csv,
)
from recbole_bifair.tune.selection import (
    SelectRule,
    check_select_metric,
    parse_select,
    select_trial,
)
from recbole_bifair.tune.settings import (
    PER_TRIAL_KEYS,
    SETTINGS_FILE,
    SearchError,
    SearchSettings,
    check_space_keys,
    command_line,
    cuda_visible_devices_kept,
    driver_config,
    make_settings,
    parse_overrides,
    parse_value,
)
from recbole_bifair.tune.space import (
    DISTRIBUTIONS,
    SearchSpace,
    SpaceError,
    load_space,
    read_yaml,
    resolve_search,
)
from recbole_bifair.tune.trial import (
    CHECKPOINT_FOLDER,
    TRIAL_STARTS_FILE,
    TRIAL_SUMMARY_FILE,
    evaluate_on_test,
    fresh_checkpoint_dir,
    set_threads,
    trial_function,
    validation_reporter,
    visible_gpu_id,
)
from recbole_bifair.tune.tuner import (
    SearchFailed,
    build_tuner,
    fit,
    init_ray,
    make_scheduler,
    make_search_alg,
    make_trainable,
    restore_tuner,
)

__all__ = [
    "BEST_CONFIG",
    "BEST_TEST",
    "CHECKPOINT_FOLDER",
    "COMPLETED",
    "EARLY_STOPPED_FILE",
    "DISTRIBUTIONS",
    "ERROR",
    "INTERRUPTED",
    "NOT_STARTED",
    "PER_TRIAL_KEYS",
    "SETTINGS_FILE",
    "STATUS_WORDS",
    "STOPPED",
    "SearchError",
    "SearchFailed",
    "SearchInterrupted",
    "SearchSettings",
    "SearchSpace",
    "SelectRule",
    "SpaceError",
    "TRIALS_CSV",
    "TRIAL_STARTS_FILE",
    "TRIAL_SUMMARY_FILE",
    "TrialRow",
    "air_config_classes",
    "can_restore",
    "best_config",
    "best_row",
    "build_tuner",
    "check_args",
    "check_select_metric",
    "check_space_keys",
    "collect_rows",
    "early_stopped",
    "command_line",
    "cuda_visible_devices_kept",
    "current_trial_dir",
    "driver_config",
    "evaluate_on_test",
    "finish",
    "planned_trials",
    "fit",
    "fresh_checkpoint_dir",
    "hide_restore_hint",
    "init_ray",
    "keep_results_in_storage",
    "quiet_output",
    "load_space",
    "main",
    "make_scheduler",
    "make_search_alg",
    "make_settings",
    "make_trainable",
    "parse_args",
    "parse_overrides",
    "parse_select",
    "parse_value",
    "ray_version",
    "read_trial_summary",
    "read_yaml",
    "report",
    "resolve_search",
    "restore_tuner",
    "result_dir",
    "resume",
    "resume_command",
    "run_best_on_test",
    "run_config",
    "select_trial",
    "set_threads",
    "start",
    "status_counts",
    "trial_function",
    "trial_row",
    "trial_ids",
    "trial_status",
    "validation_reporter",
    "visible_gpu_id",
    "write_best_config",
    "write_json",
    "write_trials_csv",
]
