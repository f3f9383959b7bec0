"""The task interface: what every task gives the spec, the planner, the worker and the evaluator.

A task is registered once under its name (`registry.register`). Its `TaskInfo` is what the spec
validates against, with no task module imported beyond numpy; everything that needs torch
(the model, the evaluator) is built inside the worker, through the kind's methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class TaskInfo:
    kind: str  # "regression" | "classification" | "lm"
    unit: str  # what data.sizes counts: "examples" or "tokens"
    families: tuple[str, ...]
    techniques: tuple[str, ...]
    splits: tuple[str, ...]
    metrics: tuple[str, ...]
    function_classes: tuple[str, ...] = ()
    default_mixture: dict[str, float] = field(default_factory=dict)
    # A split name the task also accepts beyond `splits` (e.g. a convex mix of two classes), or None.
    extra_split: Any = None
    extra_split_help: str = ""

    def allows_split(self, name: str) -> bool:
        return name in self.splits or (self.extra_split is not None and self.extra_split(name))


class Task(Protocol):
    """A trial's data, built in every worker: training micro-batches and the fixed eval splits.

    `train_batch` is a pure function of its arguments, so a resumed or retried trial sees the
    same data; its dict holds the model's inputs and a `group` entry (the task group of each
    example, for the minimax objective and worst-group metrics).
    """

    num_groups: int
    group_names: Sequence[str]

    def train_batch(self, step: int, micro: int, rank: int, size: int) -> dict[str, np.ndarray]: ...

    def datasets(self) -> list[dict]:
        """The datasets read from disk, for MLflow's dataset inputs: {name, digest, source, context
        ("training" | "evaluation"), profile}; none for generated data."""
        ...


class Evaluator(Protocol):
    """Runs at every eval point on every rank; rank 0 returns `eval/<split>/<metric>` values."""

    def run(self, model: Any, device: Any, rank: int, world: int) -> dict[str, float]: ...

    def write_artifacts(self, folder: Path) -> list[Path]: ...


class TaskKind(ABC):
    """One registered task: its description and how a trial of it is built."""

    name: str
    info: TaskInfo

    @abstractmethod
    def build(self, trial: Any, world: int, cache_dir: Path) -> Task:
        """The trial's data source (in a worker; `world` ranks share the training stream)."""

    @abstractmethod
    def model(self, trial: Any) -> Any:
        """The trial's torch model: per-example losses from a batch, and `predict` for evaluation."""

    @abstractmethod
    def evaluator(self, task: Task, trial: Any) -> Evaluator:
        """The trial's evaluation suite over the spec's splits and metrics."""

    @abstractmethod
    def sequence_lengths(self, trial: Any) -> tuple[int, int]:
        """(encoder or decoder-only tokens, decoder tokens) of one example, for FLOPs and memory."""

    def vocab_size(self, spec: Any) -> int:
        """Size of the output vocabulary whose logits a worker holds (0: no vocabulary)."""
        return 0

    def default_mixture(self, data: Any) -> dict[str, float]:
        """The pretraining mixture when the spec names none."""
        return dict(self.info.default_mixture)

    def domain_names(self, data: Any) -> tuple[str, ...] | None:
        """The names `data.domains` may weigh; None when they cannot be known yet (data not here)."""
        return ()

    def splits(self, spec: Any) -> tuple[str, ...]:
        """Every split a trial of `spec` evaluates on when the spec names none."""
        return self.info.splits

    def allows_split(self, spec: Any, name: str) -> bool:
        return self.info.allows_split(name)

    def check(self, spec: Any) -> tuple[str, str] | None:
        """A task-specific problem with a valid-looking spec, as (key, message), or None."""
        return None

    def preflight(self, spec: Any) -> str | None:
        """A problem only the machine that starts the study can see (its data), or None."""
        return None

    def loader_rate(self, trial: Any) -> float | None:
        """Training examples one CPU core reads, decodes and augments per second, for the
        planner's check that the data path can feed the GPUs; None: data costs the CPUs little."""
        return None
