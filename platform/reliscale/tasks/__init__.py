"""Data sources of a trial: each deterministic given a seed, streamed, never downloaded.

Every task offers the trial loop one interface: `train_batch(step, micro, rank, size)`
returns a dict of numpy arrays with a `group` entry (the task group of each example,
for the minimax objective and worst-group metrics), plus `num_groups`/`group_names`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reliscale.tasks.cache import default_cache_dir


class ClassificationStream:
    """The trial loop's view of an image task: micro-batches as dicts, classes as groups."""

    def __init__(self, task, world: int, accumulation: int):
        self.task, self.world, self.accumulation = task, world, accumulation
        self.num_groups = task.num_classes
        self.group_names = [f"class{c}" for c in range(task.num_classes)]

    def train_batch(self, step: int, micro: int, rank: int, size: int) -> dict[str, np.ndarray]:
        x, y = self.task.train_batch(step * self.accumulation + micro, rank, self.world, size)
        return {"x": x, "y": y, "group": y}


def build_task(trial, world: int = 1, cache_dir: str | Path | None = None):
    """The task object of a trial: streams training batches, holds the eval splits."""
    data = trial.spec.data
    cache = Path(cache_dir or data.cache_dir or default_cache_dir())
    if data.task == "icl":
        from reliscale.tasks.icl import ICLTask

        return ICLTask(dict(trial.mixture), data.dim, data.points, data.noise_std, trial.seed,
                       trial.spec.eval.examples, cache, sparse_k=data.sparsity)
    if data.task == "lm":
        from reliscale.tasks.lm import LMTask

        return LMTask(data.vocab_size, data.seq_len, trial.seed, trial.spec.eval.examples, cache, data.path)
    if data.task == "mnist1d":
        from reliscale.tasks.images import ImageTask

        task = ImageTask(trial.seed, trial.data_size, trial.spec.eval.examples, cache)
        return ClassificationStream(task, world, trial.spec.grad_accumulation())
    raise ValueError(f"task {data.task!r} has no trainer yet")


def build_evaluator(task, trial):
    spec = trial.spec
    if spec.data.task == "icl":
        from reliscale.evaluation.evaluators import ICLEvaluator

        return ICLEvaluator(task, spec.splits(), spec.eval.metrics)
    if spec.data.task == "lm":
        from reliscale.evaluation.evaluators import LMEvaluator

        return LMEvaluator(task, spec.splits(), spec.eval.metrics)
    from reliscale.evaluation.evaluators import ClassificationEvaluator

    return ClassificationEvaluator(task, spec.splits(), spec.eval.metrics)
