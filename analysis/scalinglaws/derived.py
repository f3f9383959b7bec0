"""Quantities derived from a fitted law: compute-optimal allocation, size for a target."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from scalinglaws.laws import BrokenPowerLaw, ChinchillaLaw, Law, PowerLaw, SigmoidOfLoss


def compute_optimal(law: ChinchillaLaw, flops: float | np.ndarray) -> pd.DataFrame:
    """N*(C), D*(C) minimising E + A/N^alpha + B/D^beta subject to C = 6 N D.

    Setting dL/dN = 0 along D = C / (6N) gives N* = G (C/6)^(beta/(alpha+beta)) and
    D* = G^-1 (C/6)^(alpha/(alpha+beta)) with G = (alpha A / (beta B))^(1/(alpha+beta)).
    Columns: flops, the law's two inputs (N*, D*), predicted.
    """
    if not isinstance(law, ChinchillaLaw):
        raise TypeError(f"compute_optimal needs a ChinchillaLaw, got {type(law).__name__}")
    p = law.params
    a, b = p["alpha"], p["beta"]
    if not (a > 0 and b > 0 and p["A"] > 0 and p["B"] > 0):
        raise ValueError(f"no compute-optimal frontier: it needs A, B, alpha, beta > 0; the fit has "
                         f"A={p['A']:.3g}, B={p['B']:.3g}, alpha={a:.3g}, beta={b:.3g}")
    c6 = np.atleast_1d(np.asarray(flops, dtype=float)) / 6.0
    g = (a * p["A"] / (b * p["B"])) ** (1.0 / (a + b))
    n_opt = g * c6 ** (b / (a + b))
    d_opt = c6 / n_opt
    n_col, d_col = law.x
    return pd.DataFrame({"flops": 6.0 * c6, n_col: n_opt, d_col: d_opt, "predicted": law.predict(n_opt, d_opt)})


def required_size(
    law: Law, target: float, *, n_params: float | None = None, data_size: float | None = None
) -> dict[str, float]:
    """The input needed for the law to reach `target`, as {input column: value}.

    PowerLaw / BrokenPowerLaw: the x reaching target. SigmoidOfLoss: the upstream loss.
    ChinchillaLaw: D for a given `n_params`, N for a given `data_size`, or, given neither,
    the compute-optimal (N, D) with the least FLOPs reaching target (key "flops" added).
    Raises ValueError when the target is beyond the law's asymptote.
    """
    if isinstance(law, ChinchillaLaw):
        return _chinchilla_required(law, target, n_params, data_size)
    if n_params is not None or data_size is not None:
        raise TypeError("n_params / data_size apply to ChinchillaLaw only")
    (x,) = law.x
    if isinstance(law, PowerLaw):
        p = law.params
        gap = (1.0 - target if law.increasing else target) - p["E"]
        _check_reachable(gap > 0, target, law)
        return {x: (p["A"] / gap) ** (1.0 / p["alpha"])}
    if isinstance(law, SigmoidOfLoss):
        p = law.params
        frac = (target - p["b"]) / p["a"]
        _check_reachable(0 < frac < 1, target, law)
        return {x: p["L0"] - np.log(1.0 / frac - 1.0) / p["k"]}
    if isinstance(law, BrokenPowerLaw):
        return {x: float(np.exp(_root_log(lambda lx: law.predict(np.exp(lx))[0] - target, target, law)))}
    raise TypeError(f"required_size does not know {type(law).__name__}")


def _chinchilla_required(law: ChinchillaLaw, target: float, n: float | None, d: float | None) -> dict[str, float]:
    p = law.params
    goal = 1.0 - target if law.increasing else target
    n_col, d_col = law.x
    if n is not None and d is not None:
        raise TypeError("give n_params or data_size, not both")
    if n is not None:
        gap = goal - p["E"] - p["A"] * n ** -p["alpha"]
        _check_reachable(gap > 0, target, law)
        return {n_col: float(n), d_col: (p["B"] / gap) ** (1.0 / p["beta"])}
    if d is not None:
        gap = goal - p["E"] - p["B"] * d ** -p["beta"]
        _check_reachable(gap > 0, target, law)
        return {n_col: (p["A"] / gap) ** (1.0 / p["alpha"]), d_col: float(d)}

    def along_frontier(log_c: float) -> float:
        return float(compute_optimal(law, np.exp(log_c))["predicted"].iloc[0]) - target

    log_c = _root_log(along_frontier, target, law)
    row = compute_optimal(law, np.exp(log_c)).iloc[0]
    return {n_col: float(row[n_col]), d_col: float(row[d_col]), "flops": float(row["flops"])}


def _root_log(f, target: float, law: Law, lo: float = -20.0, hi: float = 120.0) -> float:
    """Root of f over log-size in [lo, hi] (sizes e^-20 .. e^120)."""
    _check_reachable(np.sign(f(lo)) != np.sign(f(hi)), target, law)
    return brentq(f, lo, hi, xtol=1e-12)


def _check_reachable(ok: bool, target: float, law: Law) -> None:
    if not ok:
        raise ValueError(f"target {target} is not reachable by {law!r}")
