"""When a fitted law should not be believed: checks with a code and a one-line message.

`Law.fit` runs the checks that need only the data and keeps them as `law.diagnostics_`;
the CLI and the report call `diagnose` again with the bootstrap and the hold-out.

  few_levels      an input column has fewer than `min_levels` distinct values: the curve
                  along it is fitted, not tested (two sizes fix any power law).
  few_points      fewer than `min_points_per_param` points per fitted parameter.
  at_bound        a parameter the parametrisation keeps >= 0 (E = exp(e), A, B, a, b, a sigmoid's
                  k; `Law.nonnegative`) sits on its bound 0: setting it to 0 changes no fitted
                  value by more than `bound_tol`
                  (in fit space: relative for laws fitted on log y, a fraction of the data's
                  range otherwise). The law has lost that term; its value is not an estimate.
  residual_signs  sign test with a size floor: at one value of an input column with at least
                  `level_min_points` points, every residual has the same sign and is larger than
                  the fit's median |residual|. Random residuals do that with chance 2 * 4^-k at a
                  level of k points (3% at 3, 0.05% at 6): the form misses a trend along it.
  wide_ci         (with a bootstrap) an exponent's interval includes 0, or spans more than a
                  factor `max_ci_ratio` (hi/lo for a positive exponent, lo/hi for a negative one).
  holdout_error   (with a hold-out) the law fitted without the largest sizes misses them by
                  more than `max_holdout_error` mean |relative error|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from scalinglaws.bootstrap import BootstrapResult
    from scalinglaws.laws.base import Law
    from scalinglaws.validate import Holdout


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str


def diagnose(
    law: Law,
    data: Any,
    y: Any = None,
    *,
    boot: BootstrapResult | None = None,
    holdout: Holdout | None = None,
    level: float = 0.95,
    min_levels: int = 3,
    min_points_per_param: float = 2.0,
    bound_tol: float = 1e-3,
    level_min_points: int = 3,
    max_ci_ratio: float = 3.0,
    max_holdout_error: float = 0.05,
) -> list[Diagnostic]:
    """The checks above for fitted `law` on `data` (what it was fitted on; `y` as in `Law.fit`)."""
    X, yv = law.xy(data, y)
    t = law._target(yv)
    f = law._model(law._check_fitted()[None], X, jac=False)[0][0]
    out = _few_levels(law, X, min_levels) + _few_points(law, len(yv), min_points_per_param)
    out += _at_bound(law, X, t, f, bound_tol) + _residual_signs(law, X, t - f, level_min_points)
    if boot is not None:
        out += _wide_ci(law, boot.params_ci(level), level, max_ci_ratio)
    if holdout is not None and holdout.mean_abs_rel_error > max_holdout_error:
        h = holdout.to_dict()
        out.append(Diagnostic("holdout_error", f"fitted without the largest {h['k']} {h['x']}, the law misses "
                              f"them by {h['mean_abs_rel_error']:.1%} on average (> {max_holdout_error:.0%})"))
    return out


def _few_levels(law: Law, X: np.ndarray, min_levels: int) -> list[Diagnostic]:
    out = []
    for col, values in zip(law.x, X.T, strict=True):
        n = len(np.unique(values))
        if n < min_levels:
            out.append(Diagnostic("few_levels", f"{col} has {n} distinct value(s) (< {min_levels}): "
                                  f"the law along {col} is fitted, not tested"))
    return out


def _few_points(law: Law, n: int, per_param: float) -> list[Diagnostic]:
    k = len(law.param_names)
    if n >= per_param * k:
        return []
    return [Diagnostic("few_points", f"{n} points for {k} parameters (< {per_param:g} per parameter): "
                       f"{n - k} residual degree(s) of freedom")]


def _at_bound(law: Law, X: np.ndarray, t: np.ndarray, f: np.ndarray, tol: float) -> list[Diagnostic]:
    params = law.params
    scale = 1.0 if law.log_space else max(float(np.ptp(t)), np.finfo(float).tiny)
    out = []
    for name in law.nonnegative:
        with np.errstate(all="ignore"):  # log(0) = -inf is how a log-parametrised term is switched off
            theta = law._to_theta({**params, name: 0.0})
            f_bound = law._model(theta[None], X, jac=False)[0][0]
        change = float(np.max(np.abs(f_bound - f))) / scale
        if change <= tol:
            what = "relative" if law.log_space else "of the data's range"
            out.append(Diagnostic("at_bound", f"{name} = {params[name]:.3g} is at its bound 0: setting it "
                                  f"to 0 moves no fitted value by more than {tol:g} ({what}); the term is lost"))
    return out


def _residual_signs(law: Law, X: np.ndarray, r: np.ndarray, min_points: int) -> list[Diagnostic]:
    floor = float(np.median(np.abs(r)))
    out = []
    for col, values in zip(law.x, X.T, strict=True):
        for v in np.unique(values):
            at = r[values == v]
            if len(at) >= min_points and (np.all(at > floor) or np.all(at < -floor)):
                side = "above" if at[0] > 0 else "below"
                out.append(Diagnostic("residual_signs", f"all {len(at)} points at {col}={v:g} lie {side} the "
                                      f"law, each by more than the median residual: the form misses a trend"))
    return out


def _wide_ci(law: Law, ci: dict[str, tuple[float, float]], level: float, max_ratio: float) -> list[Diagnostic]:
    out = []
    for name in law.exponent_names:
        lo, hi = ci[name]
        if not (lo > 0 or hi < 0):
            why = "includes 0"
        elif (ratio := hi / lo if lo > 0 else lo / hi) > max_ratio:
            why = f"spans a factor {ratio:.3g} (> {max_ratio:g})"
        else:
            continue
        out.append(Diagnostic("wide_ci", f"the {level:.0%} bootstrap interval of {name} "
                              f"[{lo:.3g}, {hi:.3g}] {why}"))
    return out
