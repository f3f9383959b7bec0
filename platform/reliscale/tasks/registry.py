"""What the spec needs to know about each task, without importing any of them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


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

    def allows_split(self, name: str) -> bool:
        """A named split of the task, or (regression over function classes) a class or a convex mix."""
        if name in self.splits:
            return True
        return bool(self.function_classes) and (name in self.function_classes
                                                or parse_convex_split(name) is not None)

    def describe_splits(self) -> str:
        extra = ", a function class, or convex-<class>-<class>[-<percent>]" if self.function_classes else ""
        return ", ".join(self.splits) + extra


ICL_CLASSES = ("dense_linear", "sparse_linear", "relu2nn", "sinusoid")
ICL_METRICS = ("mse", "mse_first", "mse_mid", "mse_last", "ls_ratio", "best_ratio", "worst_group_mse",
               "baseline_ls", "baseline_lasso", "baseline_avg", "baseline_knn", "baseline_zero",
               "baseline_best")
_CONVEX = re.compile(r"convex-({0})-({0})(?:-(\d{{1,2}}))?".format("|".join(ICL_CLASSES)))


def parse_convex_split(name: str) -> tuple[str, str, float] | None:
    """'convex-dense_linear-sinusoid-25' -> ('dense_linear', 'sinusoid', 0.25): 25 % of the second class.

    Without a percentage the two classes weigh half each. None when `name` is not such a split.
    """
    m = _CONVEX.fullmatch(name)
    if not m or m[1] == m[2] or m[3] in ("0", "00"):
        return None
    return m[1], m[2], int(m[3] or 50) / 100
CLASSIFICATION_METRICS = (
    "accuracy", "nll", "brier", "ece", "ece_mass", "calibration_auroc", "aurc",
    "sel_acc_50", "sel_acc_80", "sel_acc_90",
    "ood_auroc_msp", "ood_auroc_entropy", "ood_aupr_in", "ood_aupr_out", "fpr95", "ood_auroc_variance",
    *(f"{kind}accuracy_{k}shot" for kind in ("", "unseen_") for k in (1, 5, 10, 25)),  # fewshot.SHOTS
)
TECHNIQUES = ("none", "batchensemble", "gp", "het")

TASKS: dict[str, TaskInfo] = {
    # In-context regression over function classes (Garg et al. 2022; Yadlowsky et al. 2023).
    "icl": TaskInfo(
        kind="regression", unit="examples", families=("decoder",), techniques=("none",),
        splits=("id", "ood_class", "wnorm", "xscale"), metrics=ICL_METRICS,
        function_classes=ICL_CLASSES, default_mixture={"dense_linear": 1.0},
    ),
    # MNIST-1D, generated procedurally: in-distribution, covariate shifts, unseen classes, and
    # few-shot adaptation to all ten digits.
    "mnist1d": TaskInfo(
        kind="classification", unit="examples", families=("vit", "encdec", "decoder"),
        techniques=TECHNIQUES, splits=("id", "noise", "scale", "shift", "blur", "ood", "fewshot"),
        metrics=CLASSIFICATION_METRICS,
    ),
    # Next-token prediction on a local token file or a seeded synthetic language.
    "lm": TaskInfo(
        kind="lm", unit="tokens", families=("decoder",), techniques=("none",),
        splits=("id",), metrics=("loss", "perplexity", "baseline_unigram", "baseline_floor"),
    ),
}
