"""Sums of power laws: y = E + sum_j A_j x_j^(-alpha_j), fitted in log space.

Following Hoffmann et al. (2022, Approach 3) and Besiroglu et al. (2024), the law is
parametrised as log y_hat = LSE(a_1 - alpha_1 log x_1, ..., e) with a_j = log A_j,
e = log E: positivity of A_j and E is built in and the fit is well conditioned across decades.

Metrics that grow with scale and are bounded by 1 (accuracy, AUROC) use `increasing=True`:
the law is fitted to the complement 1 - y (an error rate that decays like a loss), so E is
the irreducible error, 1 - E is the asymptotic metric, and predictions are 1 - (E + ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scalinglaws.laws.base import VJP, Law

# Besiroglu et al.'s initialisation grid (4,500 starts), in theta order (a, b, e, alpha, beta).
_AB = np.arange(0.0, 30.0, 5.0)
_E = np.arange(-1.0, 1.5, 0.5)
_EXP = np.arange(0.0, 2.5, 0.5)
CHINCHILLA_GRID = np.stack(np.meshgrid(_AB, _AB, _E, _EXP, _EXP, indexing="ij"), -1).reshape(-1, 5)


class _PowerSum(Law):
    """theta = (a_1..a_m, e, alpha_1..alpha_m); one power term per input column."""

    _coef_names: tuple[str, ...]  # A_j, in input order; exponent_names: alpha_j, in input order

    def __init__(self, x: str | Sequence[str], y: str | None = None, *, increasing: bool = False, **kw: Any) -> None:
        super().__init__(x, y, **kw)
        self.increasing = increasing

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "increasing": self.increasing}

    def _target(self, y: np.ndarray) -> np.ndarray:
        if self.increasing and np.any(y >= 1):
            raise ValueError(f"increasing=True fits log(1 - y): {int(np.sum(y >= 1))} value(s) of y >= 1")
        return super()._target(1.0 - y if self.increasing else y)

    def _untarget(self, f: np.ndarray) -> np.ndarray:
        y = super()._untarget(f)
        return 1.0 - y if self.increasing else y

    def _model(self, theta: np.ndarray, X: np.ndarray, jac: bool = True) -> tuple[np.ndarray, VJP | None]:
        m = self.n_inputs
        log_x = np.log(X).T  # (m, n)
        # terms[j] = a_j - alpha_j log x_j, terms[m] = e; layout (term, S, n) keeps reductions fast
        terms = np.empty((m + 1, theta.shape[0], X.shape[0]))
        for j in range(m):
            terms[j] = theta[:, j, None] - theta[:, m + 1 + j, None] * log_x[j]
        terms[m] = theta[:, m, None]
        top = terms.max(axis=0)
        w = np.exp(np.subtract(terms, top, out=terms), out=terms)
        total = w.sum(axis=0)
        pred = top + np.log(total)
        if not jac:
            return pred, None
        p = np.divide(w, total, out=w)  # d pred / d term

        def vjp(v: np.ndarray) -> np.ndarray:
            pv = p * v
            return np.concatenate([pv.sum(axis=-1).T, -np.einsum("jsn,jn->sj", pv[:m], log_x)], axis=1)

        return pred, vjp

    def _to_params(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        m = self.n_inputs
        # a log-coefficient past ~709 (a resample the data barely constrain) is inf: the bootstrap
        # interval shows it, and the wide_ci diagnostic says so
        with np.errstate(over="ignore"):
            out = {"E": np.exp(theta[:, m])}
            for j, (coef, expo) in enumerate(zip(self._coef_names, self.exponent_names, strict=True)):
                out[coef], out[expo] = np.exp(theta[:, j]), theta[:, m + 1 + j]
        return out

    def _to_theta(self, params: Mapping[str, Any]) -> np.ndarray:
        return np.array(
            [np.log(params[c]) for c in self._coef_names]
            + [np.log(params["E"])]
            + [params[e] for e in self.exponent_names],
            dtype=float,
        )


class PowerLaw(_PowerSum):
    """y = E + A x^(-alpha) (or 1 - y = ..., with `increasing=True`).

    Default grid: data-driven. For each alpha in a ladder of exponents and each E as a
    fraction of the smallest target, A is set so the curve passes through the median point.
    """

    name = "power"
    param_names = ("E", "A", "alpha")
    _coef_names = ("A",)
    exponent_names = ("alpha",)
    nonnegative = ("E", "A")

    def __init__(self, x: str = "n_params", y: str | None = None, **kw: Any) -> None:
        super().__init__(x, y, **kw)

    def _starts(self, X: np.ndarray, t: np.ndarray) -> np.ndarray:
        log_x_ref, t_ref, t_min = np.median(np.log(X[:, 0])), np.median(t), t.min()
        starts = []
        for alpha in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5):
            for frac in (0.01, 0.5, 0.9):
                e = t_min + np.log(frac)
                gap = np.log(max(np.exp(t_ref) - np.exp(e), 1e-3 * np.exp(t_ref)))
                starts += [(gap + alpha * log_x_ref + off, e, alpha) for off in (-1.0, 0.0, 1.0)]
        return np.array(starts)


class ChinchillaLaw(_PowerSum):
    """y = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022), fitted as Approach 3.

    Defaults reproduce Besiroglu et al. (2024): Huber(delta=1e-3) on log residuals, summed,
    L-BFGS from their 4,500-start grid, best optimum kept.
    """

    name = "chinchilla"
    param_names = ("E", "A", "B", "alpha", "beta")
    n_inputs = 2
    _coef_names = ("A", "B")
    exponent_names = ("alpha", "beta")
    nonnegative = ("E", "A", "B")

    def __init__(self, x: Sequence[str] = ("n_params", "data_size"), y: str | None = None, **kw: Any) -> None:
        super().__init__(x, y, **kw)

    def _starts(self, X: np.ndarray, t: np.ndarray) -> np.ndarray:
        return CHINCHILLA_GRID
