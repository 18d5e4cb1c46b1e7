"""ASHA that writes down whom it stops, so that trials.csv can tell an early-stopped trial
from one that an interrupted search left unfinished (Ray's own trial status cannot: after
Ctrl-C Ray 2.6 marks every running trial TERMINATED, as it does the trials ASHA stopped).

The record, ``early_stopped.txt`` in the run folder (one trial id a line), is written by the
driver when ASHA decides; the scheduler is saved with the experiment state, so a resumed
search keeps appending to the same file.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from recbole_bifair.tune.results import EARLY_STOPPED_FILE


class RecordingASHA(ASHAScheduler):
    """:class:`ray.tune.schedulers.ASHAScheduler` plus the record of the trials it stops."""

    def __init__(self, run_dir: str | Path, **asha_options) -> None:
        super().__init__(**asha_options)
        self.record = str(Path(run_dir) / EARLY_STOPPED_FILE)

    def on_trial_result(self, runner, trial, result: dict) -> str:
        """ASHA's decision; a STOP is appended to the record before it is returned."""
        action = super().on_trial_result(runner, trial, result)
        if action == TrialScheduler.STOP:
            with open(self.record, "a", encoding="utf-8") as handle:
                handle.write(f"{trial.trial_id}\n")
        return action

