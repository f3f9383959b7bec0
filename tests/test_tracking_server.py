"""Tracking at scale: trials log over HTTP to an MLflow server backed by PostgreSQL.

Real PostgreSQL, real `mlflow server` (both on 127.0.0.1, started and stopped here),
real Ray and DeepSpeed. Every eval point of every trial must arrive exactly once, also
when the server crashes mid-trial and comes back on the same port.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import psycopg2
import pytest
import ray
from mlflow.tracking import MlflowClient

from reliscale.driver.study import StudyPaths, run_study
from reliscale.evaluation.predict import eval_schedule
from reliscale.spec.schema import StudySpec, TrialConfig, expand, validate
from reliscale.tracking import PARENT, ROLE, TRIAL_ID

from conftest import tiny_icl_spec
from servers import MlflowServer, Postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres()
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def mlflow_server(postgres):
    workdir = Path(tempfile.mkdtemp(prefix="rs_mlflow", dir="/tmp"))
    server = MlflowServer(postgres.uri, workdir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_session():
    temp = tempfile.mkdtemp(prefix="rs_trk", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(num_cpus=2, _temp_dir=temp)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def eval_steps(trial: TrialConfig) -> list[int]:
    """Data seen at each eval point of a trial: where its eval/* and train/* points must be."""
    return [s * trial.data_per_step for s in eval_schedule(trial.steps, trial.spec.eval.points)]


def assert_every_point_once(client: MlflowClient, spec: StudySpec) -> dict:
    """One parent, one finished child run per trial, each eval/* and train/* key at every eval step once."""
    exp = client.get_experiment_by_name(spec.name)
    parents = client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'study'")
    children = client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'trial'")
    ids = [r.data.tags[TRIAL_ID] for r in children]
    assert len(parents) == 1 and len(ids) == len(set(ids)), (len(parents), ids)
    trials = expand(spec)
    assert sorted(ids) == sorted(t.trial_id for t in trials)
    runs = {r.data.tags[TRIAL_ID]: r for r in children}
    required = {"train/loss", "train/lr"} | {f"eval/{s}/{m}" for s in spec.splits() for m in spec.eval.metrics}
    for trial in trials:
        run = runs[trial.trial_id]
        assert run.info.status == "FINISHED" and run.data.tags[PARENT] == parents[0].info.run_id
        keys = {k for k in run.data.metrics if k.startswith(("eval/", "train/"))}
        assert required <= keys, required - keys
        for key in sorted(keys):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == eval_steps(trial), (trial.trial_id, key, steps)
    return runs


def test_concurrent_trials_log_every_point_once_to_a_postgres_backed_server(ray_session, mlflow_server,
                                                                             tmp_path):
    doc = tiny_icl_spec("pg_grid", seeds=2, tracking={"uri": mlflow_server.uri},
                        resources={"workers": 1, "cpus_per_worker": 0.49, "max_concurrent_trials": 4})
    doc["data"]["sizes"] = [256, 512]  # x 2 seeds: 4 trials, all at once
    doc["eval"]["metrics"] = ["mse", "ls_ratio"]
    spec = validate(doc)
    results = run_study(spec, tmp_path, progress_interval_s=60)
    assert not [r for r in results if r.error]
    assert_every_point_once(MlflowClient(mlflow_server.uri), spec)


class Outage(threading.Thread):
    """Crashes the server once the trial's first point is in the database; restarts it on the
    same port only after the trial has checkpointed an eval whose points the database lacked
    at the crash, i.e. points the trial had to buffer."""

    def __init__(self, server: MlflowServer, pg: Postgres, trial: TrialConfig, checkpoints: Path,
                 done: threading.Event):
        super().__init__(daemon=True)
        self.server, self.pg, self.trial, self.checkpoints, self.done = server, pg, trial, checkpoints, done
        self.buffered_steps: list[int] = []
        self.error: BaseException | None = None

    def logged_steps(self, run_id: str) -> list[int]:
        """Steps of the trial's train/loss points in the database itself (readable while the server is down)."""
        con = psycopg2.connect(host="127.0.0.1", port=self.pg.port, user="postgres", dbname=self.pg.database)
        try:
            with con.cursor() as cur:
                cur.execute("SELECT DISTINCT step FROM metrics WHERE run_uuid = %s AND key = 'train/loss'",
                            (run_id,))
                return sorted(row[0] for row in cur.fetchall())
        finally:
            con.close()

    def wait_for(self, what: str, ready) -> None:
        deadline = time.monotonic() + 900
        while not ready():
            if self.done.is_set() or time.monotonic() > deadline:
                raise RuntimeError(f"the study ended (or time ran out) before {what}")
            time.sleep(0.2)

    def run(self) -> None:
        try:
            client = MlflowClient(self.server.uri)
            runs: list = []

            def run_created() -> bool:
                exp = client.get_experiment_by_name(self.trial.study)
                runs[:] = [] if exp is None else client.search_runs(
                    [exp.experiment_id], f"tags.`{TRIAL_ID}` = '{self.trial.trial_id}'")
                return bool(runs)

            self.wait_for("the trial's run was created", run_created)
            run_id = runs[0].info.run_id
            self.wait_for("the trial logged its first point", lambda: self.logged_steps(run_id))
            self.server.stop()
            before = self.logged_steps(run_id)[-1]  # nothing can be added while the server is down

            def checkpointed_later() -> bool:
                steps = [int(p.name.removeprefix("step_")) * self.trial.data_per_step
                         for p in self.checkpoints.glob("step_*")]
                self.buffered_steps = sorted(s for s in steps if s > before)
                return bool(self.buffered_steps)

            self.wait_for("a checkpoint after the crash", checkpointed_later)
            self.server.start()
        except BaseException as e:
            self.error = e


def test_trial_survives_a_tracking_server_crash_and_its_buffered_points_arrive_once(
        ray_session, postgres, mlflow_server, tmp_path):
    doc = tiny_icl_spec("pg_outage", tracking={"uri": mlflow_server.uri})
    doc["data"]["sizes"] = [4096]  # 128 steps
    doc["eval"].update(points=6, metrics=["mse", "ls_ratio"])  # evals after steps 1, 3, 7, 18, 49, 128
    spec = validate(doc)
    (trial,) = expand(spec)
    done = threading.Event()
    outage = Outage(mlflow_server, postgres, trial,
                    StudyPaths(spec, tmp_path).storage / "trials" / trial.trial_id, done)
    outage.start()
    try:
        results = run_study(spec, tmp_path, progress_interval_s=60)
    finally:
        done.set()
        outage.join()
        if mlflow_server.proc is None:  # leave the module's server up, whatever happened
            mlflow_server.start()
    assert outage.error is None, repr(outage.error)
    assert outage.buffered_steps and set(outage.buffered_steps) <= set(eval_steps(trial))
    assert not [r for r in results if r.error]
    assert_every_point_once(MlflowClient(mlflow_server.uri), spec)
