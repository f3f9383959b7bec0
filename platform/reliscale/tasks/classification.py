"""What every classification task shares: the metric names, the heads, the trial loop's stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from reliscale.evaluation.fewshot import SHOTS

CLASSIFICATION_METRICS = (
    "accuracy", "nll", "brier", "ece", "ece_mass", "calibration_auroc", "aurc",
    "sel_acc_50", "sel_acc_80", "sel_acc_90",
    "ood_auroc_msp", "ood_auroc_entropy", "ood_aupr_in", "ood_aupr_out", "fpr95", "ood_auroc_variance",
    *(f"{kind}accuracy_{k}shot" for kind in ("", "unseen_") for k in SHOTS),
)
TECHNIQUES = ("none", "batchensemble", "gp", "het")


class ClassificationData(Protocol):
    """A labelled dataset with fixed eval splits; `train_examples` is a pure function of its
    arguments, each rank's share of global batch `index`."""

    seed: int
    num_classes: int
    train_size: int
    unseen_classes: Sequence[int]  # labels of the few-shot task that training never shows

    def train_examples(self, index: int, rank: int, world: int, size: int) -> tuple[np.ndarray, np.ndarray]: ...

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]: ...


class ClassificationStream:
    """The trial loop's view of a classification dataset: micro-batches as dicts, classes as groups."""

    def __init__(self, task: ClassificationData, world: int, accumulation: int):
        self.task, self.world, self.accumulation = task, world, accumulation
        self.num_groups = task.num_classes
        self.group_names = [f"class{c}" for c in range(task.num_classes)]

    def train_batch(self, step: int, micro: int, rank: int, size: int) -> dict[str, np.ndarray]:
        x, y = self.task.train_examples(step * self.accumulation + micro, rank, self.world, size)
        return {"x": x, "y": y, "group": y}

    def datasets(self) -> list[dict]:
        return self.task.datasets() if hasattr(self.task, "datasets") else []  # generated data: none
