"""PAINT patching without Ray: α grids, interpolation, averaging, stages, the sweep, spec and CLI errors."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from reliscale.cli import main
from reliscale.evaluation.icl import icl_metrics
from reliscale.patch.alphas import parse_alphas
from reliscale.patch.interpolate import (
    REPORTED,
    average,
    eval_tasks,
    interpolate,
    predict_like_trial,
    sweep,
)
from reliscale.patch.stage import finetune_trial, stages
from reliscale.spec.schema import SpecError, expand, validate
from reliscale.tasks import build_model
from reliscale.worker.checkpoints import checkpoint_weights

from conftest import run_rank0_script, tiny_icl_spec


def patch_doc(**patch) -> dict:
    return tiny_icl_spec("patched", patch={"tasks": [{"sinusoid": 1}], "finetune_size": 64, **patch})


def test_alpha_grid_includes_the_stop_and_rejects_values_outside_0_1_or_on_one_step():
    assert parse_alphas("0:1:0.1") == tuple(round(0.1 * i, 9) for i in range(11))
    assert parse_alphas("1, 0,0.5,0.5") == (0.0, 0.5, 1.0)
    for bad in ("0:1:0", "0:2:0.5", "-0.1,1", "a:b:c", "", "0,0.0004,1"):
        with pytest.raises(ValueError, match="allowed"):
            parse_alphas(bad)


def test_interpolation_is_exact_at_both_ends_and_linear_between():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(5, 7, generator=g), "b": torch.randn(7, generator=g), "n": torch.tensor(3)}
    ft = {"w": torch.randn(5, 7, generator=g), "b": torch.randn(7, generator=g), "n": torch.tensor(3)}
    assert all(torch.equal(interpolate(base, ft, 0.0)[k], base[k]) for k in base)
    assert all(torch.equal(interpolate(base, ft, 1.0)[k], ft[k]) for k in base)
    for a in (0.1, 0.5, 0.9):
        mid = interpolate(base, ft, a)
        ref = (1 - a) * base["w"].double().numpy() + a * ft["w"].double().numpy()
        np.testing.assert_allclose(mid["w"].numpy(), ref, rtol=1e-6, atol=1e-6)
        assert mid["n"] == 3
    with pytest.raises(ValueError, match="shapes"):
        interpolate(base, {**ft, "b": torch.zeros(6)}, 0.5)


def test_parallel_average_is_the_elementwise_mean():
    states = [{"w": torch.full((2, 2), float(v))} for v in (1, 2, 6)]
    np.testing.assert_array_equal(average(states)["w"].numpy(), np.full((2, 2), 3.0))
    assert average(states[:1]) is states[0]


def test_modes_make_one_joint_finetune_parallel_finetunes_or_sequential_stages():
    tasks = [{"sinusoid": 1}, {"relu2nn": 2, "sparse_linear": 2}]
    joint = validate(patch_doc(tasks=tasks, mode="joint")).patch
    (stage,) = stages(joint)
    assert stage.finetune == [{"sinusoid": 1.0, "relu2nn": 0.5, "sparse_linear": 0.5}]  # tasks weigh equally
    assert stage.tasks == tasks
    (stage,) = stages(validate(patch_doc(tasks=tasks, mode="parallel")).patch)
    assert stage.finetune == tasks and stage.tasks == tasks
    seq = stages(validate(patch_doc(tasks=tasks, mode="sequential")).patch)
    assert [(s.finetune, s.tasks) for s in seq] == [([t], [t]) for t in tasks]


def test_finetune_trial_keeps_the_model_and_seed_and_takes_the_patch_data_and_lr():
    spec = validate(patch_doc(lr=5e-4, finetune_size=128))
    (base,) = expand(spec)
    ft = finetune_trial(base, {"sinusoid": 1.0}, 0, spec.patch)
    assert ft.trial_id == f"{base.trial_id}_ft-sinusoid"
    assert (ft.size, ft.seed, ft.family) == (base.size, base.seed, base.family)
    assert ft.data_size == 128 and ft.steps == 4 and dict(ft.mixture) == {"sinusoid": 1.0}
    assert ft.lr == 5e-4 and base.lr != 5e-4


def test_patch_section_errors_name_the_key_the_value_and_what_is_allowed():
    with pytest.raises(SpecError) as e:
        validate(patch_doc(mode="both", alphas="0:2:0.5", select_metric="accuracy"))
    text = str(e.value)
    assert "patch.mode: 'both' is not allowed" in text and "'joint', 'sequential' or 'parallel'" in text
    assert "patch.alphas: 1.5 is not allowed; allowed: numbers in [0, 1]" in text
    assert "patch.select_metric: 'accuracy'" in text
    with pytest.raises(SpecError, match=r"patch.tasks\[0\].sinusiod: not an icl function class.*did you mean 'sinusoid'"):
        validate(patch_doc(tasks=[{"sinusiod": 1}]))
    with pytest.raises(SpecError, match=r"patch.finetune_size: 16 is smaller than batch_size=32"):
        validate(patch_doc(finetune_size=16))
    with pytest.raises(SpecError, match=r"patch.tasks\[0\]: 'dense_linear' is a pretraining mixture"):
        validate(patch_doc(tasks=[{"dense_linear": 1}]))
    with pytest.raises(SpecError, match=r"patch.trials\[0\]: 'nope' is not a trial of this grid"):
        validate(patch_doc(trials=["nope"]))
    doc = patch_doc()
    doc["data"]["task"], doc["model"]["family"] = "mnist1d", "vit"
    with pytest.raises(SpecError, match="patch: patching needs in-context regression tasks"):
        validate(doc)


def test_sweep_reproduces_each_endpoint_and_picks_the_lowest_heldout_average(tmp_path):
    (trial,) = expand(validate(tiny_icl_spec("sweep", eval={"points": 1, "examples": 48})))
    torch.manual_seed(0)
    base = build_model(trial).state_dict()
    torch.manual_seed(1)
    model = build_model(trial)
    ft = {k: v.clone() for k, v in model.state_dict().items()}
    tasks = eval_tasks(trial, [{"dense_linear": 1.0}, {"sinusoid": 1.0}], tmp_path)
    assert [t.name for t in tasks] == ["dense_linear", "sinusoid"]
    assert not np.array_equal(tasks[0].report.x, tasks[0].heldout.x)  # held out: other prompts

    curve = sweep(model, base, ft, (0.0, 0.5, 1.0), tasks, workers=2)
    for i, state in ((0, base), (2, ft)):
        model.load_state_dict(state)
        for t in tasks:
            want, _ = icl_metrics(predict_like_trial(model, t.report, 2), t.report)
            assert [curve.report[t.name][k][i] for k in REPORTED] == [want[k] for k in REPORTED]
    avg = np.mean([curve.heldout[t.name] for t in tasks], axis=0)
    assert curve.chosen == (0.0, 0.5, 1.0)[int(np.argmin(avg))]


def test_sharded_predictions_equal_one_pass_over_the_split(tmp_path):
    (trial,) = expand(validate(tiny_icl_spec("shards", eval={"points": 1, "examples": 50})))
    torch.manual_seed(0)
    model = build_model(trial).eval()
    (task,) = eval_tasks(trial, [{"dense_linear": 1.0}], tmp_path)
    with torch.no_grad():
        whole = model.predict({"x": torch.as_tensor(task.report.x), "y": torch.as_tensor(task.report.y)}).numpy()
    np.testing.assert_allclose(predict_like_trial(model, task.report, 3), whole, rtol=1e-5, atol=1e-6)


def test_checkpoint_weights_read_a_saved_state_dict(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "patched.pt")
    assert torch.equal(checkpoint_weights(tmp_path / "patched.pt")["w"], state["w"])
    with pytest.raises(FileNotFoundError, match="no step_"):
        checkpoint_weights(tmp_path)


def test_patch_command_lists_every_bad_argument_before_loading_anything(tmp_path, capsys):
    code = main(["patch", "--base", str(tmp_path / "missing"), "--finetuned", str(tmp_path),
                 "--alphas", "0:2:0.5", "--eval", "sinusiod", "--metric", "accuracy"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--base: " in err and "does not exist" in err
    assert "--finetuned: " in err and "no step_* checkpoint" in err
    assert "--alphas: 1.5 is not allowed" in err
    assert "--eval[0]: 'sinusiod' is not an icl function class" in err
    assert "--metric: 'accuracy' is not allowed; allowed: mse" in err


def test_curve_is_logged_by_alpha_with_the_chosen_alpha_plot_and_mixture_task_names(tmp_path):
    from mlflow.tracking import MlflowClient

    from reliscale import tracking
    from reliscale.patch.interpolate import Curve
    from reliscale.patch.stage import log_curve, patch_run

    alphas = (0.0, 0.25, 1.0)
    tasks = ["dense_linear", "relu2nn50+sinusoid50"]
    curve = Curve(alphas, tasks, "mse", chosen=0.25)
    curve.report = {t: {k: [0.1 * i + j for i in range(3)] for k in REPORTED} for j, t in enumerate(tasks)}
    curve.heldout = {t: [0.5, 0.2, 0.9] for t in tasks}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tracking.StudyRuns(uri, "logged", tmp_path / "artifacts")
    run = patch_run(runs, "t0_patch", {"alphas": "0,0.25,1"})
    log_curve(runs.client, run.info.run_id, curve, "dense_linear")

    client = MlflowClient(uri)
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.data.tags["reliscale.role"] == "patch"
    assert got.data.tags["reliscale.patch.alpha"] == "0.25" and got.data.metrics["patch/alpha"] == 0.25
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "patch/relu2nn50-sinusoid50/mse")}
    assert history == {0: 1.0, 250: 1.1, 1000: 1.2}
    assert got.data.metrics["patch/chosen/dense_linear/mse"] == 0.1
    assert {a.path for a in client.list_artifacts(run.info.run_id, "patch")} == {"patch/tradeoff.png", "patch/curve.csv"}
    assert patch_run(runs, "t0_patch", {}).info.run_id == run.info.run_id  # found again on resume


def test_logging_a_curve_again_after_a_stop_logs_no_metric_twice(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from reliscale import tracking
    from reliscale.patch.interpolate import Curve
    from reliscale.patch.stage import log_curve, patch_run

    alphas = tuple(round(0.001 * i, 3) for i in range(1001))  # 1001 α: one key's history spans two batches
    tasks = ["dense_linear", "sinusoid"]
    curve = Curve(alphas, tasks, "mse", chosen=0.5)
    curve.report = {t: {k: [float(i) for i in range(1001)] for k in REPORTED} for t in tasks}
    curve.heldout = {t: [abs(i - 500.0) for i in range(1001)] for t in tasks}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tracking.StudyRuns(uri, "again", tmp_path / "artifacts")
    run = patch_run(runs, "t0_patch", {})
    client = MlflowClient(uri)
    # A driver stopped after logging part of the curve: one key complete, the run not finished.
    client.log_batch(run.info.run_id, metrics=[Metric("patch/dense_linear/mse", float(i), 0, i) for i in range(1001)])
    log_curve(runs.client, run.info.run_id, curve, "dense_linear")
    log_curve(runs.client, run.info.run_id, curve, "dense_linear")  # and once more, after finishing

    for key in ("patch/dense_linear/mse", "patch_heldout/dense_linear/mse", "patch/average/mse"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1001)), key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "patch/alpha")] == [0.5]


CHECKPOINT_SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from pathlib import Path
    import torch
    sys.path.insert(0, "tests")
    from conftest import run_rank0_script, tiny_icl_spec
    from reliscale.worker.engine import build_engine, init_deepspeed_comm
    from reliscale.tasks import build_model
    from reliscale.spec.schema import expand, validate
    from reliscale.worker.checkpoints import checkpoint_weights

    init_deepspeed_comm()
    for stage in (0, 1, 2):
        trial = expand(validate(tiny_icl_spec(resources={"workers": 1}, train={"zero_stage": stage})))[0]
        torch.manual_seed(stage)
        e = build_engine(build_model(trial), trial.spec, trial.steps, trial.lr)
        folder = Path(sys.argv[1]) / f"zero{stage}" / "step_000000001"
        e.save_checkpoint(str(folder), tag="ds", client_state={"step": 1})
        want = {k: v.detach().float() for k, v in e.module.state_dict().items()}
        got = checkpoint_weights(folder.parent)  # the trial folder: its newest checkpoint
        same = got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        print(f"ZERO{stage}_SAME={same}", flush=True)
''')


@pytest.mark.slow
def test_checkpoints_of_every_zero_stage_below_3_read_back_as_the_engines_weights(tmp_path):
    out = run_rank0_script(CHECKPOINT_SCRIPT, tmp_path)
    for stage in (0, 1, 2):
        assert f"ZERO{stage}_SAME=True" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


def test_the_patch_stage_leaves_out_bases_whose_trial_or_fine_tune_diverged(tmp_path, capsys):
    from reliscale import tracking
    from reliscale.patch.stage import _trained

    doc = patch_doc()
    doc["data"]["sizes"] = [256, 512, 1024]
    spec = validate(doc)
    bases = expand(spec)
    p = spec.patch
    fts = {b.trial_id: [finetune_trial(b, dict(p.tasks[0]), 0, p)] for b in bases}
    runs = tracking.StudyRuns(f"sqlite:///{tmp_path / 'mlflow.db'}", spec.name, tmp_path / "artifacts")
    ids = {t.trial_id: runs.trial_run(t, {}) for t in [*bases, *(f for fs in fts.values() for f in fs)]}
    runs.client.set_tag(ids[bases[0].trial_id], tracking.OUTCOME, "diverged")  # a base
    runs.client.set_tag(ids[fts[bases[1].trial_id][0].trial_id], tracking.OUTCOME, "diverged")  # a fine-tune

    assert _trained(bases, runs, {}) == bases[1:]
    assert _trained(bases, runs, fts) == bases[2:]
    out = capsys.readouterr().out
    assert f"not patching {bases[0].trial_id}: {bases[0].trial_id} diverged" in out
    assert f"not patching {bases[1].trial_id}: {fts[bases[1].trial_id][0].trial_id} diverged" in out
