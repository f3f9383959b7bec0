"""The driver as a user runs it: `ray job submit` to a running cluster, the job stopped mid-study
(its driver killed) and `reliscale resume` submitted as the next job. Real `ray start`, real
subprocesses, real MLflow sqlite."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


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


def test_a_submitted_study_stopped_mid_way_resumes_as_a_new_job_without_rerunning_finished_trials(
        repo, tmp_path, ray_head):
    address, env = ray_head
    root = tmp_path / "studies"
    db = root / "icl_tiny" / "mlflow.db"

    def submit(*entrypoint: str, wait: bool) -> subprocess.CompletedProcess:
        # `ray job submit` quotes each argument of the entrypoint for the shell it runs it in.
        cmd = [BIN / "ray", "job", "submit", "--address", address, "--working-dir", str(repo),
               "--runtime-env", str(repo / "jobs" / "runtime_env.yaml"), *([] if wait else ["--no-wait"]),
               "--", *entrypoint]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=repo)

    first = submit("reliscale", "run", "jobs/icl_tiny.yaml", "--root", str(root), "--set",
                   "data.sizes=[256, 512, 1024]", "--set", "resources.max_concurrent_trials=1",
                   "--progress-every", "60", wait=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    job_id = re.search(r"(raysubmit_\w+)", first.stdout).group(1)
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
    stopped = subprocess.run([BIN / "ray", "job", "stop", "--address", address, job_id], env=env,
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    done_before = {r.data.tags["reliscale.trial_id"]: r for r in finished}
    assert len(done_before) < 3, "the study ended before it could be stopped"
    client = MlflowClient(f"sqlite:///{db}")
    history_before = {tid: len(client.get_metric_history(r.info.run_id, "eval/id/mse"))
                      for tid, r in done_before.items()}

    second = submit("reliscale", "resume", "icl_tiny", "--root", str(root), "--progress-every", "60", wait=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "succeeded" in second.stdout.lower()
    runs = trial_runs(db, "icl_tiny")
    ids = sorted(r.data.tags["reliscale.trial_id"] for r in runs)
    assert ids == [f"decoder-S0_D{d}_erm_none_s0" for d in ("1.024e3", "2.56e2", "5.12e2")]  # no duplicates
    for r in runs:
        assert r.info.status == "FINISHED"
        tid = r.data.tags["reliscale.trial_id"]
        if tid in done_before:  # not re-run: same end time, no extra metric points
            assert r.info.end_time == done_before[tid].info.end_time
            assert len(client.get_metric_history(r.info.run_id, "eval/id/mse")) == history_before[tid]
