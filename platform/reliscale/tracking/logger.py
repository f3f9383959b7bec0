"""Rank 0's handle on its trial's child run. Only rank 0 of a trial logs; metrics are
`train/...` and `eval/<split>/<metric>`, stepped by the data seen (examples or tokens)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from reliscale.tracking.store import MAX_BATCH, PATIENT, log, transient, with_retries

T = TypeVar("T")
DIGEST_CHARS = 32  # MLflow's dataset digest column holds at most 36 characters
DATASET_CONTEXT = "mlflow.data.context"  # the input tag the UI shows as the dataset's role


class TrialLogger:
    """Metrics stepped by data seen, artifacts, status of one child run.

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
        run = self._call(lambda: self.client.get_run(self.run_id), "get run")
        return run.info.status == "FINISHED"

    def start(self) -> None:
        self._call(lambda: self.client.update_run(self.run_id, status="RUNNING"), "start run")

    def log_inputs(self, datasets: list[dict]) -> None:
        """The datasets a trial reads, as MLflow dataset inputs (the UI's "Datasets used"): each
        {name, digest, source, context ("training" | "evaluation"), profile (a dict)}. A resumed
        trial logs nothing twice: the run's inputs are looked up first."""
        if not datasets:
            return
        run = self._call(lambda: self.client.get_run(self.run_id), "get run")
        have = {(d.dataset.name, d.dataset.digest) for d in (run.inputs.dataset_inputs if run.inputs else [])}
        inputs = [DatasetInput(Dataset(d["name"], d["digest"][:DIGEST_CHARS], "local", d["source"],
                                       profile=json.dumps(d["profile"], sort_keys=True)),
                               tags=[InputTag(DATASET_CONTEXT, d["context"])])
                  for d in datasets if (d["name"], d["digest"][:DIGEST_CHARS]) not in have]
        if inputs:
            self._call(lambda: self.client.log_inputs(self.run_id, datasets=inputs), "log inputs")

    def log_metrics(self, metrics: dict[str, float], step: int) -> bool:
        """Log (or buffer) one step's metrics; False while the store is unreachable."""
        now = int(time.time() * 1000)  # fixed per point: the store deduplicates a retried batch
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        return self.flush()

    def flush(self, attempts: int = 2) -> bool:
        """Send the buffer; on a transient failure keep the rest buffered and return False."""
        while self.pending:
            chunk = self.pending[:MAX_BATCH]
            try:
                with_retries(lambda c=chunk: self.client.log_batch(self.run_id, metrics=c),
                             "log metrics", attempts=attempts)
            except Exception as e:
                if not transient(e):
                    raise
                log.warning("tracking unreachable, %d metric values buffered: %s",
                            len(self.pending), str(e)[:300])
                return False
            del self.pending[:len(chunk)]
        return True

    def set_tags(self, tags: dict[str, str]) -> None:
        batch = [RunTag(k, v) for k, v in tags.items()]
        self._call(lambda: self.client.log_batch(self.run_id, tags=batch), "set tags")

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), subdir), "log artifact")

    def finish(self, ok: bool = True) -> None:
        if not self.flush(attempts=PATIENT):
            raise RuntimeError(f"{len(self.pending)} metric values could not be logged to MLflow")
        status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
        self._call(lambda: self.client.set_terminated(self.run_id, status), "finish run")
