"""The `Law` base class: data handling, robust objective, multi-start fitting.

A subclass describes one functional form through three methods working on *batches* of
parameter vectors theta (S, k) in the optimiser's coordinates:
  _model(theta, X)  -> prediction in fit space (S, n) and its vector-Jacobian product
                       vjp(v (S, n)) -> sum_n v * d pred / d theta  (S, k)
  _starts(X, t)     -> the initialisation grid (S, k)
  _to_params(theta) / _to_theta(params) -> the published parametrisation and back
Everything else (objective, gradient, optimiser, bootstrap refits) is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from scalinglaws.diagnostics import Diagnostic, diagnose
from scalinglaws.optim import BatchObjective, minimize_batched

LOSSES = ("huber", "mse")
VJP = Callable[[np.ndarray], np.ndarray]
_CHUNK = 1 << 16  # elements (problems x points) per vectorised evaluation: cache-sized, fastest


def robust_loss(r: np.ndarray, loss: str, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """rho(r) and rho'(r). "mse" is 0.5 r^2, summed like Huber (not averaged; see optim.py)."""
    if loss == "mse":
        return 0.5 * r * r, r
    psi = np.clip(r, -delta, delta)
    return psi * (r - 0.5 * psi), psi  # = 0.5 r^2 inside delta, delta (|r| - delta / 2) outside


