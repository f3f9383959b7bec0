"""Downstream metric as a sigmoid of upstream loss (step 2 of AI2's model ladders).

Bhagia et al. (2024) predict a task metric in two steps: a Chinchilla-form law for the
task loss L(N, D), then metric = a / (1 + exp(-k (L - L0))) + b. This class is step 2,
fitted on (upstream loss, metric) pairs; chain it as `step2.predict(step1.predict(N, D))`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import expit

from scalinglaws.laws.base import VJP, Law


class SigmoidOfLoss(Law):
    """metric = a / (1 + exp(-k (L - L0))) + b, least squares in metric space by default.

    The form is symmetric under (a, k, L0, b) -> (-a, -k, L0, a + b); fits are reported with
    k > 0, so b is the metric's limit at low loss and a + b its limit at high loss (chance
    level for accuracy, hence a < 0 for metrics that improve as loss falls).
    """

    name = "sigmoid-of-loss"
    param_names = ("a", "k", "L0", "b")
    nonnegative = ("k",)  # by canonicalisation; k = 0 is a flat line
    log_space = False
    default_loss = "mse"

    def __init__(self, x: str = "train/loss", y: str | None = None, **kw: Any) -> None:
        super().__init__(x, y, **kw)

    def _model(self, theta: np.ndarray, X: np.ndarray, jac: bool = True) -> tuple[np.ndarray, VJP | None]:
        a, k, l0, b = (theta[:, i, None] for i in range(4))
        dl = X[:, 0] - l0  # (S, n)
        sig = expit(k * dl)
        pred = a * sig + b
        if not jac:
            return pred, None
        slope = a * sig * (1.0 - sig)  # d pred / d (k (L - L0))

        def vjp(v: np.ndarray) -> np.ndarray:
            sv = slope * v
            return np.stack(
                [(sig * v).sum(-1), (sv * dl).sum(-1), -(sv * k).sum(-1), v.sum(-1)], axis=1
            )

        return pred, vjp

    def _starts(self, X: np.ndarray, t: np.ndarray) -> np.ndarray:
        loss = X[:, 0]
        spread = max(float(np.ptp(t)), 1e-3)
        width = max(float(np.ptp(loss)), 1e-3)
        l0s = [*np.quantile(loss, [0.0, 0.25, 0.5, 0.75, 1.0]), loss.min() - width, loss.max() + width]
        starts = [
            (a, k / width, l0, t.mean() - a / 2)  # curve through the mean metric at L0
            for a in (-2 * spread, -spread, spread, 2 * spread)
            for k in (0.5, 1.0, 2.0, 4.0, 8.0)
            for l0 in l0s
        ]
        return np.array(starts)

    def _canonical(self, theta: np.ndarray) -> np.ndarray:
        a, k, l0, b = theta.T
        flip = k < 0
        return np.stack([np.where(flip, -a, a), np.abs(k), l0, np.where(flip, a + b, b)], axis=1)

    def _to_params(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.param_names, theta.T, strict=True))

    def _to_theta(self, params: Mapping[str, Any]) -> np.ndarray:
        return np.array([params[k] for k in self.param_names], dtype=float)
