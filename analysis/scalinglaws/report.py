"""A report folder: fitted laws, intervals, extrapolation checks, plots, report.md, laws.json."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from scalinglaws.bootstrap import bootstrap
from scalinglaws.correlation import metric_correlation
from scalinglaws.diagnostics import diagnose
from scalinglaws.laws import FORMS, ChinchillaLaw, Law, SigmoidOfLoss
from scalinglaws.load import final_points
from scalinglaws.plots import plot_correlation, plot_fit, plot_isoflop, save_figure
from scalinglaws.summary import describe, json_default, law_summary
from scalinglaws.validate import holdout_largest

SIZE_FORMS = ("power", "chinchilla", "broken-power")


def slug(name: str) -> str:
    """A metric key as a file name: eval/val/loss -> eval_val_loss."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")


def size_law(points: pd.DataFrame, metric: str, x: Sequence[str], form: str = "auto") -> Law:
    """The law to fit `metric` against size. form="auto": Chinchilla when both x columns
    vary, else a power law in the one that does. Power and Chinchilla laws of a metric in
    [0, 1] that grows with the first input are fitted as increasing (on 1 - y)."""
    varying = [c for c in x if c in points.columns and points[c].nunique() > 1] or list(x[:1])
    if form == "auto":
        form = "chinchilla" if len(varying) >= 2 else "power"
    if form not in SIZE_FORMS:
        raise ValueError(f"form={form!r}; allowed for a size law: auto, {', '.join(SIZE_FORMS)}")
    cls = FORMS[form]
    cols = tuple(varying[: cls.n_inputs])
    if len(cols) < cls.n_inputs:
        raise ValueError(f"form {form!r} needs {cls.n_inputs} varying x columns; varying: {cols}")
    kw: dict[str, Any] = {}
    if form in ("power", "chinchilla"):
        vals = points[[cols[0], metric]].dropna()
        kw["increasing"] = bool(vals[metric].between(0, 1).all() and vals.corr("spearman").iloc[0, 1] > 0)
    return cls(cols if cls.n_inputs > 1 else cols[0], metric, **kw)


def write_report(
    df: pd.DataFrame,
    out_dir: str | Path,
    metrics: Sequence[str] | Mapping[str, Law],
    *,
    x: Sequence[str] = ("n_params", "data_size"),
    form: str = "auto",
    upstream: str | None = None,
    n_boot: int = 200,
    holdout: int = 0,
    level: float = 0.95,
    seed: int = 0,
    log_to_run: str | None = None,
    tracking_uri: str | None = None,
    winners: pd.DataFrame | None = None,
    log_prefix: str = "law",
) -> dict[str, Any]:
    """Fit each metric against size on the trials' final points, bootstrap it (`n_boot`
    resamples of trials), optionally hold out the `holdout` largest sizes, and plot it.
    `metrics` lists columns (laws chosen by `size_law` from x and form) or maps columns to
    laws (fitted here if unfitted). With `upstream` (a loss column), every other metric is
    also fitted as SigmoidOfLoss of it and correlated with it.

    Each law carries its diagnostics (diagnostics.py, with the bootstrap and hold-out).
    `winners` (from `select_best` / `final_points(best_of=...)`.attrs) adds the table of
    which hyperparameters won in each cell.

    Writes PNG+SVG plots, report.md and laws.json to out_dir and returns the laws.json
    content; `log_to_run` logs the folder as artifacts (under scalinglaws/<out_dir's name>/) of
    that MLflow run and each law's numbers as its metrics `<log_prefix>/<metric>/...` (publish.py).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points = final_points(df)
    missing = [c for c in [*metrics, *([upstream] if upstream else [])] if c not in points.columns]
    if missing:
        raise KeyError(f"metric column(s) {missing} not in data; available: {list(points.columns)}")
    intervals = f"{level:.0%} percentile bootstrap over {n_boot} resamples of trials" if n_boot else "none"
    summary: dict[str, Any] = {"n_trials": len(points), "laws": {}, "downstream": {}, "correlation": {}}
    md = [f"# Scaling-law report\n\n{len(points)} trials (final points); intervals: {intervals}.\n"]
    if winners is not None:
        summary["winners"] = winners.to_dict(orient="records")
        md += ["## Hyperparameter selection\n", _winners_table(winners)]

    for metric in metrics:
        law = metrics[metric] if isinstance(metrics, Mapping) else size_law(points, metric, x, form)
        summary["laws"][metric], lines = _size_section(law, points, out, n_boot, holdout, level, seed)
        md += [f"## {metric}\n", *lines]

    downstream = [m for m in metrics if upstream and m != upstream]
    if downstream:
        corr = metric_correlation(points, upstream, downstream, seed=seed)
        md += [f"## Downstream metrics vs {upstream}\n", _corr_table(corr)]
        for metric in downstream:
            summary["correlation"][metric] = {k: float(v) for k, v in corr.loc[metric].items()}
            sig = _try_fit(SigmoidOfLoss(upstream, metric), points)
            if sig is not None:
                summary["downstream"][metric] = law_summary(sig)
            md.append(_save(plot_correlation(points, upstream, metric, corr=corr.loc[metric], law=sig),
                            out, f"corr_{slug(metric)}"))

    (out / "laws.json").write_text(json.dumps(summary, indent=2, default=json_default))
    (out / "report.md").write_text("\n".join(md))
    if log_to_run:
        from scalinglaws.publish import log_report

        log_report(log_to_run, out, summary, tracking_uri, log_prefix)
    return summary


def _size_section(law: Law, points: pd.DataFrame, out: Path, n_boot: int, holdout: int, level: float,
                  seed: int) -> tuple[dict[str, Any], list[str]]:
    """Fit, bootstrap, hold out and plot one metric's size law: its summary and report lines."""
    if law.theta_ is None:
        law.fit(points)
    boot = bootstrap(law, points, n=n_boot, seed=seed) if n_boot else None
    ho = holdout_largest(law, points, k=holdout) if holdout else None
    law.diagnostics_ = diagnose(law, points, boot=boot, holdout=ho, level=level)
    summary = law_summary(law, boot, ho, level)
    stem = slug(law.y or "y")
    lines = [describe(law) + "\n", _params_table(summary), _diagnostics_list(summary["diagnostics"]),
             _save(plot_fit(law, points, boot=boot, level=level), out, f"fit_{stem}")]
    if ho:
        train = points[points[ho.x] < ho.table[ho.x].min()]
        ho_boot = bootstrap(ho.law, train, n=n_boot, seed=seed) if n_boot else None
        lines += [_holdout_table(ho.table, ho.x),
                  _save(plot_fit(ho.law, points, boot=ho_boot, holdout=ho, level=level), out, f"holdout_{stem}")]
    # Iso-FLOP curves need C = 6·N·D (a law in two model sizes, PaLI-style, has no such budget)
    # and both exponents positive (else more compute never helps and there is no optimum).
    if (isinstance(law, ChinchillaLaw) and not law.increasing and not law.x[1].startswith("n_params")
            and law.params["alpha"] > 0 and law.params["beta"] > 0):
        lines.append(_save(plot_isoflop(law, data=points), out, f"isoflop_{stem}"))
    return summary, lines


