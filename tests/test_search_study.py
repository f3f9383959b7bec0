"""ASHA pruning end to end: a two-size, two-LR ICL sweep on real Ray, DeepSpeed and MLflow sqlite.

Trials start one LR at a time (every cell's lr 1e-3, then every cell's lr 0.3), so in each cell
the good LR has reached every rung before the bad one gets there: the bad one is pruned at the
first rung it reaches (step 4 of 64, progress 0.0625 >= rung 0.05), deterministically. lr 3 is
far worse there (eval/id/mse in the hundreds against ~1.3 at lr 1e-3) yet finite.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from reliscale.spec.schema import validate

from conftest import tiny_icl_spec

SIZES = ["S0", {"width": 32, "depth": 1, "heads": 2}]
DATA = 512  # examples: 64 steps of 8; evals at steps 1, 4, 16, 64; a progress-only report at 50


def search_spec():
    return validate(tiny_icl_spec(
        "asha",
        model={"family": "decoder", "sizes": SIZES},
        data={"task": "icl", "dim": 3, "points": 8, "sizes": [DATA], "batch_size": 8},
        eval={"points": 4, "examples": 64},
        train={"zero_stage": 2, "optimizer": {"lr": [1e-3, 3.0]}},
        resources={"workers": 1, "cpus_per_worker": 0.99, "max_concurrent_trials": 2},
        search={"scheduler": "asha", "metric": "eval/id/mse", "grace_fraction": 0.05, "reduction_factor": 2},
    ))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import ray
    from mlflow.tracking import MlflowClient
    from ray.util import placement_group_table

    from reliscale.driver.study import StudyPaths, run_study

    root = tmp_path_factory.mktemp("search")
    spec = search_spec()
    client = MlflowClient(StudyPaths(spec, root).tracking_uri)
    out = io.StringIO()
    ray.init(num_cpus=2)
    try:
        with contextlib.redirect_stdout(out):
            first = run_study(spec, root, progress_interval_s=600)
        runs = _runs(client, spec.name)
        losses = {tid: _loss_steps(client, r) for tid, r in runs.items()}
        leftover = [pg for pg in placement_group_table().values() if pg["state"] != "REMOVED"]
        second = run_study(spec, root, progress_interval_s=600)
    finally:
        ray.shutdown()
    return dict(spec=spec, root=root, client=client, first=first, second=second, runs=runs,
                losses=losses, leftover=leftover, out=out.getvalue())


def _runs(client, name: str) -> dict:
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`reliscale.role` = 'trial'")
    return {r.data.tags["reliscale.trial_id"]: r for r in runs}


def _loss_steps(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))


def _lr(tid: str) -> str:
    return "good" if "_lr0.001_" in tid else "bad"


def test_the_bad_lr_of_each_cell_is_pruned_and_its_run_finished(study):
    runs = study["runs"]
    assert len(runs) == 4 and not [r for r in study["first"] if r.error]
    for tid, run in runs.items():
        assert run.info.status == "FINISHED", tid
        if _lr(tid) == "bad":
            assert run.data.tags.get("reliscale.outcome") == "pruned", tid
            # stopped at its first rung (step 4); its worker may log one more eval point before the stop lands
            assert max(study["losses"][tid]) < DATA, tid
        else:
            assert "reliscale.outcome" not in run.data.tags, tid
            assert max(study["losses"][tid]) == DATA, tid


def test_the_live_view_names_each_pruned_trial_and_where(study):
    out = study["out"]
    for tid in study["runs"]:
        if _lr(tid) == "bad":
            assert f"PRUNED {tid} at 32 / 512 (asha, eval/id/mse)" in out
        else:
            assert f"finished {tid}" in out
    assert "pruned 2" in out


def test_pruned_trials_leave_no_placement_group_behind(study):
    assert study["leftover"] == []


def test_a_second_run_does_not_rerun_pruned_trials(study):
    assert not [r for r in study["second"] if r.error]
    again = _runs(study["client"], study["spec"].name)
    for tid, run in again.items():
        assert _loss_steps(study["client"], run) == study["losses"][tid], tid
        assert run.info.end_time == study["runs"][tid].info.end_time, tid
        assert run.data.tags.get("reliscale.outcome") == study["runs"][tid].data.tags.get("reliscale.outcome")


def test_status_shows_pruned_trials(study):
    from reliscale.driver.status import format_status, study_status

    rows = study_status(study["spec"], study["root"])
    assert {r["trial_id"]: r["state"] for r in rows} == {
        tid: "PRUNED" if _lr(tid) == "bad" else "FINISHED" for tid in study["runs"]}
    assert "2/4 trials finished, 2 pruned" in format_status(rows)


def test_final_points_pick_the_unpruned_lr_in_each_cell(study):
    from scalinglaws.load import final_points, load_study

    df = load_study(study["spec"].name, study["client"].tracking_uri)
    best = final_points(df, best_of=["lr"], by="eval/id/mse")
    assert sorted(best["size"]) == sorted(["S0", _custom_size_name(study)])
    assert list(best["lr"]) == [1e-3, 1e-3]
    assert [w["candidates"] for w in best.attrs["winners"]] == [1, 1]  # the pruned trials are no candidates


def _custom_size_name(study) -> str:
    return next(r.data.params["size"] for r in study["runs"].values() if r.data.params["size"] != "S0")
