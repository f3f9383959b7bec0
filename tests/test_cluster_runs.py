"""The driver as a user runs it: `ray job submit` to a running cluster, and `resume` after the
driver is killed mid-study. Real `ray start`, real subprocesses, real MLflow sqlite."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial_runs(db: Path, study: str) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(study)
    return [] if exp is None else client.search_runs([exp.experiment_id], "tags.`reliscale.role` = 'trial'")


@pytest.fixture
def ray_head():
    """A Ray head on loopback, started with `ray start` as a user would, stopped afterwards."""
    port, dash = free_port(), free_port()
    # As a user with the venv active: `reliscale` on PATH for the job's entrypoint.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    started = subprocess.run([BIN / "ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                              str(port), "--num-cpus", "2", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                              str(dash), "--temp-dir", temp], env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    yield f"http://127.0.0.1:{dash}", env
    subprocess.run([BIN / "ray", "stop", "--force"], env=env, capture_output=True)
    shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_a_study_to_success(repo, tmp_path, ray_head):
    address, env = ray_head
    root = tmp_path / "studies"
    out = subprocess.run(
        [BIN / "ray", "job", "submit", "--address", address, "--working-dir", str(repo),
         "--runtime-env", str(repo / "jobs" / "runtime_env.yaml"), "--",
         "reliscale", "run", "jobs/icl_tiny.yaml", "--root", str(root), "--progress-every", "60"],
        env=env, capture_output=True, text=True, timeout=900, cwd=repo)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in out.stdout.lower()
    runs = trial_runs(root / "icl_tiny" / "mlflow.db", "icl_tiny")
    assert sorted(r.data.tags["reliscale.trial_id"] for r in runs) == [
        "decoder-S0_D2.56e2_erm_none_s0", "decoder-S0_D5.12e2_erm_none_s0"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_resume_after_the_driver_is_killed_does_not_rerun_finished_trials(repo, tmp_path):
    root = tmp_path / "studies"
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    cmd = [BIN / "reliscale", "run", "jobs/icl_tiny.yaml", "--root", str(root),
           "--set", "data.sizes=[256, 512, 1024]", "--set", "resources.max_concurrent_trials=1",
           "--progress-every", "60"]
    driver = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    db = root / "icl_tiny" / "mlflow.db"
    deadline = time.monotonic() + 600
    finished = []
    while time.monotonic() < deadline and not finished:
        time.sleep(2)
        if not db.exists():
            continue
        try:  # the driver may still be creating the store's tables
            finished = [r for r in trial_runs(db, "icl_tiny") if r.info.status == "FINISHED"]
        except Exception:
            continue
    assert finished, "no trial finished in time"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    driver.wait()
    subprocess.run([BIN / "ray", "stop", "--force"], capture_output=True)
    done_before = {r.data.tags["reliscale.trial_id"]: r for r in finished}
    client = MlflowClient(f"sqlite:///{db}")
    history_before = {tid: len(client.get_metric_history(r.info.run_id, "eval/id/mse"))
                      for tid, r in done_before.items()}

    out = subprocess.run([BIN / "reliscale", "resume", "icl_tiny", "--root", str(root), "--progress-every", "60"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = trial_runs(db, "icl_tiny")
    ids = [r.data.tags["reliscale.trial_id"] for r in runs]
    assert len(ids) == len(set(ids)) == 3  # no duplicate child runs
    for r in runs:
        assert r.info.status == "FINISHED"
        tid = r.data.tags["reliscale.trial_id"]
        if tid in done_before:  # not re-run: same end time, no extra metric points
            assert r.info.end_time == done_before[tid].info.end_time
            assert len(client.get_metric_history(r.info.run_id, "eval/id/mse")) == history_before[tid]