def _save(fig: Any, out: Path, stem: str) -> str:
    """Save a figure as PNG+SVG; the markdown line embedding it."""
    save_figure(fig, out, stem)
    return f"![{stem}]({stem}.png)\n"


def _try_fit(law: Law, data: pd.DataFrame) -> Law | None:
    """A sigmoid needs >= 4 usable points and some spread; skip it rather than fail the report."""
    try:
        return law.fit(data)
    except (ValueError, RuntimeError):
        return None


def _params_table(s: dict[str, Any]) -> str:
    rows = ["| param | value | CI |", "|---|---|---|"]
    for k, v in s["params"].items():
        ci = s["ci"].get(k)
        rows.append(f"| {k} | {v:.4g} | " + (f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "") + " |")
    return "\n".join(rows) + f"\n\nobjective {s['loss']:.4g} on {s['n_points']} points\n"


def _diagnostics_list(diagnostics: list[dict[str, str]]) -> str:
    if not diagnostics:
        return "Diagnostics: none fired.\n"
    return "Diagnostics (do not believe this law before reading them):\n\n" + "\n".join(
        f"- `{d['code']}`: {d['message']}" for d in diagnostics) + "\n"


def _winners_table(winners: pd.DataFrame) -> str:
    cols = list(winners.columns)
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |"
             for r in winners.itertuples(index=False)]
    return "Best trial per cell; `unbracketed` names the columns whose best value is an end of the sweep:\n\n" \
        + "\n".join(rows) + "\n"


def _holdout_table(table: pd.DataFrame, x: str) -> str:
    cols = list(table.columns)
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(f"{v:.4g}" for v in r) + " |" for r in table.itertuples(index=False)]
    return f"Extrapolation to the held-out largest {x}:\n\n" + "\n".join(rows) + "\n"


def _corr_table(corr: pd.DataFrame) -> str:
    rows = ["| metric | n | Pearson r [CI] | Spearman ρ [CI] |", "|---|---|---|---|"]
    for metric, r in corr.iterrows():
        rows.append(f"| {metric} | {r['n']:.0f} | {r['pearson']:.3f} [{r['pearson_lo']:.3f}, {r['pearson_hi']:.3f}] "
                    f"| {r['spearman']:.3f} [{r['spearman_lo']:.3f}, {r['spearman_hi']:.3f}] |")
    return "\n".join(rows) + "\n"
