"""Shared fixtures: paths, and small specs written as YAML like a researcher would."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec dict to a YAML file and return its path."""

    def write(doc: dict, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


def tiny_icl_spec(name: str = "tiny", **over) -> dict:
    """A small valid ICL spec; keyword arguments replace top-level sections."""
    doc = {
        "name": name,
        "model": {"family": "decoder", "sizes": ["S0"]},
        "data": {"task": "icl", "dim": 3, "points": 8, "sizes": [256], "batch_size": 32},
        "eval": {"points": 3, "examples": 64},
        "train": {"zero_stage": 2},
        "resources": {"workers": 2, "cpus_per_worker": 0.49, "max_concurrent_trials": 2},
    }
    doc.update(over)
    return doc


def run_trials(spec, root: Path):
    """Run a study on a fresh local Ray (2 CPUs); return its MLflow client, its trial runs and
    the Tune results."""
    import ray
    from mlflow.tracking import MlflowClient

    from reliscale.driver.study import StudyPaths, run_study

    ray.init(num_cpus=2)
    try:
        results = run_study(spec, root, progress_interval_s=60)
    finally:
        ray.shutdown()
    assert not [r for r in results if r.error]
    client = MlflowClient(StudyPaths(spec, root).tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    return client, client.search_runs([exp.experiment_id], "tags.`reliscale.role` = 'trial'"), results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rank0_script(script: str, folder: Path) -> subprocess.CompletedProcess:
    """Run `script` as a one-process distributed job (argv: folder, a free MASTER_PORT) from the repo."""
    return subprocess.run([sys.executable, "-c", script, str(folder), str(free_port())], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
