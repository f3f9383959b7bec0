"""Ray Train's data-parallel trainer without the Ray Data actor a trial never uses.

Each fit of a `DataParallelTrainer` starts a DatasetManager actor beside its controller and
workers, datasets or not: one more Python process per trial that imports Ray Train (2-3 CPU-s,
bench/platform.md) to hand out Ray Data shards. A trial passes no datasets (its task samplers run
inside the workers), so the callback that starts it is left out. Ray 2.60 builds its callbacks in
a private method, so this follows Ray's pin in pyproject.toml.
"""

from __future__ import annotations

from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer


class TrialTrainer(DataParallelTrainer):
    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [c for c in callbacks if not isinstance(c, DatasetsCallback)]
