"""The study's MLflow store: status only reads it, runs are listed page by page, each kind of run
carries its role and the study's tag, and the tag names load without MLflow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from reliscale import tracking
from reliscale.cli import main
from reliscale.driver.paths import SPEC_FILE, StudyPaths
from reliscale.driver.status import study_status
from reliscale.spec.schema import dump_spec, expand, validate

from conftest import tiny_icl_spec

SIZES = [256, 512, 1024, 2048, 4096, 8192, 16384]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty sqlite store, made once: creating MLflow's tables takes seconds."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def store_at(empty_store: Path, db: Path) -> str:
    """A copy of the empty store at `db`; returns its URI."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, db)
    return f"sqlite:///{db}"


@pytest.fixture
def spec():
    doc = tiny_icl_spec("unrun")
    doc["data"]["sizes"] = SIZES
    return validate(doc)


def test_status_without_a_store_lists_every_trial_pending_and_creates_no_store(spec, tmp_path, capsys):
    paths = StudyPaths(spec, tmp_path)
    rows = study_status(spec, tmp_path)
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in expand(spec)]
    assert {r["state"] for r in rows} == {"PENDING"} and {r["data_seen"] for r in rows} == {0}
    err = capsys.readouterr().err
    assert f"no MLflow runs yet for study 'unrun' at {paths.tracking_uri}" in err
    assert not (paths.dir / "mlflow.db").exists()


def test_reliscale_status_on_a_store_without_the_study_creates_no_experiment(spec, tmp_path, capsys,
                                                                           empty_store):
    paths = StudyPaths(spec, tmp_path)
    client = MlflowClient(store_at(empty_store, paths.dir / "mlflow.db"))
    (paths.dir / SPEC_FILE).write_text(dump_spec(spec))
    client.create_experiment("another study")  # the store exists, this study's experiment does not
    before = sorted(e.name for e in client.search_experiments())

    assert main(["status", "unrun", "--root", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"no MLflow runs yet for study 'unrun' at {paths.tracking_uri}" in err
    assert out.count("PENDING") == len(SIZES) and f"0/{len(SIZES)} trials finished" in out
    assert client.get_experiment_by_name("unrun") is None
    assert sorted(e.name for e in client.search_experiments()) == before


def test_status_with_an_experiment_but_no_parent_run_creates_no_run(spec, tmp_path, capsys, empty_store):
    paths = StudyPaths(spec, tmp_path)
    client = MlflowClient(store_at(empty_store, paths.dir / "mlflow.db"))
    exp = client.create_experiment("unrun")
    assert {r["state"] for r in study_status(spec, tmp_path)} == {"PENDING"}
    assert "no MLflow runs yet" in capsys.readouterr().err
    assert client.search_runs([exp]) == []


def test_trial_runs_are_read_page_by_page_until_the_last(spec, tmp_path, empty_store):
    runs = tracking.StudyRuns(store_at(empty_store, tmp_path / "mlflow.db"), spec.name)
    trials = expand(spec)
    ids = {t.trial_id: runs.trial_run(t, {"trial_id": t.trial_id}) for t in trials}
    assert len(ids) == 7
    by_page = runs.trial_runs(page_size=3)  # pages of 3, 3 and 1
    assert {tid: r.info.run_id for tid, r in by_page.items()} == ids
    assert runs.trial_runs().keys() == by_page.keys()


def test_each_child_run_carries_its_role_and_the_study_and_is_found_again(spec, tmp_path, empty_store):
    uri = store_at(empty_store, tmp_path / "mlflow.db")
    runs = tracking.StudyRuns(uri, spec.name)
    trial, finetune = expand(spec)[:2]
    trial_id = runs.trial_run(trial, {"trial_id": trial.trial_id, "seed": "0"})
    finetune_id = runs.trial_run(finetune, {"trial_id": finetune.trial_id}, role=tracking.FINETUNE)
    patch = runs.patch_run("t_patch", {"alphas": "0,1"})

    again = tracking.StudyRuns(uri, spec.name)  # a resumed driver finds every run again
    assert again.parent_id == runs.parent_id
    assert again.trial_run(trial, {"trial_id": trial.trial_id, "lr": "0.1"}) == trial_id
    assert again.patch_run("t_patch", {}).info.run_id == patch.info.run_id
    client = MlflowClient(uri)
    order = (runs.parent_id, trial_id, finetune_id, patch.info.run_id)
    tags = {rid: client.get_run(rid).data.tags for rid in order}
    # the tag names as docs/mlflow-layout.md gives them
    assert [t["reliscale.role"] for t in tags.values()] == ["study", "trial", "finetune", "patch"]
    assert {t["reliscale.study"] for t in tags.values()} == {spec.name}
    assert {t["mlflow.parentRunId"] for t in list(tags.values())[1:]} == {runs.parent_id}
    assert tags[trial_id]["reliscale.seed"] == "0"
    assert tags[patch.info.run_id]["reliscale.patch_id"] == "t_patch"
    params = client.get_run(trial_id).data.params  # those it lacked were added when found again
    assert params == {"trial_id": trial.trial_id, "seed": "0", "lr": "0.1"}
    assert again.trial_runs().keys() == {trial.trial_id, finetune.trial_id}  # not the α sweep


def test_the_tag_names_load_without_mlflow_and_the_store_names_load_on_first_use():
    code = ("import sys, reliscale.tracking.schema, reliscale.tracking as t\n"
            "print('mlflow' in sys.modules, t.OUTCOME, t.PRUNED)\n"
            "from reliscale.tracking import TrialLogger, with_retries\n"
            "print('mlflow' in sys.modules, TrialLogger.__module__, with_retries.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines() == ["False reliscale.outcome pruned",
                                "True reliscale.tracking.logger reliscale.tracking.store"]