class Law:
    """Base class of a scaling law y = f(x; params) fitted by minimising sum_i rho(r_i).

    r_i is the residual in fit space: log y - log y_hat for laws with `log_space` (positive
    targets spanning decades), y - y_hat otherwise. rho is Huber(delta) or least squares.
    """

    name: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]
    exponent_names: ClassVar[tuple[str, ...]] = ()  # the scaling exponents among param_names
    # Parameters the parametrisation keeps >= 0 (e.g. E = exp(e)): a fit can only approach 0,
    # and a fit that does has lost a term (see diagnostics.py).
    nonnegative: ClassVar[tuple[str, ...]] = ()
    n_inputs: ClassVar[int] = 1
    log_space: ClassVar[bool] = True
    default_loss: ClassVar[str] = "huber"

    def __init__(
        self,
        x: str | Sequence[str],
        y: str | None = None,
        *,
        loss: str | None = None,
        delta: float = 1e-3,
        grid: np.ndarray | None = None,
    ) -> None:
        self.x = (x,) if isinstance(x, str) else tuple(x)
        if len(self.x) != self.n_inputs:
            raise ValueError(f"{type(self).__name__} takes {self.n_inputs} x column(s), got {self.x}")
        self.y = y
        self.loss = loss or self.default_loss
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}; allowed: {', '.join(LOSSES)}")
        self.delta = delta
        self.grid = None if grid is None else np.atleast_2d(np.asarray(grid, dtype=float))
        self.theta_: np.ndarray | None = None
        self.loss_: float = float("nan")
        self.n_points_: int = 0
        self.converged_: bool = False
        self.diagnostics_: list[Diagnostic] = []

    # ---- to implement in subclasses -------------------------------------------------------
    def _model(self, theta: np.ndarray, X: np.ndarray, jac: bool = True) -> tuple[np.ndarray, VJP | None]:
        raise NotImplementedError

    def _starts(self, X: np.ndarray, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _to_params(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _to_theta(self, params: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _canonical(self, theta: np.ndarray) -> np.ndarray:
        """Map theta (S, k) to one representative of its equivalence class (if any)."""
        return theta

    def _target(self, y: np.ndarray) -> np.ndarray:
        """Observed y -> fit space."""
        if not self.log_space:
            return y
        if np.any(y <= 0):
            raise ValueError(f"{type(self).__name__} fits log(y): {int(np.sum(y <= 0))} value(s) of y <= 0")
        return np.log(y)

    def _untarget(self, f: np.ndarray) -> np.ndarray:
        """Fit space -> y."""
        return np.exp(f) if self.log_space else f

    def _config(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "loss": self.loss, "delta": self.delta, "grid": self.grid}

    # ---- data -----------------------------------------------------------------------------
    def design(self, *X: Any) -> np.ndarray:
        """Inputs as an (n, n_inputs) float array, from a DataFrame (columns `self.x`),
        an (n, n_inputs) array, or one array-like per input (broadcast)."""
        if len(X) == 1 and isinstance(X[0], pd.DataFrame):
            missing = [c for c in self.x if c not in X[0].columns]
            if missing:
                raise KeyError(f"column(s) {missing} not in data; available: {list(X[0].columns)}")
            return X[0][list(self.x)].to_numpy(dtype=float)
        if len(X) == 1:
            arr = np.asarray(X[0], dtype=float)
            if arr.ndim == 2 and arr.shape[1] == self.n_inputs:
                return arr
            if self.n_inputs == 1:
                return arr.reshape(-1, 1)
            raise ValueError(f"expected an (n, {self.n_inputs}) array, got shape {arr.shape}")
        if len(X) != self.n_inputs:
            raise ValueError(f"expected {self.n_inputs} input arrays, got {len(X)}")
        return np.column_stack([a.ravel() for a in np.broadcast_arrays(*(np.asarray(a, float) for a in X))])

    def _raw_xy(self, data: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(data, pd.DataFrame):
            col = y if isinstance(y, str) else self.y
            if col is None:
                raise ValueError(f"{type(self).__name__}: name the target column (y=...)")
            if col not in data.columns:
                raise KeyError(f"column {col!r} not in data; available: {list(data.columns)}")
            return self.design(data), data[col].to_numpy(dtype=float)
        return self.design(data), np.asarray(y, dtype=float).ravel()

    def usable(self, data: Any, y: Any = None) -> np.ndarray:
        """Mask of the rows a fit uses: inputs and target all finite."""
        X, yv = self._raw_xy(data, y)
        return np.isfinite(X).all(axis=1) & np.isfinite(yv)

    def xy(self, data: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of the usable rows. `data` is a DataFrame (y: column name, default
        `self.y`) or an array of inputs (y: array of targets)."""
        X, yv = self._raw_xy(data, y)
        keep = self.usable(data, y)
        return X[keep], yv[keep]

    # ---- fitting --------------------------------------------------------------------------
    def objective(self, X: np.ndarray, t: np.ndarray, weights: np.ndarray | None = None) -> BatchObjective:
        """Batched objective over problems idx: sum_i w_i rho(t_i - f_i) and its gradient."""

        def fun(theta: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            f_out = np.empty(len(theta))
            g_out = np.empty_like(theta)
            step = max(1, _CHUNK // len(t))
            for lo in range(0, len(theta), step):
                sl = slice(lo, lo + step)
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    pred, vjp = self._model(theta[sl], X)
                    rho, psi = robust_loss(t - pred, self.loss, self.delta)
                    if weights is not None:
                        w = weights[idx[sl]]
                        rho, psi = w * rho, w * psi
                    f_out[sl] = rho.sum(axis=1)
                    g_out[sl] = -vjp(psi)
            bad = ~np.isfinite(f_out) | ~np.isfinite(g_out).all(axis=1)
            f_out[bad] = np.inf
            g_out[bad] = 0.0
            return f_out, g_out

        return fun

    def fit(self, data: Any, y: Any = None) -> Law:
        """Fit from every start of the grid at once and keep the best optimum; `diagnostics_`
        then holds the checks that need only the data (`diagnose`)."""
        X, yv = self.xy(data, y)
        if len(yv) < len(self.param_names):
            raise ValueError(f"{type(self).__name__} needs >= {len(self.param_names)} points, got {len(yv)}")
        t = self._target(yv)
        starts = self.grid if self.grid is not None else self._starts(X, t)
        res = minimize_batched(self.objective(X, t), starts)
        best = int(np.argmin(res.fun))
        if not np.isfinite(res.fun[best]):
            raise RuntimeError(f"{type(self).__name__}: no start gave a finite objective")
        self.theta_ = self._canonical(res.x[best : best + 1])[0]
        self.loss_ = float(res.fun[best])
        self.converged_ = bool(res.converged[best])
        self.n_points_ = len(yv)
        self.diagnostics_ = diagnose(self, data, y)
        return self

    # ---- using a fitted law ---------------------------------------------------------------
    def _check_fitted(self) -> np.ndarray:
        if self.theta_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call .fit(...) first")
        return self.theta_

    @property
    def params(self) -> dict[str, float]:
        p = self._to_params(self._check_fitted()[None])
        return {k: float(p[k][0]) for k in self.param_names}

    def predict(self, *X: Any) -> np.ndarray:
        """Predicted y at X (see `design` for accepted inputs), shape (n,)."""
        return self.predict_many(self._check_fitted()[None], *X)[0]

    def predict_many(self, theta: np.ndarray, *X: Any) -> np.ndarray:
        """Predictions (S, n) for a batch of parameter vectors (e.g. bootstrap refits)."""
        pred, _ = self._model(np.atleast_2d(theta), self.design(*X), jac=False)
        return self._untarget(pred)

    @classmethod
    def from_params(cls, x: str | Sequence[str] | None = None, **kwargs: Any) -> Law:
        """A law with given parameter values (no fit), e.g. to simulate data.
        Constructor options (y, loss, ...) may be mixed in with the parameters."""
        params = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.param_names}
        missing = set(cls.param_names) - set(params)
        if missing:
            raise ValueError(f"{cls.__name__}.from_params: missing {sorted(missing)}")
        law = cls(**kwargs) if x is None else cls(x, **kwargs)
        law.theta_ = law._to_theta(params)
        return law

    def clone(self) -> Law:
        """An unfitted copy with the same configuration."""
        return type(self)(**self._config())

    def __repr__(self) -> str:
        if self.theta_ is None:
            return f"{type(self).__name__}(x={self.x}, y={self.y!r}, unfitted)"
        body = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"{type(self).__name__}({body})"
