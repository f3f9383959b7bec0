"""`reliscale status`: each trial's state, data seen and latest metrics, read from MLflow.

Read-only: a study that has not written to its store yet is reported as such (on stderr)
with every trial of its spec pending; nothing is created in the store.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reliscale import tracking
from reliscale.spec.finetune import finetune_trials
from reliscale.spec.schema import StudySpec, expand

SHOWN = ("train/loss", "eval/id/mse", "eval/id/ls_ratio", "eval/id/accuracy", "eval/id/ece", "eval/id/loss")


def study_status(spec: StudySpec, root: Path) -> list[dict]:
    from reliscale.driver.paths import StudyPaths

    paths = StudyPaths(spec, root)
    try:
        store = tracking.StudyRuns(paths.tracking_uri, spec.name, create=False)
    except tracking.NoRuns as e:
        print(e, file=sys.stderr)
        store = None
    runs = store.trial_runs() if store else {}
    grid = expand(spec)
    rows = []
    for trial in grid + [ft for _, ft in finetune_trials(spec, grid)]:
        run = runs.get(trial.trial_id)
        row = {"trial_id": trial.trial_id, "state": "PENDING", "data_seen": 0,
               "data_size": trial.data_size, "metrics": {}}
        if run is not None:
            history = run.data.metrics
            steps = store.metric_steps(run.info.run_id, "train/loss")
            state = run.info.status if steps or run.info.status != "RUNNING" else "SCHEDULED"
            outcome = run.data.tags.get(tracking.OUTCOME)
            if outcome == tracking.DIVERGED:
                state, row["diverged"] = "DIVERGED", run.data.tags.get(tracking.DIVERGED_WHY, "")
            elif outcome == tracking.PRUNED:
                state = "PRUNED"
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
    summary = f"\n{done}/{len(rows)} trials finished"
    for state in ("DIVERGED", "PRUNED"):
        if n := sum(r["state"] == state for r in rows):
            summary += f", {n} {state.lower()}"
    lines.append(summary)
    return "\n".join(lines)
