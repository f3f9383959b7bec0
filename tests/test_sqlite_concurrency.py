"""The default sqlite store under concurrent trials: several OS processes log through `TrialLogger`
into one file at once, as rank 0 of every running trial does. Nothing may be lost, doubled or
corrupted."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from multiprocessing.synchronize import Barrier

from mlflow.tracking import MlflowClient

from reliscale.tracking import TrialLogger

PROCESSES, STEPS, KEYS = 6, 30, 12


def value(proc: int, key: int, step: int) -> float:
    return proc * 1000 + key + step / 100


def log_like_a_trial(uri: str, run_id: str, proc: int, start: Barrier) -> None:
    """What rank 0 of a trial does: check its run, start it, log every eval step, finish."""
    logger = TrialLogger(uri, run_id)
    start.wait()
    assert not logger.logged_steps("eval/m0") and not logger.finished()
    logger.start()
    logger.set_tags({"reliscale.node_id": f"proc{proc}"})
    for step in range(STEPS):
        logger.log_metrics({f"eval/m{k}": value(proc, k, step) for k in range(KEYS)}, step=step)
    logger.finish()


def test_concurrent_trial_loggers_leave_an_intact_sqlite_store_with_every_point_once(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)  # the driver creates the store and the runs before trials start
    exp = client.create_experiment("stress", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = [client.create_run(exp, run_name=f"trial{i}").info.run_id for i in range(PROCESSES)]

    # Fresh processes that inherit no store connection (as Ray workers), forked from a server
    # that imported MLflow once: six cold imports of MLflow would dominate the test.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["reliscale.tracking.logger"])
    start = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=log_like_a_trial, args=(uri, run_id, i, start)) for i, run_id in enumerate(runs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * PROCESSES

    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
    assert rows == PROCESSES * STEPS * KEYS
    for i, run_id in enumerate(runs):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["reliscale.node_id"] == f"proc{i}"
        for k in range(KEYS):
            history = sorted(client.get_metric_history(run_id, f"eval/m{k}"), key=lambda m: m.step)
            assert [(m.step, m.value) for m in history] == [(s, value(i, k, s)) for s in range(STEPS)]
