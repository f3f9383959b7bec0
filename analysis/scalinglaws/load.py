"""Study results as a tidy DataFrame: one row per (trial, eval point).

Reads the platform's MLflow layout: experiment = study, one parent run tagged
reliscale.role=study, one child run per trial tagged reliscale.role=trial with
mlflow.parentRunId and reliscale.trial_id; params are the trial's axes and sizes, metrics
(`train/...`, `eval/<split>/<metric>`) are stepped by data seen (examples or tokens).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reliscale.tracking.schema import DIVERGED, OUTCOME, PARENT, PRUNED, ROLE, TRIAL, TRIAL_ID
from scalinglaws.select import select_best

# Params that name things; every other param becomes numeric when all its values parse.
LABEL_PARAMS = frozenset(
    {"trial_id", "family", "size", "size_enc", "size_dec", "data_unit", "task",
     "objective", "technique", "mixture", "precision", "base_trial", "init_from", "downstream"}
)
LEFT_OUT = (DIVERGED, PRUNED)  # outcomes of trials stopped before their budget (ASHA prunes)


def load_study(experiment: str, tracking_uri: str | None = None, role: str = TRIAL) -> pd.DataFrame:
    """All trials of study `experiment` (with `role="finetune"`, its fine-tunes instead: their
    params add the pretrained trial's `base_trial` and, for downstream fine-tunes,
    `pretrain_data_size`): columns run_id, parent_run_id, status, outcome
    ("diverged" for a trial the platform stopped on a non-finite loss, "pruned" for one a
    scheduler stopped early, else NaN), the trial
    params, data_seen (the metric step) and one column per metric key (NaN where a key was
    not logged at that step). A (key, step) logged twice keeps its last value."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}")
    runs = _trial_runs(client, exp.experiment_id, role)
    if not runs:
        raise LookupError(f"experiment {experiment!r} has no {role} runs (tag {ROLE}={role})")
    params = _params_frame(runs)
    values = _metrics_frame(client, runs)
    metric_cols = sorted(values.columns.difference(["run_id", "data_seen"]), key=_metric_order)
    df = params.merge(values[["run_id", "data_seen", *metric_cols]], on="run_id", how="left")
    return df.sort_values(["trial_id", "data_seen"], ignore_index=True)


