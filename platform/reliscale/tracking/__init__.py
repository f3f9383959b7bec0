"""MLflow layout of a study: one experiment, one parent run, one child run per trial.

The driver creates (or finds again) every run before any trial starts, so a
retried or resumed trial logs into the run it had: no duplicate runs. Only rank 0
of a trial logs. Metrics are `train/...` and `eval/<split>/<metric>`, stepped by
the data seen (examples or tokens).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ROLE = "reliscale.role"
TRIAL_ID = "reliscale.trial_id"
STUDY = "reliscale.driver.study"
OUTCOME = "reliscale.outcome"  # "diverged" on a trial stopped for a non-finite loss or gradients
DIVERGED_WHY = "reliscale.diverged"  # and what was not finite
PARENT = "mlflow.parentRunId"
AXES = ("family", "size", "objective", "technique", "mixture", "seed", "data_size")

T = TypeVar("T")

# Errors a retry cannot fix: the store understood the request and refused it.
PERMANENT = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                       "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED",
                       "INVALID_STATE", "ENDPOINT_NOT_FOUND"})
PATIENT = 16  # attempts for what a trial cannot do without: ~5 min of backoff (0.5 s doubling, 30 s cap)


def default_uri(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'mlflow.db').resolve()}"


def transient(e: Exception) -> bool:
    """Worth retrying: unreachable server, HTTP 5xx/429, a locked sqlite file (MLflow's
    TEMPORARILY_UNAVAILABLE); not a request the store refused."""
    return getattr(e, "error_code", None) not in PERMANENT


def with_retries(fn: Callable[[], T], what: str, attempts: int = 6, base_delay: float = 0.5,
                 max_delay: float = 30.0) -> T:
    """Call `fn`, retrying transient failures with exponential backoff (capped at `max_delay`)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # MLflow raises MlflowException, requests errors, sqlite locks
            if i == attempts - 1 or not transient(e):
                raise
            delay = min(max_delay, base_delay * 2**i)
            log.warning("mlflow %s failed (%s); retrying in %.1fs", what, str(e)[:300], delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def trial_params(trial, counts: dict[str, int], flops: float) -> dict[str, str]:
    """The params of a trial's child run: its axes and what its size costs."""
    spec = trial.spec
    params = {
        "trial_id": trial.trial_id, "family": trial.family, "size": trial.size.name,
        "data_size": trial.data_size, "data_unit": spec.data.unit, "task": spec.data.task,
        "flops": f"{flops:.6e}", "objective": trial.objective, "technique": trial.technique,
        "mixture": trial.mixture_name, "seed": trial.seed, "zero_stage": spec.train.zero_stage,
        "workers": spec.resources.workers, "precision": spec.train.precision,
        "batch_size": spec.data.batch_size, "lr": trial.lr, **counts,
    }
    if trial.size.two_axis:
        params["size_enc"] = trial.size.enc.label
        params["size_dec"] = trial.size.dec.label
    return {k: str(v) for k, v in params.items()}


class StudyRuns:
    """Finds or creates the experiment, the parent run and one child run per trial."""

    def __init__(self, uri: str, study: str, artifact_root: Path | None = None):
        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self.study = uri, study
        exp = with_retries(lambda: self.client.get_experiment_by_name(study), "get experiment")
        if exp is None:
            location = artifact_root.resolve().as_uri() if artifact_root else None
            self.experiment_id = with_retries(
                lambda: self.client.create_experiment(study, artifact_location=location), "create experiment")
        else:
            self.experiment_id = exp.experiment_id
        self.parent_id = self._find_or_create(f"tags.`{ROLE}` = 'study'", study, {ROLE: "study", STUDY: study})

    def _find_or_create(self, query: str, name: str, tags: dict[str, str]) -> str:
        found = with_retries(lambda: self.client.search_runs([self.experiment_id], query, max_results=2),
                             "search runs")
        if found:
            return found[0].info.run_id
        run = with_retries(lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=name),
                           "create run")
        return run.info.run_id

    def trial_run(self, trial, params: dict[str, str]) -> str:
        """The child run of a trial; created with its params and tags the first time only."""
        query = f"tags.`{PARENT}` = '{self.parent_id}' and tags.`{TRIAL_ID}` = '{trial.trial_id}'"
        tags = {ROLE: "trial", PARENT: self.parent_id, TRIAL_ID: trial.trial_id, STUDY: self.study}
        tags.update({f"reliscale.{k}": params[k] for k in AXES if k in params})
        run_id = self._find_or_create(query, trial.trial_id, tags)
        logged = self.client.get_run(run_id).data.params
        missing = [Param(k, v) for k, v in params.items() if k not in logged]
        if missing:
            with_retries(lambda: self.client.log_batch(run_id, params=missing), "log params")
        return run_id

    def trial_runs(self) -> dict[str, object]:
        """trial_id -> mlflow Run, for every child run of the study."""
        runs = self.client.search_runs([self.experiment_id], f"tags.`{PARENT}` = '{self.parent_id}'",
                                       max_results=10_000)
        return {r.data.tags.get(TRIAL_ID, r.info.run_name): r for r in runs}


class TrialLogger:
    """Rank 0's handle on its child run: metrics stepped by data seen, artifacts, status.

    Metrics that fail to reach the store stay buffered and go out with the next
    flush, so a tracking outage costs no data and does not stall or kill the trial;
    only the calls the trial cannot do without (its start and its finish) wait for
    the store, with backoff, for about five minutes.
    """

    def __init__(self, uri: str, run_id: str):
        if uri.startswith(("http://", "https://")):
            # Backoff is ours (with_retries): the MLflow client's own 7 retries per request
            # (~4 min) would stall training through an outage instead of buffering.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id
        self.pending: list[Metric] = []

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return with_retries(fn, what, attempts=PATIENT)

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which `key` already has a value (a resumed trial does not log them twice)."""
        return {m.step for m in self._call(lambda: self.client.get_metric_history(self.run_id, key),
                                           "metric history")}

    def finished(self) -> bool:
        return self._call(lambda: self.client.get_run(self.run_id), "get run").info.status == "FINISHED"

    def start(self) -> None:
        self._call(lambda: self.client.update_run(self.run_id, status="RUNNING"), "start run")

    def log_metrics(self, metrics: dict[str, float], step: int) -> bool:
        """Log (or buffer) one step's metrics; False while the store is unreachable."""
        now = int(time.time() * 1000)  # fixed per point: a retried batch is deduplicated by the store
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        return self.flush()

    def flush(self, attempts: int = 2) -> bool:
        """Send the buffer; on a transient failure keep the rest buffered and return False."""
        while self.pending:
            chunk = self.pending[:1000]  # MLflow's log_batch limit
            try:
                with_retries(lambda c=chunk: self.client.log_batch(self.run_id, metrics=c), "log metrics",
                             attempts=attempts)
            except Exception as e:
                if not transient(e):
                    raise
                log.warning("tracking unreachable, %d metric values buffered: %s", len(self.pending), str(e)[:300])
                return False
            del self.pending[:len(chunk)]
        return True

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]),
                   "set tags")

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), subdir), "log artifact")

    def finish(self, ok: bool = True) -> None:
        if not self.flush(attempts=PATIENT):
            raise RuntimeError(f"{len(self.pending)} metric values could not be logged to MLflow")
        status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
        self._call(lambda: self.client.set_terminated(self.run_id, status), "finish run")
