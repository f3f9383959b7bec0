"""Scaling-law analysis of reliscale studies: load, fit, quantify uncertainty, validate, show.

Light on purpose: numpy, scipy and pandas only; matplotlib and mlflow are imported inside
the functions that need them.

    df = final_points(load_study("icl_smoke", "sqlite:///studies/icl_smoke/mlflow.db"),
                      best_of=["lr"], by="eval/val/loss")  # best lr per (size, data size) cell
    law = ChinchillaLaw(y="eval/val/loss").fit(df)  # subset(df, {"technique": "gp"}): one technique
    boot = bootstrap(law, df, n=1000)
    boot.params_ci(0.95)
    diagnose(law, df, boot=boot)  # when not to believe it (law.diagnostics_: without the bootstrap)
"""

from scalinglaws.bootstrap import BootstrapResult, bootstrap
from scalinglaws.correlation import metric_correlation
from scalinglaws.derived import compute_optimal, required_size
from scalinglaws.diagnostics import Diagnostic, diagnose
from scalinglaws.laws import FORMS, BrokenPowerLaw, ChinchillaLaw, Law, PowerLaw, SigmoidOfLoss
from scalinglaws.load import final_points, from_csv, load_study, subset
from scalinglaws.report import write_report
from scalinglaws.select import select_best
from scalinglaws.validate import Holdout, holdout_largest

__all__ = [
    "FORMS",
    "BootstrapResult",
    "BrokenPowerLaw",
    "ChinchillaLaw",
    "Diagnostic",
    "Holdout",
    "Law",
    "PowerLaw",
    "SigmoidOfLoss",
    "bootstrap",
    "compute_optimal",
    "diagnose",
    "final_points",
    "from_csv",
    "holdout_largest",
    "load_study",
    "metric_correlation",
    "required_size",
    "select_best",
    "subset",
    "write_report",
]
