"""Ray Train's data-parallel trainer, set up for trials: short ones, many of them.

Each fit of a `DataParallelTrainer` starts helper actors beside its controller and workers; each
is one more Python process per trial that imports Ray Train (2-3 CPU-s, bench/platform.md). Two
of them do nothing for a trial:

- the DatasetManager, started whether or not there are datasets, hands out Ray Data shards: a
  trial passes none (its task samplers run inside the workers), so its callback is left out.
  Ray 2.60 builds the callbacks in a private method, so this follows Ray's pin in pyproject.toml;
- the PreemptionWatcher observes node drains (spot reclaims), which the worker-group restart
  from the last checkpoint handles anyway. RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 turns it back on.

The controller collects its workers' reports by polling them, every 2 s by default. A worker's
result queue holds one report, so a report made less than 2 s after the previous one waits, and
the end of training is noticed up to 2 s late. Trials are polled every 0.5 s: 3.4 s less wall
time per 100-step trial, ~0.15 CPU-s a minute more in the controller (bench/platform.md).
RAY_TRAIN_HEALTH_CHECK_INTERVAL_S set by the user wins.
"""

from __future__ import annotations

import os

from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer


class TrialTrainer(DataParallelTrainer):
    def __init__(self, *args, **kwargs):
        # read from the environment when the controller is created, i.e. in `fit`; Ray Train
        # passes both on to the controller and the workers
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        super().__init__(*args, **kwargs)

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]
