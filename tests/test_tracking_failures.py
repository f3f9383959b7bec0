"""How a trial's logger meets a failing store: an unreachable one buffers, a refusing one raises."""

from __future__ import annotations

import logging

import pytest
from mlflow.exceptions import MlflowException

from reliscale.tracking import TrialLogger

from servers import free_port


def test_metrics_stay_buffered_in_order_while_the_tracking_server_is_unreachable(monkeypatch):
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)  # TrialLogger sets them; restored after the test
    logger = TrialLogger(f"http://127.0.0.1:{free_port()}", "0" * 32)  # nothing listens there
    assert logger.log_metrics({"eval/id/mse": 1.0, "train/loss": 2.0}, step=32) is False
    assert logger.log_metrics({"eval/id/mse": 0.5}, step=64) is False
    assert [(m.key, m.value, m.step) for m in logger.pending] == [
        ("eval/id/mse", 1.0, 32), ("train/loss", 2.0, 32), ("eval/id/mse", 0.5, 64)]


def test_a_request_the_store_refuses_raises_at_once_instead_of_being_retried_or_buffered(tmp_path, caplog):
    logger = TrialLogger(f"sqlite:///{tmp_path / 'mlflow.db'}", "0" * 32)  # no such run
    with caplog.at_level(logging.WARNING, logger="reliscale.tracking"), pytest.raises(MlflowException) as err:
        logger.log_metrics({"eval/id/mse": 1.0}, step=32)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert not [r for r in caplog.records if r.name == "reliscale.tracking"]  # no "retrying", no "buffered"
