"""The laws a spec names (`analysis:`), fitted by the driver when the grid finishes.

Each law goes through `reliscale fit` (the analysis package's CLI) on the study's own MLflow
experiment: its summary and diagnostics print to the console, and its report (plots,
`laws.json`, `report.md`) is written under `<study>/report/<metric>` and logged to the study's
parent run, with the headline parameters as the parent run's metrics.
"""

from __future__ import annotations

import re

from reliscale.spec.schema import LawSpec, StudySpec


def fit_argv(law: LawSpec, study: str, tracking_uri: str, report_dir: str) -> list[str]:
    """`reliscale fit` arguments for one law of the spec."""
    argv = ["fit", "--experiment", study, "--tracking-uri", tracking_uri, "--metric", law.metric,
            "--bootstrap", str(law.bootstrap), "--holdout-largest", str(law.holdout_largest),
            "--report", report_dir]
    if law.form:
        argv += ["--form", law.form]
    if law.x:
        argv += ["--x", ",".join(law.x)]
    if law.best_of:
        argv += ["--best-of", ",".join(law.best_of), "--by", law.by or law.metric]
    if law.increasing:
        argv += ["--increasing"]
    if law.role != "trial":
        argv += ["--role", law.role]
    for col, value in law.where.items():
        argv += ["--where", f"{col}={value}"]
    return argv


def law_name(law: LawSpec) -> str:
    """The law's report folder: [<role>_][<col>-<value>_...]<metric>, as a file name."""
    parts = ([law.role] if law.role != "trial" else []) + [f"{c}-{v}" for c, v in law.where.items()]
    return re.sub(r"[^\w.-]+", "_", "_".join([*parts, law.metric]))


def fit_study_laws(spec: StudySpec, paths) -> bool:
    """Fit every law of `spec.analysis`; False when one could not be fitted (it says why)."""
    from scalinglaws.cli import main as fit_main

    ok = True
    for law in spec.analysis.laws if spec.analysis else ():
        report = paths.dir / "report" / law_name(law)
        slices = [f"{law.role}s"] * (law.role != "trial") + [f"{c}={v}" for c, v in law.where.items()]
        print(f"\nlaw of {law.metric}" + (f" ({', '.join(slices)})" if slices else "") + ":", flush=True)
        ok &= fit_main(fit_argv(law, spec.name, paths.tracking_uri, str(report))) == 0
    return ok
