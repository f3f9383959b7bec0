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

Ray 2.60 builds the controller and its callbacks in private methods, so this follows Ray's pin in
pyproject.toml.

The controller collects its workers' reports by polling them, every 2 s by default. A worker's
result queue holds one report, so a report made less than 2 s after the previous one waits, and
the end of training is noticed up to 2 s late. Trials are polled every 0.5 s: 3.4 s less wall
time per 100-step trial, ~0.15 CPU-s a minute more in the controller (bench/platform.md).
RAY_TRAIN_HEALTH_CHECK_INTERVAL_S set by the user wins.
"""

from __future__ import annotations

import asyncio
import os

import ray
import ray.tune
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.train.v2._internal.execution.controller import TrainController
from ray.train.v2.api.callback import UserCallback
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from ray.train.v2.api.result import Result
from ray.util.placement_group import PlacementGroup, remove_placement_group

KV_NAMESPACE = "reliscale.placement_groups"


class RecordPlacementGroup(WorkerGroupCallback):
    """Runs in the controller: records each worker group's placement group under `key` (the
    latest one: the controller removes a failed group's own before it starts the next)."""

    def __init__(self, key: str):
        self.key = key

    def after_worker_group_start(self, worker_group) -> None:
        pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
        _internal_kv_put(self.key, pg.id.hex(), overwrite=True, namespace=KV_NAMESPACE)


def recorded_placement_group(key: str) -> PlacementGroup | None:
    recorded = _internal_kv_get(key, namespace=KV_NAMESPACE)
    return PlacementGroup(ray.PlacementGroupID(bytes.fromhex(recorded.decode()))) if recorded else None


def remove_recorded_placement_group(key: str) -> None:
    """Remove the placement group recorded under `key`, if any; removing one already gone is a no-op."""
    if pg := recorded_placement_group(key):
        remove_placement_group(pg)
        _internal_kv_del(key, namespace=KV_NAMESPACE)


class ReportToTune(UserCallback):
    """Hands each report of the workers (rank 0's metrics) to the Tune trial the controller runs in."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        ray.tune.report(metrics[0])


class TrialTrainer(DataParallelTrainer):
    def __init__(self, *args, placement_group_key: str, **kwargs):
        # read from the environment when the controller is created, i.e. in `fit`; Ray Train
        # passes both on to the controller and the workers
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        self.placement_group_key = placement_group_key
        super().__init__(*args, **kwargs)

    def _create_default_callbacks(self):
        callbacks = [RecordPlacementGroup(self.placement_group_key) if isinstance(c, PlacementGroupCleanerCallback)
                     else c for c in super()._create_default_callbacks()]
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    def _initialize_and_run_controller(self, **controller_init_kwargs) -> Result:
        controller = TrainController(**controller_init_kwargs)
        asyncio.run(controller.run())
        return controller.get_result()
