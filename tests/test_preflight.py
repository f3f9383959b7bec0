"""Problems that can be seen before any trial starts are reported before any trial starts."""

from __future__ import annotations

import os
import subprocess

import pytest
import ray

from reliscale import tracking
from reliscale.driver.study import run_study
from reliscale.spec.schema import SpecError, expand, load_spec, validate

from conftest import tiny_icl_spec


@pytest.fixture(autouse=True)
def no_ray_started():
    yield
    assert not ray.is_initialized(), "a pre-flight failure must come before Ray is started"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; the read-only mount case below covers it")
def test_unwritable_storage_path_fails_before_any_trial(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    spec = validate(tiny_icl_spec(storage={"path": str(locked / "ckpt")}))
    with pytest.raises(SpecError, match=r"storage.path: .*locked/ckpt' is not writable"):
        run_study(spec, tmp_path)


def test_storage_path_on_a_read_only_filesystem_fails_before_any_trial(tmp_path):
    spec = validate(tiny_icl_spec(storage={"path": "/proc/reliscale-ckpt"}))
    with pytest.raises(SpecError, match=r"storage.path: '/proc/reliscale-ckpt' is not writable"):
        run_study(spec, tmp_path)


@pytest.fixture
def full_disk(tmp_path):
    """A real filesystem with no space left: a 16 KiB tmpfs, filled."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'fill'}", "bs=1k", "count=64"], capture_output=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_fails_before_any_trial(tmp_path, full_disk):
    spec = validate(tiny_icl_spec(storage={"path": str(full_disk)}))
    with pytest.raises(SpecError, match=r"storage.path: .* is not writable \(No space left on device\)"):
        run_study(spec, tmp_path)


def test_unreachable_tracking_uri_fails_before_any_trial(tmp_path):
    # With MLflow's own client retries left on: the /health probe answers in seconds, not minutes.
    spec = validate(tiny_icl_spec(tracking={"uri": "http://127.0.0.1:9"}))  # discard port: refused
    with pytest.raises(SpecError, match=r"tracking.uri: 'http://127.0.0.1:9' is unreachable"):
        run_study(spec, tmp_path)


def test_trial_params_hold_the_axes_and_costs_only(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-log")
    trial = expand(validate(tiny_icl_spec()))[0]
    params = tracking.trial_params(trial, {"n_params": 10, "n_params_nonembedding": 8}, 1e9)
    assert set(params) == {"trial_id", "family", "size", "data_size", "data_unit", "task", "flops",
                           "objective", "technique", "mixture", "seed", "zero_stage", "workers",
                           "precision", "batch_size", "lr", "weight_decay", "n_params", "n_params_nonembedding"}
    assert "do-not-log" not in str(params)


def test_a_missing_dataset_is_refused_before_any_trial(repo, tmp_path):
    spec = load_spec(repo / "jobs" / "lm_ladder_1b.yaml")
    with pytest.raises(SpecError, match=r"data.path: '/mnt/shared/data/web_code' is not a prepared dataset on "
                                        r"this machine \(no manifest.json\)"):
        run_study(spec, tmp_path)
    assert not (tmp_path / spec.name).exists()
