"""A report on the study's MLflow parent run: the folder as artifacts, each law's numbers as metrics.

Per fitted metric M (its key made legal: characters other than letters, digits, _ - . space /
become _), the parent run gets metrics `law/M/<param>`, `law/M/<param>_lo` and `_hi` (the
bootstrap interval) and `law/M/holdout_mean_abs_rel_error`, and tags `law/M/form`, `law/M/x`
and `law/M/diagnostics` (codes, or "none"). Tags rather than params: MLflow params cannot
change, and a law is refitted as trials are added.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

ROLE = "reliscale.role"


def study_run(experiment: str, tracking_uri: str | None = None) -> str:
    """The id of the study's parent run (tag reliscale.role=study) in `experiment`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment named {experiment!r} at {client.tracking_uri}")
    runs = client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'study'", max_results=2)
    if len(runs) != 1:
        raise LookupError(f"experiment {experiment!r} has {'no' if not runs else 'several'} run(s) tagged "
                          f"{ROLE}=study; the report goes to the study's one parent run")
    return runs[0].info.run_id


def metric_key(name: str) -> str:
    return re.sub(r"[^\w.\- /]", "_", name).strip("/")


def log_report(run_id: str, out_dir: str | Path, summary: dict[str, Any], tracking_uri: str | None = None,
               prefix: str = "law") -> None:
    """Log `out_dir` under scalinglaws/<its name>/ and the headline numbers of `summary["laws"]`
    to `run_id`, as `<prefix>/<metric>/<parameter>`."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_artifacts(run_id, str(out_dir), artifact_path=f"scalinglaws/{Path(out_dir).resolve().name}")
    now = int(time.time() * 1000)
    metrics, tags = [], []
    for name, law in summary["laws"].items():
        key = f"{prefix}/{metric_key(name)}"
        values = {**law["params"], **{f"{k}_{end}": v for k, ci in law["ci"].items()
                                      for end, v in zip(("lo", "hi"), ci, strict=True)}}
        if "holdout" in law:
            values["holdout_mean_abs_rel_error"] = law["holdout"]["mean_abs_rel_error"]
        metrics += [Metric(f"{key}/{k}", float(v), now, 0) for k, v in values.items()]
        codes = ",".join(dict.fromkeys(d["code"] for d in law["diagnostics"])) or "none"
        tags += [RunTag(f"{key}/form", law["form"]), RunTag(f"{key}/x", ",".join(law["x"])),
                 RunTag(f"{key}/diagnostics", codes)]
    client.log_batch(run_id, metrics=metrics, tags=tags)
