"""Trials end to end: Ray Tune grid -> Ray Train workers -> DeepSpeed ZeRO on CPU -> MLflow.

Real Ray (a local 2-CPU cluster), real DeepSpeed (gloo, 2 workers), real MLflow (sqlite).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray.util.placement_group import placement_group_table, remove_placement_group
from ray.util.state import list_actors

from reliscale.driver.status import format_status, study_status
from reliscale.driver.study import StudyPaths, run_study
from reliscale.evaluation.icl import icl_metrics
from reliscale.patch.interpolate import REPORTED, eval_tasks, predict_like_trial
from reliscale.spec.schema import expand, validate
from reliscale.tasks import build_model
from reliscale.trial.trainer import recorded_placement_group
from reliscale.worker.checkpoints import checkpoint_weights, final_checkpoint
from scalinglaws.cli import main as fit_main
from scalinglaws.load import final_points, load_study

from conftest import tiny_icl_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    marker = tmp_path_factory.mktemp("faults")
    fault = f"kill_worker:study=faulty:rank=1:step=40:marker={marker}"
    ray.init(num_cpus=2, runtime_env={"env_vars": {"RELISCALE_FAULT": fault}})
    yield marker
    ray.shutdown()


def child_runs(spec, root) -> dict:
    paths = StudyPaths(spec, root)
    client = MlflowClient(paths.tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([exp.experiment_id], "tags.`reliscale.role` = 'trial'")
    return client, {r.data.tags["reliscale.trial_id"]: r for r in runs}


def test_grid_of_2x2_trials_logs_one_child_run_each_with_full_histories(ray_session, tmp_path):
    doc = tiny_icl_spec("grid", model={"family": "decoder", "sizes": ["S0", "S1"]})
    doc["data"]["sizes"] = [256, 512]
    spec = validate(doc)
    results = run_study(spec, tmp_path, progress_interval_s=60)
    assert not [r for r in results if r.error]
    client, runs = child_runs(spec, tmp_path)
    assert sorted(runs) == sorted(t["trial_id"] for t in (r.config for r in results))
    for tid, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["zero_stage"] == "2" and int(run.data.params["n_params"]) > 0
        assert run.data.tags["mlflow.parentRunId"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/id/mse")]
        data_size = int(run.data.params["data_size"])
        assert steps == sorted(set(steps)) and steps[-1] == data_size, (tid, steps)
        assert len(steps) == 3  # eval.points
        for split in ("id", "ood_class", "wnorm", "xscale"):
            history = client.get_metric_history(run.info.run_id, f"eval/{split}/ls_ratio")
            assert [m.step for m in history] == steps and all(math.isfinite(m.value) for m in history)
        names = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
        assert "eval/icl_curve_id.png" in names and "eval/icl_curve_id.csv" in names

    # each trial's Ray Train run started its workers and the one helper they synchronise through,
    # none of the five actors a trial does without (reliscale.trial.trainer), and left no placement
    # group holding CPUs
    started = {a.class_name for a in list_actors(limit=1000, raise_on_missing_output=False)}
    assert {"RayTrainWorker", "SynchronizationActor"} <= started, started
    assert not {"TrainController", "_QueueActor", "DatasetManager", "PreemptionWatcher",
                "PlacementGroupCleaner"} & started, started
    assert {pg["state"] for pg in placement_group_table().values()} == {"REMOVED"}

    # `reliscale status` reads the same store
    rows = study_status(spec, tmp_path)
    assert [r["state"] for r in rows] == ["FINISHED"] * 4
    assert all(r["data_seen"] == r["data_size"] for r in rows)
    assert "4/4 trials finished" in format_status(rows)

    # the analysis CLI fits a law straight from the study's MLflow experiment
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = fit_main(["fit", "--experiment", "grid", "--tracking-uri", StudyPaths(spec, tmp_path).tracking_uri,
                         "--metric", "eval/id/mse", "--form", "power", "--x", "data_size", "--json"])
    assert code == 0  # one point per trial (its final eval): too few for the 5-parameter joint law
    fitted = json.loads(out.getvalue())
    assert fitted["n_points"] == 4 and set(fitted["params"]) == {"E", "A", "alpha"}


@pytest.mark.parametrize("zero_stage,why", [(0, "training loss nan"), (2, "DeepSpeed skipped all")])
def test_a_diverging_trial_stops_as_diverged_is_not_rerun_and_is_left_out_of_fits(ray_session, tmp_path,
                                                                                   zero_stage, why):
    # lr 1e6: without ZeRO the loss turns NaN; ZeRO-2's optimizer skips every step whose gradients
    # are not finite, so its loss stays finite while the weights stop moving.
    doc = tiny_icl_spec(f"diverge{zero_stage}", train={"zero_stage": zero_stage, "optimizer": {"lr": 1.0e6}})
    doc["data"]["sizes"] = [1024]  # 32 steps, eval points after steps 1, 6 and 32
    spec = validate(doc)
    (result,) = run_study(spec, tmp_path, progress_interval_s=60)
    assert result.error is None and why in result.metrics["diverged"]  # done, so Tune does not retry it
    client, runs = child_runs(spec, tmp_path)
    (run,) = runs.values()
    assert run.info.status == "FINISHED" and run.data.tags["reliscale.outcome"] == "diverged"
    assert why in run.data.tags["reliscale.diverged"]
    stopped = run.data.metrics["train/diverged_at"]
    assert stopped == 192 < 1024  # at the eval point after step 6, not after the whole budget
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert max(m.step for m in losses) == stopped
    # logged at the one eval point before it (after step 1: 32 examples)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/skipped_steps")] == [32]

    rows = study_status(spec, tmp_path)
    assert rows[0]["state"] == "DIVERGED" and why in rows[0]["diverged"]
    text = format_status(rows)
    assert "0/1 trials finished, 1 diverged" in text and f"(diverged: {rows[0]['diverged']})" in text
    with pytest.warns(UserWarning, match="left out of the final points.*diverged"):
        assert final_points(load_study(spec.name, StudyPaths(spec, tmp_path).tracking_uri)).empty

    run_study(spec, tmp_path, progress_interval_s=60)  # a second run of the study trains nothing again
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == len(losses)


def test_zero3_trial_with_activation_checkpointing_trains_checkpoints_every_rank_and_consolidates(ray_session, tmp_path):
    spec = validate(tiny_icl_spec("zero3", train={"zero_stage": 3, "activation_checkpointing": True}))
    results = run_study(spec, tmp_path, progress_interval_s=60)
    assert not [r for r in results if r.error]
    client, runs = child_runs(spec, tmp_path)
    (run,) = runs.values()
    loss = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert loss[-1] < loss[0]
    (trial,) = expand(spec)
    ckpt = final_checkpoint(StudyPaths(spec, tmp_path).trials_dir / trial.trial_id)
    shards = sorted(p.name for p in (ckpt / "ds").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_model_states.pt" in shards
    assert "zero_pp_rank_1_mp_rank_00_model_states.pt" in shards
    shard = torch.load(ckpt / "ds" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert any(v.numel() == 0 for v in shard.values())  # ZeRO-3 shards hold no full parameters

    # Consolidated (what PAINT interpolates): full shapes, and the model scores what the trial logged.
    weights = checkpoint_weights(ckpt)
    model = build_model(trial)
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    model.eval()
    torch.set_num_threads(1)  # as in the trial's workers: same reduction order, same bits
    (task,) = eval_tasks(trial, [dict(trial.mixture)])
    got, _ = icl_metrics(predict_like_trial(model, task.report, spec.resources.workers), task.report)
    final = {m: max(client.get_metric_history(run.info.run_id, f"eval/id/{m}"), key=lambda x: x.step).value
             for m in REPORTED}
    assert {m: got[m] for m in REPORTED} == final


def final_metrics(client, run) -> dict[str, float]:
    keys = [k for k in run.data.metrics if k.startswith("eval/")]
    out = {}
    for k in keys:
        history = client.get_metric_history(run.info.run_id, k)
        out[k] = max(history, key=lambda m: m.step).value
    return out


def test_killed_worker_resumes_from_checkpoint_and_matches_an_uninterrupted_run(ray_session, tmp_path):
    doc = tiny_icl_spec("faulty")
    doc["data"]["sizes"] = [2048]  # 64 steps of 32 prompts
    doc["eval"]["points"] = 4  # checkpoints after steps 1, 4, 16, 64: the kill after step 40 resumes at 16
    doc["resources"]["max_failures"] = 1
    faulty = validate(doc)
    reference = validate({**doc, "name": "reference"})

    assert not [r for r in run_study(faulty, tmp_path, progress_interval_s=60) if r.error]
    assert any(ray_session.iterdir()), "the fault never fired"
    assert not [r for r in run_study(reference, tmp_path, progress_interval_s=60) if r.error]

    client, faulty_runs = child_runs(faulty, tmp_path)
    ref_client, ref_runs = child_runs(reference, tmp_path)  # each study has its own store
    (faulty_run,), (ref_run,) = faulty_runs.values(), ref_runs.values()
    got, want = final_metrics(client, faulty_run), final_metrics(ref_client, ref_run)
    assert got.keys() == want.keys() and got
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
    # Nothing logged twice: each eval point appears once although steps 17..40 ran twice.
    steps = [m.step for m in client.get_metric_history(faulty_run.info.run_id, "eval/id/mse")]
    assert steps == [32, 128, 512, 2048]


def test_a_trial_whose_actor_is_killed_gets_its_cpus_back_and_finishes_on_retry(ray_session, tmp_path):
    """The trial actor runs the Train controller, which owns its workers' placement group; the group
    lives as long as the job: killed, the actor cannot remove it, and a group left holding 1.5 of the
    2 CPUs would keep the retried trial from ever starting. The retry removes it (reliscale.trial.trainer).
    Running the controller does not load torch into the trial actor, which never touches a tensor."""
    doc = tiny_icl_spec("trial_killed")
    doc["data"]["sizes"] = [4096]
    doc["resources"] = {"workers": 1, "cpus_per_worker": 1.5, "max_concurrent_trials": 1}
    spec = validate(doc)
    (trial,) = expand(spec)
    key = f"{trial.study}/{trial.trial_id}"
    killed, leaked, torch_mapped = [], [], []

    def maps_torch(pid: int) -> bool:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()

    def kill_the_trial_then_wait_for_the_retrys_workers():
        while not (first := recorded_placement_group(key)):
            time.sleep(0.2)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
            workers = [a for a in alive if a.class_name == "RayTrainWorker"]
            if worker_has_torch := bool(workers) and maps_torch(workers[0].pid):
                break
            time.sleep(0.2)
        (trial_actor,) = [a for a in alive if a.class_name.endswith("ImplicitFunc")]  # Tune's function trainable
        # the worker has torch loaded; the trial actor, whose controller started that worker, must not
        torch_mapped.append((worker_has_torch, maps_torch(trial_actor.pid)))
        os.kill(trial_actor.pid, signal.SIGKILL)
        killed.append(first)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = recorded_placement_group(key)
            if now and now != first and placement_group_table(now).get("state") == "CREATED":
                return
            time.sleep(0.5)
        leaked.append(first)
        remove_placement_group(first)  # so that the study ends and the test fails instead of hanging

    watcher = threading.Thread(target=kill_the_trial_then_wait_for_the_retrys_workers, daemon=True)
    watcher.start()
    results = run_study(spec, tmp_path, progress_interval_s=60)
    watcher.join(timeout=180)
    assert killed and not leaked
    assert torch_mapped == [(True, False)]  # (worker, trial actor)
    assert not [r for r in results if r.error]
    _, runs = child_runs(spec, tmp_path)
    assert [r.info.status for r in runs.values()] == ["FINISHED"]
    assert placement_group_table(killed[0])["state"] == "REMOVED"
    assert recorded_placement_group(key) is None
