"""Ray Train's data-parallel trainer, set up for trials: short ones, many of them.

Each fit of a `DataParallelTrainer` starts a controller actor and helper actors beside its
workers; each is one more Python process per trial that imports Ray Train (2-3 CPU-s), and while
the trial trains it wakes ~100 times a second and slows the loop beside it (bench/platform.md,
bench/loop.md). A trial's trainer does without five of them:

- the TrainController runs in the Tune trial actor's own training thread (`TrialTrainer`), where
  `fit` would only have waited for it; and so its reports reach Tune straight from that thread
  (`ReportToTune`), without the queue actor Tune puts between two actors (`TuneReportCallback`).
  The workers' handle to "the controller" is then the trial actor: `ray.train` calls that ask the
  controller for past checkpoints (`get_all_reported_checkpoints`) are not available in a trial;
- the DatasetManager, started whether or not there are datasets, hands out Ray Data shards: a
  trial passes none (its task samplers run inside the workers), so its callback is left out;
- the PreemptionWatcher observes node drains (spot reclaims), which the worker-group restart
  from the last checkpoint handles anyway. RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 turns it back on;
- the PlacementGroupCleaner, a detached actor that asks the State API every second whether the
  controller lives, to remove the workers' placement group should the controller die without
  removing it (a placement group lives as long as the job, not its creator). It cost a lone
  trial's loop 7 % (bench/platform.md). In its place the controller records the placement group
  in Ray's KV store (`RecordPlacementGroup`), and the trial removes it after `fit` and before a
  retried trial's `fit` (`remove_recorded_placement_group`): no process, no polling.

Ray 2.60 builds the controller and its callbacks in private methods, and keeps the workers'
placement group in private state: those parts live in `reliscale.compat.ray_train`, which checks
the installed Ray against the version it was written for.

The controller collects its workers' reports by polling them, every 2 s by default. A worker's
result queue holds one report, so a report made less than 2 s after the previous one waits, and
the end of training is noticed up to 2 s late. Trials are polled every 0.5 s: 3.4 s less wall
time per 100-step trial, ~0.15 CPU-s a minute more in the controller (bench/platform.md).
RAY_TRAIN_HEALTH_CHECK_INTERVAL_S set by the user wins.
"""

from __future__ import annotations

import os

import ray.tune
from ray.train.v2.api.callback import UserCallback
from ray.util.placement_group import remove_placement_group

from reliscale.compat.ray_train import (
    ControllerInThreadTrainer,
    RecordPlacementGroup,
    forget_placement_group,
    recorded_placement_group,
    replace_placement_group_cleaner,
    without_datasets_callback,
)


def placement_group_key(study: str, trial_id: str) -> str:
    """The key a trial's workers' placement group is recorded under."""
    return f"{study}/{trial_id}"


def remove_recorded_placement_group(key: str) -> None:
    """Remove the placement group recorded under `key`, if any; removing one already gone is a no-op."""
    if pg := recorded_placement_group(key):
        remove_placement_group(pg)
        forget_placement_group(key)


class ReportToTune(UserCallback):
    """Hands each report of the workers (rank 0's metrics) to the Tune trial the controller runs in."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        ray.tune.report(metrics[0])


class TrialTrainer(ControllerInThreadTrainer):
    def __init__(self, *args, placement_group_key: str, **kwargs):
        # read from the environment when the controller is created, i.e. in `fit`; Ray Train
        # passes both on to the controller and the workers
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        self.placement_group_key = placement_group_key
        super().__init__(*args, **kwargs)

    def edit_default_callbacks(self, callbacks: list) -> list:
        callbacks = replace_placement_group_cleaner(callbacks, RecordPlacementGroup(self.placement_group_key))
        return callbacks if self.datasets else without_datasets_callback(callbacks)
