"""Data sources of a trial: each deterministic given a seed, streamed, never downloaded.

Every task implements `tasks.base.TaskKind` and registers itself by name; the functions here
are what the rest of the platform calls, whatever the task.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from reliscale.tasks.base import Evaluator, Task, TaskInfo, TaskKind
from reliscale.tasks.cache import default_cache_dir
from reliscale.tasks.registry import TASKS

BUILTIN = ("icl", "mnist1d", "lm", "images")  # each module registers its task; errors list them in this order
for _name in BUILTIN:
    importlib.import_module(f"reliscale.tasks.{_name}")

__all__ = ["TASKS", "Evaluator", "Task", "TaskInfo", "TaskKind", "build_evaluator", "build_model",
           "build_task", "meta_param_counts"]


def build_task(trial, world: int = 1, cache_dir: str | Path | None = None) -> Task:
    """The task object of a trial: streams training batches, holds the eval splits."""
    cache = Path(cache_dir or trial.spec.data.cache_dir or default_cache_dir())
    return TASKS[trial.spec.data.task].build(trial, world, cache)


def build_model(trial):
    """The model of a trial (`spec.TrialConfig`), on the current default device."""
    return TASKS[trial.spec.data.task].model(trial)


def build_evaluator(task: Task, trial) -> Evaluator:
    return TASKS[trial.spec.data.task].evaluator(task, trial)


def meta_param_counts(trial) -> dict[str, int]:
    """Exact parameter counts of a trial's model, instantiated on the meta device (no memory)."""
    from reliscale.models.build import meta_param_counts as counts

    return counts(lambda: build_model(trial), trial.size.two_axis)
