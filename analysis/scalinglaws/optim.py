"""Batched L-BFGS: minimise many small independent problems in lock-step.

A multi-start fit (4,500 starts for the Chinchilla grid) or a bootstrap (1,000 refits) is
thousands of tiny 3-6 parameter problems. Running scipy once per problem spends nearly all
its time in Python overhead; here every iteration evaluates all still-active problems in
one vectorised call, so the cost is a few hundred numpy passes instead of ~10^5 calls.

The algorithm per problem is plain L-BFGS (two-loop recursion, memory `memory`) with a
backtracking Armijo line search. A problem stops when max|g| <= gtol, when no step along
its search direction decreases f, or after maxiter iterations. scipy's relative-decrease
rule (f_k - f_k+1 <= ftol max(|f_k|, |f_k+1|, 1)) is available but off by default: it is an
absolute test for f < 1, which stops early when the objective is small (a mean instead of
a sum over points, see shared/data/README.md; a near-exact fit such as the BNSL 4-digit
addition curve, whose summed squared log error is ~2.5e-6), and it stops warm-started
bootstrap refits before they have moved. Running to no-decrease costs ~1.4x the
iterations and gives the same or lower optima.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# fun(x, idx) -> (f, g): objective values (s,) and gradients (s, k) of problems idx at x (s, k).
BatchObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class BatchResult:
    x: np.ndarray  # (S, k) final points
    fun: np.ndarray  # (S,) final objective values (inf where the start was not finite)
    nit: np.ndarray  # (S,) iterations taken
    converged: np.ndarray  # (S,) stopped by a rule (False: hit maxiter or non-finite start)


def _direction(g: np.ndarray, s: np.ndarray, y: np.ndarray, rho: np.ndarray, gamma: np.ndarray,
               newest_first: list[int]) -> np.ndarray:
    """-H g by the two-loop recursion over history slots `newest_first`; rho=0 marks a slot
    holding no (or a skipped) pair, which the recursion then passes over unchanged."""
    q = g.copy()
    alpha = {}
    for j in newest_first:
        alpha[j] = rho[:, j] * (s[:, j] * q).sum(axis=1)
        q -= alpha[j][:, None] * y[:, j]
    r = gamma[:, None] * q
    for j in reversed(newest_first):
        beta = rho[:, j] * (y[:, j] * r).sum(axis=1)
        r += s[:, j] * (alpha[j] - beta)[:, None]
    return -r


def minimize_batched(*args, **kwargs) -> BatchResult:
    """`_minimize_batched` with floating-point warnings silenced: starts that overflow or
    divide by zero are expected in a wide grid and are dropped (non-finite objective)."""
    with np.errstate(all="ignore"):
        return _minimize_batched(*args, **kwargs)


def _minimize_batched(
    fun: BatchObjective,
    x0: np.ndarray,
    *,
    maxiter: int = 1000,
    memory: int = 10,
    ftol: float = 0.0,
    gtol: float = 1e-5,
    max_backtracks: int = 30,
) -> BatchResult:
    """Minimise the S problems `fun(x, idx)` from starts `x0` (S, k), all at once.

    State is kept only for the still-active problems (`ids`), compacted as they finish;
    the history is a ring buffer shared by all of them (slot = iteration mod memory).
    """
    x_out = np.array(x0, dtype=float)
    n_problems, k = x_out.shape
    f_out, g = fun(x_out, np.arange(n_problems))
    f_out = np.where(np.isfinite(f_out), f_out, np.inf)
    nit = np.zeros(n_problems, dtype=int)
    converged = np.isfinite(f_out) & (np.abs(g).max(axis=1) <= gtol)

    ids = np.flatnonzero(np.isfinite(f_out) & ~converged)
    x, f, g = x_out[ids], f_out[ids], g[ids]
    s_hist = np.zeros((ids.size, memory, k))
    y_hist = np.zeros((ids.size, memory, k))
    rho = np.zeros((ids.size, memory))
    gamma = 1.0 / np.maximum(np.linalg.norm(g, axis=1), 1e-12)  # first step: unit length, as scipy

    for it in range(maxiter):
        if ids.size == 0:
            break
        d = _direction(g, s_hist, y_hist, rho, gamma, [(it - 1 - j) % memory for j in range(memory)])
        slope = (d * g).sum(axis=1)
        uphill = ~(slope < 0)  # not a descent direction: forget the history, go straight down
        if uphill.any():
            rho[uphill] = 0.0
            d[uphill] = -g[uphill] / np.linalg.norm(g[uphill], axis=1, keepdims=True)
            slope[uphill] = (d[uphill] * g[uphill]).sum(axis=1)

        step = np.ones(ids.size)
        x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
        todo = np.arange(ids.size)
        for _ in range(max_backtracks):
            x_try = x[todo] + step[todo, None] * d[todo]
            f_try, g_try = fun(x_try, ids[todo])
            ok = np.isfinite(f_try) & (f_try <= f[todo] + 1e-4 * step[todo] * slope[todo])
            x_new[todo[ok]], f_new[todo[ok]], g_new[todo[ok]] = x_try[ok], f_try[ok], g_try[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
            step[todo] *= 0.5
        failed = np.zeros(ids.size, dtype=bool)
        failed[todo] = True  # no step decreases f: a (possibly non-smooth) minimum

        s_new, y_new = x_new - x, g_new - g
        sy, yy = (s_new * y_new).sum(axis=1), (y_new * y_new).sum(axis=1)
        curv = ~failed & (sy > 1e-10 * yy)  # keep only pairs with positive curvature
        slot = it % memory
        s_hist[:, slot], y_hist[:, slot] = s_new, y_new
        rho[:, slot] = np.where(curv, 1.0 / np.where(curv, sy, 1.0), 0.0)
        gamma = np.where(curv, sy / np.where(curv, yy, 1.0), gamma)

        scale = np.maximum(np.maximum(np.abs(f), np.abs(f_new)), 1.0)
        done = failed | (f - f_new <= ftol * scale) | (np.abs(g_new).max(axis=1) <= gtol)
        x, f, g = x_new, f_new, g_new
        nit[ids] += 1
        if done.any():
            x_out[ids[done]], f_out[ids[done]] = x[done], f[done]
            converged[ids[done]] = True
            keep = ~done
            ids, x, f, g, gamma = ids[keep], x[keep], f[keep], g[keep], gamma[keep]
            s_hist, y_hist, rho = s_hist[keep], y_hist[keep], rho[keep]

    x_out[ids], f_out[ids] = x, f  # still active: hit maxiter
    return BatchResult(x=x_out, fun=f_out, nit=nit, converged=converged)
