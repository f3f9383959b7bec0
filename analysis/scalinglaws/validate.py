"""Extrapolation check: fit on the smaller sizes, predict the largest ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scalinglaws.laws.base import Law


@dataclass
class Holdout:
    law: Law  # fitted on the rows below the held-out sizes
    x: str  # the size column that was split on
    table: pd.DataFrame  # held-out rows: law.x columns, actual, predicted, rel_error

    @property
    def mean_abs_rel_error(self) -> float:
        return float(self.table["rel_error"].abs().mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "k": int(self.table[self.x].nunique()),
            "mean_abs_rel_error": self.mean_abs_rel_error,
            "points": self.table.to_dict(orient="records"),
        }


def holdout_largest(law: Law, df: pd.DataFrame, x: str | None = None, k: int = 1, y: str | None = None) -> Holdout:
    """Hold out every row whose `x` (default: the law's first input) is among the k largest
    distinct values, fit a fresh copy of `law` on the rest, and report per held-out point
    the relative error (predicted - actual) / actual."""
    x = x or law.x[0]
    if x not in df.columns:
        raise KeyError(f"column {x!r} not in data; available: {list(df.columns)}")
    sizes = np.sort(df[x].dropna().unique())
    if not 1 <= k < len(sizes):
        raise ValueError(f"k={k}: need 1 <= k < {len(sizes)} (the number of distinct {x} values)")
    held = df[x] >= sizes[-k]
    fitted = law.clone().fit(df[~held], y)
    test = df[held]
    X, actual = fitted.xy(test, y)
    table = test.loc[fitted.usable(test, y), list(dict.fromkeys([*fitted.x, x]))].reset_index(drop=True)
    table["actual"] = actual
    table["predicted"] = fitted.predict(X)
    table["rel_error"] = (table["predicted"] - table["actual"]) / table["actual"]
    return Holdout(law=fitted, x=x, table=table)
