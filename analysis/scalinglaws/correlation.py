"""Does upstream loss predict a downstream metric? Pearson and Spearman with bootstrap CIs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (B, n) arrays."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))


def metric_correlation(
    df: pd.DataFrame,
    upstream: str,
    downstream_cols: Sequence[str],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int | None = 0,
) -> pd.DataFrame:
    """One row per downstream column: n, pearson, spearman and their percentile bootstrap
    intervals (pearson_lo/hi, spearman_lo/hi), resampling rows where both are present."""
    rng = np.random.default_rng(seed)
    tails = [(1 - level) / 2, (1 + level) / 2]
    rows = []
    for col in downstream_cols:
        both = df[[upstream, col]].dropna().to_numpy(dtype=float)
        x, y = both[:, 0], both[:, 1]
        idx = rng.integers(0, len(x), size=(n_boot, len(x)))
        xb, yb = x[idx], y[idx]
        pearson_b = _pearson(xb, yb)
        spearman_b = _pearson(rankdata(xb, axis=1), rankdata(yb, axis=1))
        row = {"metric": col, "n": len(x),
               "pearson": float(_pearson(x, y)), "spearman": float(_pearson(rankdata(x), rankdata(y)))}
        for name, boot in (("pearson", pearson_b), ("spearman", spearman_b)):
            row[f"{name}_lo"], row[f"{name}_hi"] = np.nanquantile(boot, tails) if len(x) > 2 else (np.nan, np.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index("metric")
