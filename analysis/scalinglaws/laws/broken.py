"""Broken neural scaling law with one break (Caballero et al. 2022).

y = a + b x^(-c0) (1 + (x / d1)^(1 / f1))^(-c1 f1)

Below the break d1 the slope (in log-log) is -c0, above it -(c0 + c1); f1 sets how sharp
the transition is. Fitted in log space as log y = LSE(log a, g(x)) with
g = log b - c0 log x - c1 f1 softplus((log x - log d1) / f1), so a, b, d1, f1 stay positive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import expit

from scalinglaws.laws.base import VJP, Law


class BrokenPowerLaw(Law):
    """One-break BNSL. theta = (log a, log b, c0, c1, log d1, log f1); least squares on log y
    by default (the curves are smooth and the sharp break is what must be resolved).

    Default grid: breaks d1 log-spaced across the observed x, a range of sharpness f1 and
    exponents c0, c1, and b set so the curve passes through the smallest-x point.
    """

    name = "broken-power"
    param_names = ("a", "b", "c0", "c1", "d1", "f1")
    exponent_names = ("c0", "c1")
    nonnegative = ("a", "b")
    default_loss = "mse"

    def __init__(self, x: str = "data_size", y: str | None = None, **kw: Any) -> None:
        super().__init__(x, y, **kw)

    def _model(self, theta: np.ndarray, X: np.ndarray, jac: bool = True) -> tuple[np.ndarray, VJP | None]:
        la, lb, c0, c1, ld, lf = (theta[:, i, None] for i in range(6))
        log_x = np.log(X[:, 0])
        f1 = np.exp(lf)
        z = (log_x - ld) / f1
        soft = np.logaddexp(0.0, z)
        g = lb - c0 * log_x - c1 * f1 * soft
        pred = np.logaddexp(la, g)
        if not jac:
            return pred, None
        p_a = expit(la - g)  # d pred / d log a
        p_g = 1.0 - p_a
        sig = expit(z)

        def vjp(v: np.ndarray) -> np.ndarray:
            w = p_g * v
            return np.stack(
                [
                    (p_a * v).sum(-1),
                    w.sum(-1),
                    -(w * log_x).sum(-1),
                    -(w * f1 * soft).sum(-1),
                    (w * c1 * sig).sum(-1),
                    -(w * c1 * f1 * (soft - z * sig)).sum(-1),
                ],
                axis=1,
            )

        return pred, vjp

    def _starts(self, X: np.ndarray, t: np.ndarray) -> np.ndarray:
        log_x = np.log(X[:, 0])
        first = np.argmin(log_x)
        y0, lx0, y_min = np.exp(t[first]), log_x[first], np.exp(t.min())
        starts = []
        for ld in np.linspace(log_x.min(), log_x.max() + np.log(2.0), 8):
            for f1 in (0.03, 0.1, 0.3, 1.0):
                for c0 in (0.0, 0.1, 0.5):
                    for c1 in (0.5, 1.0, 2.0, 5.0, 10.0):
                        for frac in (0.01, 0.25, 0.5, 0.9):
                            a = frac * y_min
                            lb = np.log(y0 - a) + c0 * lx0 + c1 * f1 * np.logaddexp(0.0, (lx0 - ld) / f1)
                            starts.append((np.log(a), lb, c0, c1, ld, np.log(f1)))
        return np.array(starts)

    def _to_params(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        la, lb, c0, c1, ld, lf = theta.T
        return {"a": np.exp(la), "b": np.exp(lb), "c0": c0, "c1": c1, "d1": np.exp(ld), "f1": np.exp(lf)}

    def _to_theta(self, params: Mapping[str, Any]) -> np.ndarray:
        p = params
        return np.array(
            [np.log(p["a"]), np.log(p["b"]), p["c0"], p["c1"], np.log(p["d1"]), np.log(p["f1"])], dtype=float
        )
