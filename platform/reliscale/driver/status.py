"""`reliscale status`: each trial's state, data seen and latest metrics, read from MLflow."""

from __future__ import annotations

from pathlib import Path

from reliscale import tracking
from reliscale.spec.schema import StudySpec, expand

SHOWN = ("train/loss", "eval/id/mse", "eval/id/ls_ratio", "eval/id/accuracy", "eval/id/ece", "eval/id/loss")


def study_status(spec: StudySpec, root: Path) -> list[dict]:
    from reliscale.driver.study import StudyPaths

    paths = StudyPaths(spec, root)
    runs = tracking.StudyRuns(paths.tracking_uri, spec.name).trial_runs()
    rows = []
    for trial in expand(spec):
        run = runs.get(trial.trial_id)
        row = {"trial_id": trial.trial_id, "state": "NOT STARTED", "data_seen": 0,
               "data_size": trial.data_size, "metrics": {}}
        if run is not None:
            history = run.data.metrics
            steps = tracking.with_retries(
                lambda r=run: [m.step for m in tracking.MlflowClient(paths.tracking_uri)
                               .get_metric_history(r.info.run_id, "train/loss")], "metric history")
            state = run.info.status if steps or run.info.status != "RUNNING" else "SCHEDULED"
            if run.data.tags.get(tracking.OUTCOME) == "diverged":
                state, row["diverged"] = "DIVERGED", run.data.tags.get(tracking.DIVERGED_WHY, "")
            row.update(state=state,
                       data_seen=max(steps, default=0),
                       metrics={k: history[k] for k in SHOWN if k in history})
        rows.append(row)
    return rows


def format_status(rows: list[dict]) -> str:
    width = max(len(r["trial_id"]) for r in rows)
    lines = []
    for r in rows:
        metrics = "  ".join(f"{k} {v:.4g}" for k, v in r["metrics"].items())
        if r.get("diverged"):
            metrics += f"  (diverged: {r['diverged']})"
        lines.append(f"{r['trial_id']:<{width}}  {r['state']:<11}  {r['data_seen']:>12,d} / "
                     f"{r['data_size']:<12,d}  {metrics}")
    done = sum(r["state"] == "FINISHED" for r in rows)
    diverged = sum(r["state"] == "DIVERGED" for r in rows)
    lines.append(f"\n{done}/{len(rows)} trials finished" + (f", {diverged} diverged" if diverged else ""))
    return "\n".join(lines)
