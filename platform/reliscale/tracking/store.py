"""The driver's side of a study's MLflow store: one experiment, one parent run, child runs.

The driver creates (or finds again) every run before any trial starts, so a retried or
resumed trial logs into the run it had: no duplicate runs. Every call goes through
`with_retries`: a store that is briefly unreachable or locked costs time, not the study.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from reliscale.tracking.schema import (
    AXES,
    EXPERIMENT_KIND,
    MODEL_TRAINING,
    OUTCOME,
    PARENT,
    PATCH,
    PATCH_ID,
    PRUNED,
    ROLE,
    STUDY,
    STUDY_ROLE,
    TRIAL,
    TRIAL_ID,
)

log = logging.getLogger("reliscale.tracking")

T = TypeVar("T")

# Errors a retry cannot fix: the store understood the request and refused it.
PERMANENT = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
    "PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "INVALID_STATE",
    "ENDPOINT_NOT_FOUND",
})
# Attempts for what a trial cannot do without: ~5 min of backoff (0.5 s doubling, 30 s cap).
PATIENT = 16
MAX_BATCH = 1000  # values per log_batch call (MLflow's limit)
PAGE = 1000  # runs per search_runs page


def ui_link(uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """Where the MLflow UI shows a study's runs: the experiment in model-training mode (MLflow 3's
    UI otherwise opens an experiment on its GenAI overview)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


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


def check_reachable(uri: str) -> None:
    """Reach the store, or raise what stopped it. A server is probed at /health with a short
    timeout: MLflow's own client would retry an unreachable server for minutes before giving up."""
    import urllib.request

    def probe() -> None:
        if uri.startswith(("http://", "https://")):
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
                pass
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)

    with_retries(probe, "reach tracking store", attempts=3, base_delay=0.5)


class NoRuns(LookupError):
    """A study that has not written to its store yet (no experiment or no parent run)."""


def _missing_sqlite_file(uri: str) -> bool:
    """A sqlite URI whose file does not exist: opening it with MLflow would create it."""
    prefix = "sqlite:///"
    return uri.startswith(prefix) and not Path(uri[len(prefix):].split("?")[0]).exists()


