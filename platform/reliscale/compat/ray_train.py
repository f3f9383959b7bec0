"""Ray's private internals (Train V2, Tune, the core KV store) that reliscale relies on.

Written for ray 2.60.0 and checked against the installed Ray at import, before any private
import can fail obscurely. Ray has no public API for any of these (reliscale.trial.trainer and
bench/platform.md say why each is worth it). After a Ray upgrade, update this file and
SUPPORTED, then run tests/test_trial_imports.py and tests/test_trials.py.
"""

from __future__ import annotations

import asyncio
import logging

from reliscale.compat.version import require

SUPPORTED = "2.60.0"
require("ray", SUPPORTED, "reliscale/compat/ray_train.py")

# The imports below come after the check: a private module renamed by another Ray then fails
# with the version error, not an ImportError.
import ray  # noqa: E402

# Ray core's KV store in the GCS: the only store that outlives the process that wrote to it,
# without a process of its own
from ray.experimental.internal_kv import (  # noqa: E402
    _internal_kv_del,
    _internal_kv_get,
    _internal_kv_put,
)

# the controller's built-in callbacks a trial leaves out or replaces
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback  # noqa: E402
from ray.train.v2._internal.callbacks.placement_group_callback import (  # noqa: E402
    PlacementGroupCleanerCallback,
)

# the logger of each report's INFO line is named by this module's source file
from ray.train.v2._internal.execution import context  # noqa: E402

# the only callback interface that sees a worker group's placement group
from ray.train.v2._internal.execution.callback import WorkerGroupCallback  # noqa: E402

# the controller, to run it in the trial's own thread instead of in an actor of its own
from ray.train.v2._internal.execution.controller import TrainController  # noqa: E402
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer  # noqa: E402
from ray.train.v2.api.result import Result  # noqa: E402
from ray.util.placement_group import PlacementGroup  # noqa: E402

KV_NAMESPACE = "reliscale.placement_groups"


class ControllerInThreadTrainer(DataParallelTrainer):
    """A DataParallelTrainer whose `fit` runs the TrainController in the calling thread, where
    Ray would start an actor for it and wait; a subclass may edit the controller's built-in
    callbacks in `edit_default_callbacks`."""

    def edit_default_callbacks(self, callbacks: list) -> list:
        return callbacks

    # Ray 2.60 lists the controller's built-in callbacks here, with no public way to leave one out.
    def _create_default_callbacks(self) -> list:
        return self.edit_default_callbacks(super()._create_default_callbacks())

    # Ray 2.60 starts the controller actor here; this runs the controller here instead.
    def _initialize_and_run_controller(self, **controller_init_kwargs) -> Result:
        controller = TrainController(**controller_init_kwargs)
        asyncio.run(controller.run())
        return controller.get_result()


def without_datasets_callback(callbacks: list) -> list:
    """The callbacks without the one that starts the DatasetManager actor (Ray Data shards)."""
    return [c for c in callbacks if not isinstance(c, DatasetsCallback)]


def replace_placement_group_cleaner(callbacks: list, replacement) -> list:
    """The callbacks with `replacement` where the one that starts the PlacementGroupCleaner actor was."""
    return [replacement if isinstance(c, PlacementGroupCleanerCallback) else c for c in callbacks]


class RecordPlacementGroup(WorkerGroupCallback):
    """Runs in the controller: records each worker group's placement group under `key` (the
    latest one: the controller removes a failed group's own before it starts the next)."""

    def __init__(self, key: str):
        self.key = key

    def after_worker_group_start(self, worker_group) -> None:
        # the worker group's state is private; it is the only holder of the placement group
        pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
        _internal_kv_put(self.key, pg.id.hex(), overwrite=True, namespace=KV_NAMESPACE)


def recorded_placement_group(key: str) -> PlacementGroup | None:
    """The placement group recorded under `key` (by `RecordPlacementGroup`), if any."""
    recorded = _internal_kv_get(key, namespace=KV_NAMESPACE)
    return PlacementGroup(ray.PlacementGroupID(bytes.fromhex(recorded.decode()))) if recorded else None


def forget_placement_group(key: str) -> None:
    """Delete the record under `key`."""
    _internal_kv_del(key, namespace=KV_NAMESPACE)


def set_restored_callbacks(tuner, callbacks: list) -> None:
    """Make a restored Tuner run `callbacks` instead of those it unpickled from the old run."""
    # Tuner.restore takes no RunConfig; the Tuner's private TunerInternal holds the restored one.
    tuner._local_tuner.get_run_config().callbacks = callbacks


def quiet_report_lines() -> None:
    """Ray Train 2.60 logs every report at INFO on a logger named by its source file, outside
    `ray.train` where `LoggingConfig` would reach it: a line per report and rank in the console."""
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
