"""The reference ladder's report, from its MLflow study or from the recorded CSV.

    python docs/results/lm_ladder_cpu_report.py studies/lm_ladder_cpu/mlflow.db   # the study
    python docs/results/lm_ladder_cpu_report.py docs/results/lm_ladder_cpu.csv    # no retraining

Writes docs/results/lm_ladder_cpu/ (report.md, laws.json, plots) and, from a study,
docs/results/lm_ladder_cpu.csv (the final point of the best learning rate in every cell) and
the report as artifacts of the study's parent run. The laws: held-out loss L(N, D) (Chinchilla
form, the largest size held out), the reliability metrics in N and D with the same hold-out,
and each of them against the loss (sigmoid of loss).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from scalinglaws.derived import compute_optimal
from scalinglaws.laws import ChinchillaLaw
from scalinglaws.load import final_points, from_csv, load_study
from scalinglaws.publish import study_run
from scalinglaws.report import write_report

HERE = Path(__file__).parent
X = ("n_params_nonembedding", "data_size")
LOSS = "eval/id/loss"
RELIABILITY = {  # metric -> it grows towards 1 with scale
    "eval/id/ece": False, "eval/id/aurc": False, "eval/prose/ood_auroc_nll": True,
    "eval/next_line/accuracy": True,
}


def main(source: str) -> None:
    log_to = uri = None
    if source.endswith(".csv"):
        points = from_csv(source)
    else:
        uri = f"sqlite:///{Path(source).resolve()}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            points = final_points(load_study("lm_ladder_cpu", uri), best_of=["lr"], by=LOSS)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        points.attrs = {}
        points.to_csv(HERE / "lm_ladder_cpu.csv", index=False)
        log_to = study_run("lm_ladder_cpu", uri)
    laws = {LOSS: ChinchillaLaw(X, LOSS)}
    laws |= {m: ChinchillaLaw(X, m, increasing=inc) for m, inc in RELIABILITY.items() if m in points}
    summary = write_report(points, HERE / "lm_ladder_cpu", laws, upstream=LOSS, n_boot=200, holdout=1,
                           log_to_run=log_to, tracking_uri=uri)
    law = laws[LOSS]
    flops = 6 * points[X[0]] * points[X[1]]
    budgets = np.geomspace(flops.min(), flops.max() * 10, 5)
    print(compute_optimal(law, budgets).to_string(index=False))
    for name, s in summary["laws"].items():
        err = s.get("holdout", {}).get("mean_abs_rel_error")
        print(f"{name}: params {s['params']}, held-out largest error {err}")


if __name__ == "__main__":
    main(sys.argv[1])
