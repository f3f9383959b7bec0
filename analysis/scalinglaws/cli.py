"""Command line: `python -m scalinglaws fit ...`; `reliscale fit ...` calls `main(argv)`.

  fit --experiment NAME [--tracking-uri URI] [--role trial|finetune] [--where COL=VALUE ...]
      --metric M [--x n_params,data_size] [--form F]
      [--best-of lr[,batch_size] [--by COL] [--by-mode min|max]]
      [--bootstrap K] [--holdout-largest K] [--report DIR [--no-log]] [--json]
  fit --csv FILE --x COLS --y COL --form F [--best-of COLS ...] [--json]

A study is fitted on its trials' final points; a CSV on its rows as they are; --where keeps
the rows of one value of a column (e.g. technique=gp), and may repeat. With
--best-of, only the best trial (by --by, default the fitted metric) of each cell of the
other axes is fitted, and the winners are printed (and in the JSON under "selection").
The law's diagnostics (diagnostics.py) are one `warning:` line each on stderr and a list in
the JSON. A study's --report is also logged to its parent MLflow run unless --no-log.
Bad input exits with status 2 and a message naming the option, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import pandas as pd

from scalinglaws.bootstrap import bootstrap
from scalinglaws.diagnostics import diagnose
from scalinglaws.laws import FORMS, Law
from scalinglaws.load import final_points, from_csv, load_study, subset
from scalinglaws.publish import metric_key, study_run
from scalinglaws.select import select_best
from scalinglaws.summary import describe, json_default, law_summary
from scalinglaws.validate import holdout_largest

DEFAULT_X = {"chinchilla": "n_params,data_size", "power": "n_params", "broken-power": "data_size"}
# Fine-tunes all see one downstream data size: their data axis is the pretraining's.
FINETUNE_X = {"chinchilla": "n_params,pretrain_data_size", "power": "n_params", "broken-power": "pretrain_data_size"}


class UsageError(Exception):
    """Bad command-line input: reported as `error: <option>: <why>` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalinglaws", description="Fit scaling laws to study results.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a law to a study (MLflow) or a CSV")
    src = fit.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", metavar="NAME", help="MLflow experiment (= study name)")
    src.add_argument("--csv", type=Path, metavar="FILE", help="a CSV table, one row per point")
    fit.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: MLflow's own default)")
    fit.add_argument("--role", choices=["trial", "finetune"], default="trial",
                     help="with --experiment: fit the grid's trials (default) or their fine-tunes, against "
                          "the pretrained trial's size (x default: " + "; ".join(f"{k}: {v}" for k, v in FINETUNE_X.items())
                     + ")")
    fit.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                     help="fit only the rows where COL is VALUE, e.g. technique=gp; repeatable")
    fit.add_argument("--metric", "--y", dest="y", required=True, metavar="COL",
                     help="the column to fit, e.g. train/loss")
    fit.add_argument("--x", metavar="COLS", help="comma-separated input column(s); default by form: "
                     + "; ".join(f"{k}: {v}" for k, v in DEFAULT_X.items()))
    fit.add_argument("--form", choices=list(FORMS), help="default: chinchilla for 2 x columns, else power")
    fit.add_argument("--best-of", metavar="COLS", help="swept column(s), e.g. lr or lr,batch_size: fit the "
                     "best trial of each cell of the other axes")
    fit.add_argument("--by", metavar="COL", help="with --best-of: the column picking the best trial "
                     "(default: --metric)")
    fit.add_argument("--by-mode", choices=["min", "max"], help="with --best-of: lower --by is better (min, "
                     "default) or higher (max)")
    fit.add_argument("--increasing", action="store_true",
                     help="power/chinchilla: the metric grows with scale towards 1 (fit 1 - y)")
    fit.add_argument("--loss", choices=["huber", "mse"], help="fit objective (default: per form)")
    fit.add_argument("--delta", type=float, default=1e-3, help="Huber delta (default 1e-3)")
    fit.add_argument("--bootstrap", type=int, default=0, metavar="K", help="K bootstrap resamples for CIs")
    fit.add_argument("--level", type=float, default=0.95, help="CI level (default 0.95)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--holdout-largest", type=int, default=0, metavar="K",
                     help="also fit without the K largest sizes of the first x column and report the error")
    fit.add_argument("--report", type=Path, metavar="DIR", help="write plots, report.md and laws.json to DIR")
    fit.add_argument("--no-log", action="store_true", help="with --experiment: do not log the --report to the "
                     "study's parent run (artifacts, and the law's numbers as law/<metric>/... metrics)")
    fit.add_argument("--points-csv", type=Path, metavar="FILE", help="also write the points fitted (a study's "
                     "final points, after --best-of) as a CSV that `fit --csv` reads back")
    fit.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _load(args: argparse.Namespace, where: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The points to fit and, with --best-of, the winners table. Warnings (trials left out, an
    unbracketed optimum) are printed as one line each, without the library's source line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = _read(args)
        try:
            df = subset(df, where)
        except ValueError as e:
            raise UsageError(f"--where {e}") from None
        points, winners = _select(args, df)
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    return points, winners


def _where(args: argparse.Namespace) -> dict[str, str]:
    where = {}
    for item in args.where:
        col, eq, value = item.partition("=")
        if not (col and eq and value):
            raise UsageError(f"--where: {item!r} is not allowed; allowed: COL=VALUE, e.g. technique=gp")
        where[col] = value
    return where


def law_prefix(role: str, where: dict[str, str]) -> str:
    """Where a law's numbers go on the parent run: law[/<role>][/<col>-<value>...]/<metric>/..."""
    parts = ["law", *([role] if role != "trial" else []), *(metric_key(f"{c}-{v}") for c, v in where.items())]
    return "/".join(parts)


def _read(args: argparse.Namespace) -> pd.DataFrame:
    if args.csv is not None:
        if not args.csv.is_file():
            raise UsageError(f"--csv: file not found: {args.csv}")
        return from_csv(args.csv)
    try:
        return load_study(args.experiment, args.tracking_uri, role=args.role)
    except LookupError as e:
        raise UsageError(f"--experiment: {e}") from None


def _select(args: argparse.Namespace, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A study's final points, a CSV's rows; with --best-of, the best of each cell."""
    if args.best_of is None:
        return (df if args.csv is not None else final_points(df)), None
    best_of, by, mode = args.best_of.split(","), args.by or args.y, args.by_mode or "min"
    for option, cols in (("--best-of", best_of), ("--by" if args.by else "--metric", [by])):
        for col in cols:
            if col not in df.columns:
                raise UsageError(f"{option}: column {col!r} not found; available: {', '.join(map(str, df.columns))}")
    try:
        if args.csv is not None:
            return select_best(df, best_of, by, mode)
        points = final_points(df, best_of, by, mode)
    except ValueError as e:
        raise UsageError(f"--by {by}: {e}") from None
    return points, pd.DataFrame(points.attrs["winners"])


def _make_law(args: argparse.Namespace, df: pd.DataFrame) -> Law:
    x = args.x.split(",") if args.x else None
    form = args.form or ("power" if x is not None and len(x) == 1 else "chinchilla")
    if x is None:
        if form not in DEFAULT_X:
            raise UsageError(f"--x: required for --form {form} (the upstream loss column)")
        x = (FINETUNE_X if args.role == "finetune" else DEFAULT_X)[form].split(",")
    cls = FORMS[form]
    if len(x) != cls.n_inputs:
        raise UsageError(f"--x: form {form!r} takes {cls.n_inputs} column(s), got {len(x)}: {','.join(x)}")
    for option, cols in (("--x", x), ("--metric", [args.y])):
        for col in cols:
            if col not in df.columns:
                raise UsageError(f"{option}: column {col!r} not found; available: {', '.join(map(str, df.columns))}")
    kw = {"loss": args.loss, "delta": args.delta}
    if args.increasing:
        if form not in ("power", "chinchilla"):
            raise UsageError(f"--increasing: applies to --form power or chinchilla, not {form!r}")
        kw["increasing"] = True
    return cls(x if cls.n_inputs > 1 else x[0], args.y, **kw)


def _print_summary(law: Law, s: dict, level: float) -> None:
    print(describe(law))
    print(f"  objective at optimum: {s['loss']:.6g}")
    for k, v in s["params"].items():
        ci = s["ci"].get(k)
        print(f"  {k:>6} = {v:<12.6g}" + (f" {level:.0%} CI [{ci[0]:.6g}, {ci[1]:.6g}]" if ci else ""))
    if "holdout" in s:
        h = s["holdout"]
        print(f"held out the largest {h['k']} {h['x']}: mean |relative error| {h['mean_abs_rel_error']:.3%}")
        for p in h["points"]:
            where = ", ".join(f"{c}={p[c]:.4g}" for c in law.x)
            print(f"  {where}: actual {p['actual']:.4g} predicted {p['predicted']:.4g} ({p['rel_error']:+.2%})")


def fit_command(args: argparse.Namespace) -> int:
    if args.bootstrap < 0 or args.holdout_largest < 0:
        raise UsageError("--bootstrap / --holdout-largest: must be >= 0")
    if not 0 < args.level < 1:
        raise UsageError(f"--level: must be in (0, 1), got {args.level}")
    if (args.by or args.by_mode) and not args.best_of:
        raise UsageError(f"{'--by' if args.by else '--by-mode'}: applies with --best-of only")
    if args.role != "trial" and not args.experiment:
        raise UsageError("--role: applies with --experiment only (a CSV holds the points to fit)")
    if args.no_log and not (args.report and args.experiment):
        raise UsageError("--no-log: applies with --experiment and --report only")
    where = _where(args)
    df, winners = _load(args, where)
    if args.points_csv:
        args.points_csv.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.points_csv, index=False)
    law = _make_law(args, df)
    log_to = _parent_run(args)
    try:
        law.fit(df)
    except ValueError as e:  # e.g. y <= 0 for a law fitted in log space
        raise UsageError(f"--metric {args.y}: {e}") from None
    boot = bootstrap(law, df, n=args.bootstrap, seed=args.seed) if args.bootstrap else None
    try:
        ho = holdout_largest(law, df, k=args.holdout_largest) if args.holdout_largest else None
    except ValueError as e:
        raise UsageError(f"--holdout-largest: {e}") from None
    law.diagnostics_ = diagnose(law, df, boot=boot, holdout=ho, level=args.level)
    summary = law_summary(law, boot, ho, args.level)
    if where:
        summary["where"] = where
    if winners is not None:
        summary["selection"] = {"best_of": args.best_of.split(","), "by": args.by or args.y,
                                "mode": args.by_mode or "min", "winners": winners.to_dict(orient="records")}
    if args.report:
        from scalinglaws.report import write_report

        write_report(df, args.report, {args.y: law}, n_boot=args.bootstrap, holdout=args.holdout_largest,
                     level=args.level, seed=args.seed, log_to_run=log_to, tracking_uri=args.tracking_uri,
                     winners=winners, log_prefix=law_prefix(args.role, where))
    for d in law.diagnostics_:
        print(f"warning: {d.code}: {d.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, default=json_default))
        return 0
    if winners is not None:
        s = summary["selection"]
        print(f"best {','.join(s['best_of'])} per cell by {s['by']} ({s['mode']}):")
        print(winners.to_string(index=False))
    _print_summary(law, summary, args.level)
    if args.report:
        print(f"report written to {args.report}" + (f", logged to run {log_to}" if log_to else ""))
    return 0


def _parent_run(args: argparse.Namespace) -> str | None:
    """The run a study's --report is logged to (checked before fitting), else None."""
    if not (args.report and args.experiment) or args.no_log:
        return None
    try:
        return study_run(args.experiment, args.tracking_uri)
    except LookupError as e:
        raise UsageError(f"--report: {e} (--no-log writes the report without logging it)") from None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status. `fit` is the only command, so argv may omit it
    (`reliscale fit --csv ...` can pass its arguments after "fit" straight through)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].startswith("--") and argv[0] != "--help":
        argv = ["fit", *argv]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed usage / help
        return int(e.code or 0)
    try:
        return fit_command(args)
    except (UsageError, KeyError) as e:
        print(f"{parser.prog} {args.command}: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
