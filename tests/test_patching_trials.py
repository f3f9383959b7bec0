"""PAINT end to end: real Ray trials, DeepSpeed checkpoints (ZeRO-2; ZeRO-3 in test_trials), MLflow runs.

The smoke job trains on dense linear functions, fine-tunes on sinusoids and sweeps α.
α = 0 and α = 1 must reproduce, bit for bit, what the two endpoint trials logged at their
final eval, and some α in between must beat both on the average of the two tasks.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from reliscale.cli import main
from reliscale.driver.study import StudyPaths, run_study
from reliscale.evaluation.icl import icl_metrics
from reliscale.patch.interpolate import REPORTED, eval_tasks, predict_like_trial
from reliscale.spec.schema import expand, load_spec, validate
from reliscale.tasks import build_model
from reliscale.worker.checkpoints import checkpoint_weights, final_checkpoint
from scalinglaws.load import load_study

from conftest import tiny_icl_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, _temp_dir="/tmp/rs_patch")
    yield
    ray.shutdown()


def runs_by_role(spec, root) -> tuple[MlflowClient, dict[str, dict[str, object]]]:
    client = MlflowClient(StudyPaths(spec, root).tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    out: dict[str, dict[str, object]] = {}
    for r in client.search_runs([exp.experiment_id]):
        out.setdefault(r.data.tags["reliscale.role"], {})[r.info.run_name] = r
    return client, out


def final(client, run, key: str) -> float:
    return max(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step).value


def by_alpha(client, run, key: str) -> dict[float, float]:
    return {m.step / 1000: m.value for m in client.get_metric_history(run.info.run_id, key)}


def test_smoke_job_endpoints_match_the_trials_exactly_and_an_interior_alpha_beats_both(repo, tmp_path):
    spec = load_spec(repo / "jobs" / "icl_patch_smoke.yaml")
    results = run_study(spec, tmp_path, progress_interval_s=120)
    assert not [r for r in results if r.error]
    client, runs = runs_by_role(spec, tmp_path)
    (base,), (ft,), (patch,) = runs["trial"].values(), runs["finetune"].values(), runs["patch"].values()
    assert ft.data.params["base_trial"] == base.info.run_name and ft.data.params["lr"] == "0.001"

    for m in REPORTED:  # α=0 is the base trial, α=1 the fine-tuned trial: same float bits
        assert by_alpha(client, patch, f"patch/dense_linear/{m}")[0.0] == final(client, base, f"eval/id/{m}"), m
        assert by_alpha(client, patch, f"patch/sinusoid/{m}")[1.0] == final(client, ft, f"eval/id/{m}"), m

    dense, sine = (by_alpha(client, patch, f"patch/{t}/mse") for t in ("dense_linear", "sinusoid"))
    alphas = sorted(dense)
    assert alphas == [round(0.1 * i, 1) for i in range(11)]
    avg = {a: (dense[a] + sine[a]) / 2 for a in alphas}
    assert dense[1.0] > dense[0.0] and sine[1.0] < sine[0.0]  # fine-tuning trades one task for the other
    assert min(avg[a] for a in alphas[1:-1]) < min(avg[0.0], avg[1.0])

    held = by_alpha(client, patch, "patch_heldout/average/mse")
    chosen = float(patch.data.tags["reliscale.patch.alpha"])
    assert chosen == min(alphas, key=lambda a: held[a]) == patch.data.metrics["patch/alpha"]
    assert held != by_alpha(client, patch, "patch/average/mse")  # selected on other prompts
    assert {a.path for a in client.list_artifacts(patch.info.run_id, "patch")} == {
        "patch/tradeoff.png", "patch/curve.csv"}
    # Fine-tunes and patch runs stay out of scaling-law fits.
    assert set(load_study(spec.name, StudyPaths(spec, tmp_path).tracking_uri)["trial_id"]) == {base.info.run_name}

    # The same sweep from the command line, between the two trials' checkpoint folders.
    trials = StudyPaths(spec, tmp_path).trials_dir
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["patch", "--base", str(trials / base.info.run_name), "--finetuned",
                     str(trials / ft.info.run_name), "--alphas", "0,0.5,1", "--eval", "sinusoid", "--no-log",
                     "--out", str(tmp_path / "cli")])
    assert code == 0, out.getvalue()
    rows = [line.split() for line in out.getvalue().splitlines() if line[:1].isdigit() or line.startswith("  ")]
    table = {float(r[0]): (float(r[1]), float(r[2])) for r in rows if len(r) == 5}
    for a in (0.0, 0.5, 1.0):
        assert table[a] == pytest.approx((dense[a], sine[a]), abs=1e-4)
    assert (tmp_path / "cli" / "tradeoff.png").stat().st_size > 0


def tiny_patch_spec(name: str, mode: str):
    """One worker per trial: the smoke job above is where 2-rank ZeRO-2 checkpoints are read back."""
    doc = tiny_icl_spec(name, patch={"tasks": [{"sinusoid": 1}, {"relu2nn": 1}], "mode": mode,
                                     "finetune_size": 128, "alphas": "0,0.5,1"},
                        resources={"workers": 1, "cpus_per_worker": 0.99, "max_concurrent_trials": 2})
    return validate(doc)


def test_sequential_patching_fine_tunes_the_patched_model_of_the_previous_stage(tmp_path):
    spec = tiny_patch_spec("sequential", "sequential")
    assert not [r for r in run_study(spec, tmp_path, progress_interval_s=120) if r.error]
    client, runs = runs_by_role(spec, tmp_path)
    (base,) = runs["trial"]
    stage1, stage2 = (runs["patch"][f"{base}_patch{k}"] for k in (1, 2))
    assert sorted(runs["finetune"]) == [f"{base}_ft1-sinusoid", f"{base}_ft2-relu2nn"]
    assert runs["finetune"][f"{base}_ft2-relu2nn"].data.params["init_from"] == f"{base}_patch1.pt"
    assert stage1.data.params["tasks"] == "dense_linear,sinusoid"
    assert stage2.data.params["tasks"] == "dense_linear,sinusoid,relu2nn"
    chosen = float(stage1.data.tags["reliscale.patch.alpha"])
    for t in ("dense_linear", "sinusoid"):  # stage 2 starts (α=0) from stage 1's chosen patch, exactly
        for m in REPORTED:
            assert by_alpha(client, stage2, f"patch/{t}/{m}")[0.0] == by_alpha(client, stage1, f"patch/{t}/{m}")[chosen]


def test_parallel_patching_interpolates_towards_the_mean_of_independent_fine_tunes(tmp_path):
    spec = tiny_patch_spec("parallel", "parallel")
    assert not [r for r in run_study(spec, tmp_path, progress_interval_s=120) if r.error]
    client, runs = runs_by_role(spec, tmp_path)
    (base,) = runs["trial"]
    fts = sorted(runs["finetune"])
    assert fts == [f"{base}_ft-relu2nn", f"{base}_ft-sinusoid"]
    assert all(runs["finetune"][f].data.params["init_from"].startswith("step_") for f in fts)
    (patch,) = runs["patch"].values()

    trials = StudyPaths(spec, tmp_path).trials_dir  # reference: numpy mean of the two fine-tuned copies
    states = [checkpoint_weights(final_checkpoint(trials / f)) for f in fts]
    mean = {k: torch.from_numpy(np.mean([s[k].numpy() for s in states], axis=0)) for k in states[0]}
    (trial,) = expand(spec)
    model = build_model(trial)
    model.load_state_dict(mean)
    model.eval()
    torch.set_num_threads(1)
    for task in eval_tasks(trial, [{"dense_linear": 1.0}, {"sinusoid": 1.0}, {"relu2nn": 1.0}]):
        got, _ = icl_metrics(predict_like_trial(model, task.report, 2), task.report)
        assert by_alpha(client, patch, f"patch/{task.name}/mse")[1.0] == pytest.approx(got["mse"], rel=1e-5)
