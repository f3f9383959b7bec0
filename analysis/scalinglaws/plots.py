"""Figures: fitted laws with bootstrap bands, iso-FLOP curves, upstream-vs-downstream scatter.

matplotlib is imported inside the functions (so `import scalinglaws` stays light) and
figures are `matplotlib.figure.Figure` objects rendered by Agg on save: no pyplot, no
global backend switch, safe in notebooks and on headless machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scalinglaws.bootstrap import BootstrapResult
from scalinglaws.derived import compute_optimal
from scalinglaws.laws import ChinchillaLaw, Law
from scalinglaws.validate import Holdout

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LABELS = {"n_params": "parameters N", "n_params_nonembedding": "non-embedding parameters N",
          "data_size": "data size D", "data_seen": "data seen D", "flops": "compute C (FLOPs)"}
SYMBOLS = {"alpha": "α", "beta": "β"}


def _label(col: str) -> str:
    return f"{LABELS[col]} ({col})" if col in LABELS else col


def _figure(ncols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0 * ncols, 4.5), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write `stem`.png (150 dpi) and `stem`.svg into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths


def _groups(values: np.ndarray, max_groups: int = 6) -> tuple[np.ndarray, np.ndarray, bool]:
    """Group index per value, a representative value per group, and whether they are bins:
    the distinct values, or, when there are too many (continuous D), log-spaced bins
    represented by their geometric means."""
    distinct = np.unique(values)
    if len(distinct) <= max_groups:
        return np.searchsorted(distinct, values), distinct, False
    edges = np.geomspace(values.min(), values.max(), max_groups + 1)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max_groups - 1)
    used = np.unique(idx)
    reps = np.array([np.exp(np.log(values[idx == g]).mean()) for g in used])
    return np.searchsorted(used, idx), reps, True


def _param_text(law: Law) -> str:
    return "  ".join(f"{SYMBOLS.get(k, k)}={v:.3g}" for k, v in law.params.items())


def plot_fit(
    law: Law,
    data: pd.DataFrame,
    *,
    boot: BootstrapResult | None = None,
    holdout: Holdout | None = None,
    level: float = 0.9,
) -> Figure:
    """Observed points and the fitted law (with a bootstrap band at `level` when given).

    Two-input laws get two panels: y vs the first input with one curve per value (or log
    bin) of the second, and the converse. Held-out rows of `holdout` are drawn hollow.
    """
    X, y = law.xy(data)
    held = np.zeros(len(y), dtype=bool)
    if holdout is not None:
        held = (data[holdout.x] >= holdout.table[holdout.x].min()).to_numpy()[law.usable(data)]
    fig, axes = _figure(law.n_inputs)
    for along, ax in enumerate(axes):
        _panel(ax, law, X, y, held, along, boot, level)
    held_note = f", held out: largest {holdout.x}" if holdout else ""
    fig.suptitle(f"{law.y}: {law.name} law{held_note}\n{_param_text(law)}", fontsize=11)
    return fig


def _panel(ax: Axes, law: Law, X: np.ndarray, y: np.ndarray, held: np.ndarray, along: int,
           boot: BootstrapResult | None, level: float) -> None:
    from matplotlib import colormaps

    x = X[:, along]
    log_x = law.log_space
    if law.n_inputs == 1:
        group, reps, binned = np.zeros(len(x), dtype=int), np.array([np.nan]), False
    else:
        group, reps, binned = _groups(X[:, 1 - along])
    colors = colormaps["viridis"](np.linspace(0.0, 0.9, len(reps)))
    other = law.x[1 - along] if law.n_inputs == 2 else None
    for g, (rep, color) in enumerate(zip(reps, colors, strict=True)):
        label = f"{other}{'≈' if binned else '='}{rep:.3g}" if other else "fit"
        mine = group == g
        lo, hi = x[mine].min(), x[mine].max()  # draw each curve over its own points only
        grid = np.geomspace(lo / 1.2, hi * 1.2, 200) if log_x else np.linspace(lo, hi, 200)
        fixed = np.full_like(grid, rep)
        inputs: tuple[Any, ...] = (grid,) if other is None else (grid, fixed) if along == 0 else (fixed, grid)
        if boot is not None:
            band = boot.predict_ci(inputs, level)
            ax.fill_between(grid, band["lo"], band["hi"], color=color, alpha=0.2, lw=0)
        ax.plot(grid, law.predict(*inputs), color=color, lw=1.5, label=label)
        ax.scatter(x[mine & ~held], y[mine & ~held], color=color, s=18, zorder=3)
        ax.scatter(x[mine & held], y[mine & held], facecolors="none", edgecolors=color,
                   s=60, linewidths=1.5, marker="D", zorder=3)
    if held.any():
        ax.scatter([], [], facecolors="none", edgecolors="k", marker="D", s=60, label="held out")
    if boot is not None:
        ax.fill_between([], [], [], color="gray", alpha=0.2, label=f"{level:.0%} bootstrap band")
    if log_x:
        ax.set_xscale("log")
    bounded = getattr(law, "increasing", False) or not law.log_space
    if not bounded and y.max() / y.min() > 10:
        ax.set_yscale("log")
        ax.set_ylim(y.min() / 1.5, y.max() * 1.5)
    else:  # limits from the data: a wide band far from it must not squash the points
        pad = 0.08 * np.ptp(y) or 0.05 * abs(y.max()) or 0.05
        ax.set_ylim(y.min() - pad, y.max() + pad)
    ax.set_xlabel(_label(law.x[along]))
    ax.set_ylabel(law.y or "y")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: hides no point


def plot_isoflop(law: ChinchillaLaw, budgets: np.ndarray | None = None, data: pd.DataFrame | None = None) -> Figure:
    """Predicted y along iso-FLOP lines C = 6 N D, with each line's optimum (star) and the
    compute-optimal frontier. Budgets default to 5 values spanning the data's 6 N D."""
    from matplotlib import colormaps

    if budgets is None:
        if data is None:
            raise ValueError("plot_isoflop: give budgets or data")
        flops = 6.0 * law.design(data).prod(axis=1)
        budgets = np.geomspace(*np.quantile(flops, [0.05, 0.95]), 5)
    budgets = np.asarray(budgets, dtype=float)
    opt = compute_optimal(law, budgets)
    n_col = law.x[0]
    fig, (ax,) = _figure()
    colors = colormaps["plasma"](np.linspace(0.0, 0.85, len(budgets)))
    for c, (_, row), color in zip(budgets, opt.iterrows(), colors, strict=True):
        n = row[n_col] * np.geomspace(1 / 30, 30, 200)
        ax.plot(n, law.predict(n, c / (6.0 * n)), color=color, label=f"C={c:.2g}")
        ax.scatter([row[n_col]], [row["predicted"]], color=color, marker="*", s=120, zorder=3)
    ax.plot(opt[n_col], opt["predicted"], "k--", lw=1, label="compute-optimal N*(C)")
    ax.set_xscale("log")
    ax.set_xlabel(_label(n_col))
    ax.set_ylabel(law.y or "y")
    ax.set_title(f"iso-FLOP curves of the fitted {law.name} law")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_correlation(
    df: pd.DataFrame,
    upstream: str,
    downstream: str,
    *,
    corr: pd.Series | None = None,
    law: Law | None = None,
    color_by: str = "n_params",
) -> Figure:
    """downstream vs upstream, coloured by log10(color_by) when present; `corr` (a row of
    metric_correlation) is annotated and `law` (e.g. SigmoidOfLoss) drawn over the points."""
    fig, (ax,) = _figure()
    both = df.dropna(subset=[upstream, downstream])
    if color_by in both.columns and (both[color_by] > 0).all():
        sc = ax.scatter(both[upstream], both[downstream], c=np.log10(both[color_by].astype(float)),
                        cmap="viridis", s=22)
        fig.colorbar(sc, ax=ax, label=f"log10 {color_by}")
    else:
        ax.scatter(both[upstream], both[downstream], s=22)
    if law is not None:
        grid = np.linspace(both[upstream].min(), both[upstream].max(), 200)
        ax.plot(grid, law.predict(grid), "k-", lw=1.5, label=f"{law.name}: {_param_text(law)}")
        ax.legend(fontsize=8)
    if corr is not None:
        text = "\n".join(f"{label} = {corr[k]:.3f} [{corr[k + '_lo']:.3f}, {corr[k + '_hi']:.3f}]"
                         for label, k in (("Pearson r", "pearson"), ("Spearman ρ", "spearman")))
        ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax.set_xlabel(upstream)
    ax.set_ylabel(downstream)
    ax.set_title(f"{downstream} vs {upstream}")
    ax.grid(True, alpha=0.3)
    return fig
