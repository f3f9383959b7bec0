"""Per-cell selection over swept hyperparameters: the best trial of each cell.

A study that sweeps hyperparameters (lr, batch_size, ...) has several trials per cell of its
other axes (size, data size, objective, seed, ...). A scaling law is fitted to the best
trial of each cell: the frontier the hyperparameters can reach.

The cell is every column that varies across the trials, except the swept ones, the metric
`by`, identity columns (run_id, parent_run_id, trial_id, status, outcome, data_seen) and
metric columns (keys with a "/": train/..., eval/...). Columns that only restate the others
(n_params given size, flops given size and data size) are dropped from the cell's name; they
do not change the grouping. A frame whose metrics lack the "/" names its cell with `cell=`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

IDENTITY = frozenset({"run_id", "parent_run_id", "trial_id", "status", "outcome", "data_seen"})
# The platform's trial axes, in the order a cell is named by (the rest follow in frame order).
AXES = ("family", "size", "size_enc", "size_dec", "data_size", "objective", "technique", "mixture", "seed")


def cell_columns(points: pd.DataFrame, exclude: Sequence[str]) -> list[str]:
    """The columns naming a cell (see the module docstring)."""
    candidates = [c for c in points.columns if c not in IDENTITY and c not in exclude and "/" not in str(c)
                  and points[c].nunique(dropna=False) > 1]
    candidates.sort(key=lambda c: AXES.index(c) if c in AXES else len(AXES))
    cells: list[str] = []
    for col in candidates:  # keep a column only if it splits the cells further
        before = points.groupby(cells, dropna=False).ngroups if cells else 1
        if points.groupby([*cells, col], dropna=False).ngroups > before:
            cells.append(col)
    return cells


def select_best(
    points: pd.DataFrame,
    best_of: Sequence[str],
    by: str = "eval/id/loss",
    mode: str = "min",
    *,
    cell: Sequence[str] | None = None,
    swept: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The best row of `points` (one row per trial) per cell by `by` (`mode` "min" or "max").

    Returns (selected, winners). selected: the winning rows, in the order of `points`.
    winners: per cell, its cell columns, the winning values of `best_of`, `by`, `candidates`
    (the trials compared) and `unbracketed` (the best_of columns whose winning value is the
    smallest or largest swept, comma-separated). `cell` overrides the cell columns.
    The swept values of a column are those of the trials in `swept` (default `points`) that
    share the cell and the winner's other best_of values; with at least two of them, a
    winner at an end gets a warning: the optimum may lie beyond the sweep.
    """
    best_of = list(best_of)
    _check(points, best_of, by, mode, cell)
    cells = list(cell) if cell is not None else cell_columns(points, [*best_of, by])
    scored = points[points[by].notna()]
    if len(scored) < len(points):
        name = "trial_id" if "trial_id" in points.columns else None
        unscored = points.loc[points[by].isna(), name].tolist() if name else []
        warnings.warn(f"{len(points) - len(scored)} trial(s) without {by} are not candidates"
                      + (": " + ", ".join(map(str, unscored)) if unscored else ""), stacklevel=2)
    score = scored[by] if mode == "min" else -scored[by]
    groups = score.groupby([scored[c] for c in cells], dropna=False) if cells else score.groupby(lambda _: 0)
    best = scored.loc[groups.idxmin().to_numpy()]  # in cell order
    winners = best[[*cells, *best_of, by]].reset_index(drop=True)
    winners["candidates"] = groups.size().to_numpy()
    swept = points if swept is None else swept
    winners["unbracketed"] = [",".join(_unbracketed(row, swept, cells, best_of, by)) for _, row in best.iterrows()]
    return scored.loc[best.index.sort_values()].reset_index(drop=True), winners


def _check(points: pd.DataFrame, best_of: list[str], by: str, mode: str, cell: Sequence[str] | None) -> None:
    if not best_of:
        raise ValueError("best_of: name at least one swept column, e.g. ['lr']")
    for what, cols in (("best_of", best_of), ("by", [by]), ("cell", list(cell or []))):
        missing = [c for c in cols if c not in points.columns]
        if missing:
            raise KeyError(f"{what}: column(s) {missing} not found; available: {', '.join(map(str, points.columns))}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r}; allowed: min (lower {by} is better), max")
    if not pd.api.types.is_numeric_dtype(points[by]):
        raise ValueError(f"by: column {by!r} is not numeric")


def _unbracketed(winner: pd.Series, swept: pd.DataFrame, cells: list[str], best_of: list[str], by: str) -> list[str]:
    """The best_of columns whose winning value is an end of the values swept around it (warned)."""
    out = []
    for col in best_of:
        line = swept[_same(swept, winner, [*cells, *(c for c in best_of if c != col)])]
        values = np.sort(line[col].dropna().unique())
        if len(values) < 2 or values[0] < winner[col] < values[-1]:
            continue
        out.append(col)
        where = ", ".join(f"{c}={_fmt(winner[c])}" for c in cells) or "the only cell"
        side = "largest" if winner[col] == values[-1] else "smallest"
        warnings.warn(f"the sweep did not bracket the optimum at {where}: best {col} {_fmt(winner[col])} is the "
                      f"{side} swept ({len(values)} values, by {by})", stacklevel=3)
    return out


def _same(frame: pd.DataFrame, row: pd.Series, cols: list[str]) -> pd.Series:
    """Rows of `frame` equal to `row` on `cols` (NaN equal to NaN)."""
    mask = pd.Series(True, index=frame.index)
    for c in cols:
        mask &= frame[c].eq(row[c]) | (frame[c].isna() & pd.isna(row[c]))
    return mask


def _fmt(v: object) -> str:
    """Numbers short (1e6, 3e-4, 0.003), labels as they are."""
    if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        return re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{v:g}")
    return str(v)
