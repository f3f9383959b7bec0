"""Benchmark: Chinchilla Approach-3 fit (4,500-start grid) and a 1,000-resample bootstrap.

scalinglaws (batched L-BFGS, vectorised objective, analytic gradient) against
  - plain: scipy.optimize.minimize(L-BFGS-B) per start / resample, numerical gradients,
    a pure-Python loop over the points for the loss (the straightforward implementation);
  - scipy+numpy: the same scipy loop with a vectorised numpy loss and analytic gradient.
The plain loop is timed on every `--subsample`-th start and resample and scaled up (it would
take many minutes in full; `--subsample 1` runs it all). The run goes on top of `--out`, above
the earlier ones; pin the BLAS threads (as `make bench` does), or scipy's small per-iteration BLAS calls
fight over the cores (bench/fit.md).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        .venv/bin/python bench/bench_fit.py [--subsample 20] [--repeats 3] [--out bench/fit.md]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
from record import machine, write_run
from scipy.optimize import minimize

from scalinglaws import ChinchillaLaw, bootstrap
from scalinglaws.bootstrap import resample_weights
from scalinglaws.laws.power import CHINCHILLA_GRID

DATA = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "chinchilla_epoch_svg_extracted.csv"
DELTA = 1e-3


def chinchilla_points() -> pd.DataFrame:
    df = pd.read_csv(DATA).rename(columns={"Model Size": "n_params"})
    df["data_size"] = df["Training FLOP"] / (6 * df["n_params"])
    return df[df.loss < df.loss.nlargest(5).min()].reset_index(drop=True)


def plain_loss(theta, log_n, log_d, log_y, weights) -> float:
    """Huber loss of one parameter vector, one point at a time in Python."""
    a, b, e, alpha, beta = theta
    total = 0.0
    for ln, ld, ly, w in zip(log_n, log_d, log_y, weights, strict=True):
        t1, t2 = a - alpha * ln, b - beta * ld
        top = max(t1, t2, e)
        r = ly - (top + math.log(math.exp(t1 - top) + math.exp(t2 - top) + math.exp(e - top)))
        total += w * (0.5 * r * r if abs(r) <= DELTA else DELTA * (abs(r) - 0.5 * DELTA))
    return total


def numpy_loss(theta, log_n, log_d, log_y, weights):
    """The same loss vectorised over points, with its analytic gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    total = w.sum(axis=0)
    r = log_y - (top + np.log(total))
    psi = np.clip(r, -DELTA, DELTA)
    p = w / total * (weights * psi)
    grad = -np.array([p[0].sum(), p[1].sum(), p[2].sum(), -(p[0] * log_n).sum(), -(p[1] * log_d).sum()])
    return float((weights * psi * (r - 0.5 * psi)).sum()), grad


def timed(fn):
    """(wall seconds, CPU seconds, result): the machine is shared, CPU time is the steadier."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def scipy_loop(loss, starts, weights_per_problem, args, jac: bool, options: dict):
    """One scipy minimize per (start, weights): timed(...) of the final objectives."""
    return timed(lambda: np.array([
        minimize(loss, x0, args=(*args, w), jac=jac, method="L-BFGS-B", options=options).fun
        for x0, w in zip(starts, weights_per_problem, strict=True)
    ]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subsample", type=int, default=20, help="time the plain loop on every k-th problem")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the scalinglaws timings (min reported)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--out", default="bench/fit.md")
    opts = ap.parse_args()
    load = os.getloadavg()

    df = chinchilla_points()
    n_rows = len(df)
    args = (np.log(df.n_params.to_numpy()), np.log(df.data_size.to_numpy()), np.log(df.loss.to_numpy()))
    print(f"load average at start: {load}; {n_rows} points, {len(CHINCHILLA_GRID)} starts")

    fit_runs = [timed(lambda: ChinchillaLaw(y="loss").fit(df)) for _ in range(opts.repeats)]
    fit_wall, fit_cpu, law = min(fit_runs, key=lambda r: r[0])
    boot_runs = [timed(lambda: bootstrap(law, df, n=opts.resamples, seed=42)) for _ in range(opts.repeats)]
    boot_wall, boot_cpu, boot = min(boot_runs, key=lambda r: r[0])
    print(f"scalinglaws grid fit: {fit_wall:.2f} s wall ({fit_cpu:.2f} s CPU), objective {law.loss_:.10f}, {law!r}")
    print(f"scalinglaws bootstrap x{opts.resamples}: {boot_wall:.2f} s wall ({boot_cpu:.2f} s CPU); "
          f"95% CI alpha {boot.params_ci()['alpha']}")

    ones = np.ones(n_rows)
    weights = resample_weights(n_rows, opts.resamples, np.random.default_rng(42))
    warm = np.repeat(law.theta_[None], opts.resamples, axis=0)
    k = opts.subsample
    rows = {"scalinglaws (batched)": (fit_wall, fit_cpu, boot_wall, boot_cpu)}
    for name, loss, jac in (("plain", plain_loss, False), ("scipy+numpy", numpy_loss, True)):
        step = k if name == "plain" else 1
        grid = CHINCHILLA_GRID[::step]
        f_wall, f_cpu, funs = scipy_loop(loss, grid, [ones] * len(grid), args, jac, {})
        # Bootstrap refits from the full-data optimum; ftol=0 so they do not stop at once.
        b_wall, b_cpu, _ = scipy_loop(loss, warm[::step], weights[::step], args, jac, {"ftol": 0.0})
        label = f"{name} (timed on 1/{step}, scaled)" if step > 1 else name
        rows[label] = (f_wall * step, f_cpu * step, b_wall * step, b_cpu * step)
        print(f"{name}: grid fit {f_wall:.1f} s on {len(grid)} starts, best objective {funs.min():.10f}; "
              f"bootstrap {b_wall:.1f} s on {len(warm[::step])} resamples")

    blas = " ".join(f"{v}={os.environ.get(v, 'unset')}"
                    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))
    lines = [
        f"# Fit benchmark: Chinchilla Approach 3, full grid + {opts.resamples:,}-resample bootstrap", "",
        f"- load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        f"- machine: {machine()}, Python {platform.python_version()}; {blas}",
        f"- command: `.venv/bin/python bench/bench_fit.py --subsample {k} "
        f"--repeats {opts.repeats} --resamples {opts.resamples}`",
        f"- workload: {n_rows} points, {len(CHINCHILLA_GRID)} starts (see Workload below); scalinglaws "
        f"rows: best wall time of {opts.repeats}; ratios of CPU seconds, the steadier number on a shared machine",
        "",
        f"| implementation | grid fit s (CPU s) | bootstrap x{opts.resamples} s (CPU s) | fit CPU ratio "
        "| bootstrap CPU ratio |",
        "|---|---|---|---|---|",
    ]
    for name, (f_wall, f_cpu, b_wall, b_cpu) in rows.items():
        lines.append(f"| {name} | {f_wall:.2f} ({f_cpu:.2f}) | {b_wall:.2f} ({b_cpu:.2f}) | "
                     f"{f_cpu / fit_cpu:.0f}x | {b_cpu / boot_cpu:.0f}x |")
    print("\n".join(lines[-len(rows) - 2:]))
    write_run(opts.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