def _trial_runs(client: Any, experiment_id: str, role: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{ROLE}` = '{role}'", max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _params_frame(runs: list[Any]) -> pd.DataFrame:
    """One row per run: ids, status and params (numeric where every value parses)."""
    params = pd.DataFrame([
        {"run_id": r.info.run_id, "parent_run_id": r.data.tags.get(PARENT), "status": r.info.status,
         "outcome": r.data.tags.get(OUTCOME, np.nan), **r.data.params,
         "trial_id": r.data.params.get("trial_id", r.data.tags.get(TRIAL_ID))}
        for r in runs
    ])
    for col in params.columns.difference(["run_id", "parent_run_id", "status", "outcome", *LABEL_PARAMS]):
        params[col] = _maybe_numeric(params[col])
    return params


def _metrics_frame(client: Any, runs: list[Any]) -> pd.DataFrame:
    """One row per (run, step), one column per metric key; the last logged value wins."""
    history = [
        (r.info.run_id, key, m.step, m.timestamp, m.value)
        for r in runs
        for key in r.data.metrics
        for m in client.get_metric_history(r.info.run_id, key)
    ]
    values = (
        pd.DataFrame(history, columns=["run_id", "key", "data_seen", "timestamp", "value"])
        .sort_values("timestamp", kind="stable")
        .drop_duplicates(["run_id", "key", "data_seen"], keep="last")
        .pivot(index=["run_id", "data_seen"], columns="key", values="value")
        .reset_index()
    )
    values.columns.name = None
    return values


def _maybe_numeric(col: pd.Series) -> pd.Series:
    """Numbers if every logged value parses (MLflow stores params as strings)."""
    col = col.replace({"None": np.nan, "": np.nan})
    num = pd.to_numeric(col, errors="coerce")
    return num if num.notna().sum() == col.notna().sum() else col


def _metric_order(key: str) -> tuple[int, str]:
    return (0 if key.startswith("train/") else 1 if key.startswith("eval/") else 2, key)


def trial_key(df: pd.DataFrame) -> str | None:
    """The column identifying a trial: run_id, else trial_id, else None (a row per trial)."""
    return next((c for c in ("run_id", "trial_id") if c in df.columns), None)


def subset(df: pd.DataFrame, where: Mapping[str, object]) -> pd.DataFrame:
    """The rows whose column `col` holds `value`, for every (col, value) of `where`, e.g. one
    technique of a study: `subset(df, {"technique": "gp"})`. Numeric columns compare as numbers
    (seed=0 matches 0.0), others as text. A column missing or a value no row has is a
    ValueError naming the values there are."""
    for col, value in where.items():
        if col not in df.columns:
            raise ValueError(f"{col}={value}: no column {col!r}; available: {', '.join(map(str, df.columns))}")
        values = df[col]
        numeric = pd.api.types.is_numeric_dtype(values)
        try:
            keep = values == float(value) if numeric else values.astype(str) == str(value)
        except ValueError:
            keep = pd.Series(False, index=values.index)  # text asked of a numeric column
        if not keep.any():
            have = sorted(values.dropna().unique().tolist())
            raise ValueError(f"{col}={value}: no rows have it; values: {', '.join(map(str, have))}")
        df = df[keep]
    return df.reset_index(drop=True)


def final_points(
    df: pd.DataFrame, best_of: Sequence[str] | None = None, by: str = "eval/id/loss", mode: str = "min"
) -> pd.DataFrame:
    """One row per trial at its largest data_seen, each metric at its last logged value
    (so metrics logged at slightly different steps still land on the same row).
    Frames without data_seen or a trial column are already one row per trial.

    Only trials that trained their whole budget have a final point: where the frame says
    (`load_study`'s status and outcome columns), trials still running, failed, diverged or
    pruned are left out with a warning naming them; their last point belongs to a smaller
    data size than their data_size says.

    With `best_of` (swept columns, e.g. ["lr"]), only the best trial of each cell by `by`
    (`mode` "min" or "max") is kept: see `select.select_best`. Diverged and pruned trials
    still count as swept values (each says the loss there is worse), so a diverged largest
    lr brackets the optimum. The winners table is on `.attrs["winners"]` as records.
    """
    key = trial_key(df)
    if key is None or "data_seen" not in df.columns:
        every, points = df.reset_index(drop=True), df.reset_index(drop=True)
    else:
        every, points = _last(df, key), _last(_trained_through(df, key), key)
    if best_of is None:
        return points
    swept = every
    if key is not None:
        told = every["outcome"].isin(LEFT_OUT) if "outcome" in every.columns else False
        swept = every[told | every[key].isin(points[key])]
    selected, winners = select_best(points, best_of, by, mode, swept=swept)
    selected.attrs["winners"] = winners.to_dict(orient="records")
    return selected


def _last(df: pd.DataFrame, key: str) -> pd.DataFrame:
    ordered = df.sort_values([key, "data_seen"], kind="stable")
    return ordered.groupby(key, as_index=False, sort=False, dropna=False).last().reset_index(drop=True)


def _trained_through(df: pd.DataFrame, key: str) -> pd.DataFrame:
    keep = pd.Series(True, index=df.index)
    if "status" in df.columns:
        keep &= df["status"].fillna("FINISHED").eq("FINISHED")
    if "outcome" in df.columns:
        keep &= ~df["outcome"].isin(LEFT_OUT)
    if keep.all():
        return df
    name = "trial_id" if "trial_id" in df.columns else key
    left = df.loc[~keep].drop_duplicates(key)
    why = [f"{row[name]} ({row['outcome'] if row.get('outcome') in LEFT_OUT else row.get('status')})"
           for _, row in left.iterrows()]
    warnings.warn(f"{len(why)} trial(s) left out of the final points, not trained through their budget: "
                  + ", ".join(why), stacklevel=3)
    return df.loc[keep]


def from_csv(path: str | Path) -> pd.DataFrame:
    """A results table saved as CSV (e.g. `load_study(...).to_csv(path, index=False)`)."""
    return pd.read_csv(path)