class StudyRuns:
    """A study's experiment and parent run, found or (with `create`) created, and its child runs.

    With create=False nothing is ever written to the store: a study without an experiment or
    a parent run raises `NoRuns`, and a sqlite file that does not exist is not created.
    """

    def __init__(self, uri: str, study: str, artifact_root: Path | None = None,
                 create: bool = True):
        self.uri, self.study = uri, study
        missing = NoRuns(f"no MLflow runs yet for study {study!r} at {uri}")
        if not create and _missing_sqlite_file(uri):
            raise missing
        self.client = MlflowClient(tracking_uri=uri)
        exp = with_retries(lambda: self.client.get_experiment_by_name(study), "get experiment")
        if exp is not None:
            self.experiment_id = exp.experiment_id
            if create and exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
                with_retries(lambda: self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND,
                                                                    MODEL_TRAINING), "tag experiment")
        elif create:
            location = artifact_root.resolve().as_uri() if artifact_root else None
            self.experiment_id = with_retries(
                lambda: self.client.create_experiment(study, artifact_location=location,
                                                      tags={EXPERIMENT_KIND: MODEL_TRAINING}),
                "create experiment")
        else:
            raise missing
        parent = self._find(f"tags.`{ROLE}` = '{STUDY_ROLE}'")
        if parent is None and not create:
            raise missing
        parent = parent or self._create({ROLE: STUDY_ROLE, STUDY: study}, study)
        self.parent_id = parent.info.run_id

    def _find(self, query: str) -> Run | None:
        def search() -> list[Run]:
            return self.client.search_runs([self.experiment_id], query, max_results=1)

        found = with_retries(search, "search runs")
        return found[0] if found else None

    def _create(self, tags: dict[str, str], name: str) -> Run:
        def create() -> Run:
            return self.client.create_run(self.experiment_id, tags=tags, run_name=name)

        return with_retries(create, "create run")

    def _child_run(self, key_tag: str, key: str, tags: dict[str, str],
                   params: dict[str, str]) -> Run:
        """The child run whose tag `key_tag` is `key`, created the first time; tags that differ and
        params it lacks are logged. Returns the run as found or created."""
        tags = {PARENT: self.parent_id, STUDY: self.study, key_tag: key, **tags}
        run = self._find(f"tags.`{PARENT}` = '{self.parent_id}' and tags.`{key_tag}` = '{key}'")
        run = run or self._create(tags, key)
        stale = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
        missing = [Param(k, v) for k, v in params.items() if k not in run.data.params]
        if stale or missing:
            with_retries(lambda: self.client.log_batch(run.info.run_id, params=missing, tags=stale),
                         "log params")
        return run

    def trial_run(self, trial, params: dict[str, str], role: str = TRIAL) -> str:
        """The id of a trial's child run (role `trial`, or `finetune` for a PAINT or downstream fine-tune)."""
        axes = {f"reliscale.{k}": params[k] for k in AXES if k in params}
        return self._child_run(TRIAL_ID, trial.trial_id, {ROLE: role, **axes}, params).info.run_id

    def patch_run(self, patch_id: str, params: dict[str, str]) -> Run:
        """The child run of one α sweep."""
        return self._child_run(PATCH_ID, patch_id, {ROLE: PATCH}, params)

    def children(self, page_size: int = PAGE) -> list[Run]:
        """Every child run of the study, read page by page."""
        query = f"tags.`{PARENT}` = '{self.parent_id}'"
        runs: list[Run] = []
        token = None
        while True:
            page = with_retries(lambda t=token: self.client.search_runs(
                [self.experiment_id], query, max_results=page_size, page_token=t), "search runs")
            runs += page
            token = page.token
            if not token:
                return runs

    def trial_runs(self, page_size: int = PAGE) -> dict[str, Run]:
        """trial_id -> Run, for every trial and fine-tune of the study."""
        runs = self.children(page_size)
        return {r.data.tags[TRIAL_ID]: r for r in runs if TRIAL_ID in r.data.tags}

    def metric_steps(self, run_id: str, key: str) -> list[int]:
        """The steps at which a run logged `key`."""
        return [m.step for m in with_retries(lambda: self.client.get_metric_history(run_id, key),
                                             "metric history")]

    def log_spec(self, text: str) -> None:
        with_retries(lambda: self.client.log_text(self.parent_id, text, "spec.yaml"), "log spec")

    def finish(self, ok: bool) -> None:
        status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
        with_retries(lambda: self.client.set_terminated(self.parent_id, status), "finish run")


def complete_run(client: MlflowClient, run_id: str, history: dict[str, list[tuple[int, float]]],
                 tags: dict[str, str], artifacts: list[Path], artifact_dir: str) -> None:
    """Log a whole run at once, then finish it: each key's (step, value) history, tags, artifacts.

    A key's history goes in one batch where it fits, and keys the run already has are skipped,
    so a driver stopped while logging and started again logs nothing twice.
    """
    now = int(time.time() * 1000)
    logged = with_retries(lambda: client.get_run(run_id), "get run").data.metrics
    batch: list[Metric] = []
    for key, points in history.items():
        if key in logged:
            continue
        for j in range(0, len(points), MAX_BATCH):
            chunk = points[j:j + MAX_BATCH]
            if len(batch) + len(chunk) > MAX_BATCH:
                with_retries(lambda b=batch: client.log_batch(run_id, metrics=b), "log metrics")
                batch = []
            batch += [Metric(key, float(v), now, step) for step, v in chunk]
    if batch:
        with_retries(lambda: client.log_batch(run_id, metrics=batch), "log metrics")
    tag_batch = [RunTag(k, v) for k, v in tags.items()]
    with_retries(lambda: client.log_batch(run_id, tags=tag_batch), "set tags")
    for path in artifacts:
        with_retries(lambda p=path: client.log_artifact(run_id, str(p), artifact_dir),
                     "log artifact")
    with_retries(lambda: client.set_terminated(run_id, "FINISHED"), "finish run")


def mark_pruned(uri: str, run_id: str) -> None:
    """End the run of a trial the study's scheduler stopped early: outcome `pruned`, FINISHED (done,
    not failed: a later `run` or `resume` does not start it again). The driver calls it: the stop
    ends the trial's workers before they could say so themselves."""
    client = MlflowClient(tracking_uri=uri)
    with_retries(lambda: client.set_tag(run_id, OUTCOME, PRUNED), "tag pruned")
    with_retries(lambda: client.set_terminated(run_id, "FINISHED"), "finish run")
