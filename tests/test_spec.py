"""Study spec: every kind of bad input is refused before anything runs, with a clear message."""

from __future__ import annotations

import pytest

from reliscale.spec.schema import SpecError, TrialConfig, expand, load_spec, validate

from conftest import tiny_icl_spec


def problems(write_spec, doc, overrides=()) -> str:
    with pytest.raises(SpecError) as e:
        load_spec(write_spec(doc), overrides)
    return str(e.value)


def test_unknown_key_is_named_with_the_allowed_keys_and_a_suggestion(write_spec):
    doc = tiny_icl_spec()
    doc["data"]["batch_sise"] = 8
    msg = problems(write_spec, doc)
    assert "data.batch_sise: unknown key" in msg
    assert "batch_size" in msg and "did you mean 'batch_size'" in msg


def test_wrong_type_names_the_key_and_value(write_spec):
    doc = tiny_icl_spec()
    doc["eval"]["points"] = "many"
    msg = problems(write_spec, doc)
    assert "eval.points: 'many' is not allowed" in msg and "valid integer" in msg


@pytest.mark.parametrize("bad", [0, -1000, 12.5])
def test_non_positive_or_fractional_data_size_is_refused(write_spec, bad):
    doc = tiny_icl_spec()
    doc["data"]["sizes"] = [256, bad]
    msg = problems(write_spec, doc)
    assert f"data.sizes[1]: {float(bad)!r} is not allowed; allowed: a positive integer" in msg


def test_zero_width_is_refused(write_spec):
    doc = tiny_icl_spec(model={"family": "decoder", "sizes": [{"width": 0, "depth": 2, "heads": 2}]})
    assert "model.sizes[0].width: 0 is not allowed" in problems(write_spec, doc)


def test_heads_not_dividing_width_is_refused(write_spec):
    doc = tiny_icl_spec(model={"family": "decoder", "sizes": [{"width": 30, "depth": 2, "heads": 4}]})
    msg = problems(write_spec, doc)
    assert "model.sizes[0].heads: 4 does not divide width=30; allowed: a divisor of 30" in msg


def test_batch_larger_than_a_data_size_is_refused(write_spec):
    doc = tiny_icl_spec()
    doc["data"]["sizes"] = [1024, 16]
    msg = problems(write_spec, doc)
    assert "data.sizes[1]: 16 is smaller than batch_size=32" in msg


def test_unknown_task_is_refused_with_the_task_list(write_spec):
    doc = tiny_icl_spec()
    doc["data"]["task"] = "icll"
    msg = problems(write_spec, doc)
    assert "data.task: 'icll' is not a task; allowed: icl, mnist1d, lm, images (did you mean 'icl'?)" in msg


def test_unknown_family_is_refused(write_spec):
    doc = tiny_icl_spec(model={"family": "rnn", "sizes": ["S0"]})
    msg = problems(write_spec, doc)
    assert "model.family: 'rnn' is not allowed" in msg and "'decoder', 'vit' or 'encdec'" in msg


def test_unknown_ladder_rung_is_refused(write_spec):
    doc = tiny_icl_spec(model={"family": "decoder", "sizes": ["S0", "S42"]})
    msg = problems(write_spec, doc)
    assert "model.sizes[1]: 'S42' is not a decoder ladder rung; allowed: S0, S1" in msg


def test_unknown_technique_is_refused(write_spec):
    msg = problems(write_spec, tiny_icl_spec(technique=["none", "dropout"]))
    assert "technique[1]: 'dropout' is not allowed" in msg and "'batchensemble'" in msg


def test_technique_that_does_not_fit_the_task_is_refused(write_spec):
    msg = problems(write_spec, tiny_icl_spec(technique="gp"))
    assert "technique: 'gp' does not apply to task 'icl'; allowed: none" in msg


def test_family_that_cannot_train_the_task_is_refused(write_spec):
    msg = problems(write_spec, tiny_icl_spec(model={"family": "vit", "sizes": ["S0"]}))
    assert "model.family: 'vit' cannot train task 'icl'; allowed: decoder" in msg


def test_unknown_metric_is_refused(write_spec):
    doc = tiny_icl_spec()
    doc["eval"]["metrics"] = ["mse", "msee"]
    msg = problems(write_spec, doc)
    assert "eval.metrics[1]: 'msee' is not known for task 'icl'" in msg and "did you mean 'mse'" in msg


def test_unknown_split_is_refused(write_spec):
    doc = tiny_icl_spec()
    doc["eval"]["splits"] = ["id", "ood"]
    msg = problems(write_spec, doc)
    assert ("eval.splits[1]: 'ood' is not a split of task 'icl'; allowed: id, ood_class, wnorm, xscale, "
            "a function class, or convex-<class>-<class>[-<percent>]") in msg


def test_class_and_convex_splits_are_accepted_and_a_bad_convex_pair_is_refused(write_spec):
    doc = tiny_icl_spec()
    doc["data"]["dim"] = 5
    doc["eval"]["splits"] = ["id", "sparse_linear", "convex-dense_linear-sinusoid-25"]
    load_spec(write_spec(doc))
    doc["eval"]["splits"] = ["id", "convex-dense_linear-dense_linear"]
    assert "eval.splits[1]: 'convex-dense_linear-dense_linear' is not a split" in problems(write_spec, doc)


def test_sparse_class_as_dense_as_the_input_dimension_is_refused(write_spec):
    doc = tiny_icl_spec()
    doc["data"].update(dim=3, sparsity=3, mixture={"dense_linear": 1.0, "sparse_linear": 1.0})
    assert ("data.sparsity: 3 non-zero weights in dim=3 make sparse_linear the same class as "
            "dense_linear; allowed: 1..2") in problems(write_spec, doc)


@pytest.mark.parametrize("stage", [4, -1])
def test_zero_stage_outside_0_to_3_is_refused(write_spec, stage):
    doc = tiny_icl_spec(train={"zero_stage": stage})
    assert f"train.zero_stage: {stage} is not a ZeRO stage; allowed: 0, 1, 2, 3" in problems(write_spec, doc)


def test_more_workers_than_the_cluster_can_provide_is_refused(write_spec):
    doc = tiny_icl_spec(resources={"workers": 4, "cpus_per_worker": 1, "cluster_cpus": 2})
    msg = problems(write_spec, doc)
    assert "resources.workers: 4 workers x 1.0 CPU (+0.01 for the trial) = 4.01 CPUs" in msg
    assert "cluster has at most 2" in msg


@pytest.mark.parametrize(("cpus", "threads"), [(0.49, 1), (0.99, 1), (1.99, 2), (4, 4)])
def test_a_worker_runs_its_cpu_share_rounded_as_torch_threads(write_spec, cpus, threads):
    # 1.99 is the most one worker can ask on a 2-CPU machine (the trial holds 0.01): both cores.
    doc = tiny_icl_spec(resources={"workers": 1, "cpus_per_worker": cpus})
    assert load_spec(write_spec(doc)).resources.threads_per_worker == threads


def test_more_gpus_than_the_cluster_has_is_refused(write_spec):
    doc = tiny_icl_spec(resources={"workers": 8, "gpus_per_worker": 1, "cluster_gpus": 4})
    assert "8 workers x 1.0 GPU = 8 GPUs, but the cluster has at most 4" in problems(write_spec, doc)


def test_unknown_mixture_class_is_refused(write_spec):
    doc = tiny_icl_spec()
    doc["data"]["mixture"] = {"dense_linear": 1, "sparse_lineer": 1}
    msg = problems(write_spec, doc)
    assert "data.mixture[0].sparse_lineer: not a function class of task 'icl'" in msg
    assert "did you mean 'sparse_linear'" in msg


def test_every_problem_is_reported_at_once(write_spec):
    doc = tiny_icl_spec(train={"zero_stage": 7})
    doc["data"]["batch_sise"] = 8
    doc["eval"]["points"] = 0
    msg = problems(write_spec, doc)
    assert "3 problem(s)" in msg


def test_set_override_is_validated_like_the_file(write_spec):
    path = write_spec(tiny_icl_spec())
    spec = load_spec(path, ["train.zero_stage=3", "data.sizes=[256, 512]"])
    assert spec.train.zero_stage == 3 and spec.data.sizes == (256, 512)
    with pytest.raises(SpecError, match=r"train.zero_stage: 9 is not a ZeRO stage"):
        load_spec(path, ["train.zero_stage=9"])
    with pytest.raises(SpecError, match=r"trian: unknown key"):
        load_spec(path, ["trian.zero_stage=1"])


def test_grid_is_the_cross_product_with_stable_readable_ids(write_spec):
    doc = tiny_icl_spec(model={"family": "decoder", "sizes": ["S0", "S1"]}, seeds=2,
                        objective=["erm", "minimax"])
    doc["data"]["sizes"] = [1e3, 3.2e4]
    trials = expand(load_spec(write_spec(doc)))
    assert len(trials) == 2 * 2 * 2 * 2
    ids = [t.trial_id for t in trials]
    assert ids[0] == "decoder-S0_D1e3_erm_none_s0"
    assert "decoder-S1_D3.2e4_minimax_none_s1" in ids
    assert ids == [t.trial_id for t in expand(load_spec(write_spec(doc)))]  # stable
    assert len({*trials}) == len(trials) and all(isinstance(t, TrialConfig) for t in trials)


def test_mixtures_axis_names_trials_by_mixture(write_spec):
    doc = tiny_icl_spec()
    doc["data"].update(dim=5, mixture=[{"dense_linear": 1}, {"dense_linear": 1, "sparse_linear": 1}])
    ids = [t.trial_id for t in expand(load_spec(write_spec(doc)))]
    assert ids == ["decoder-S0_D2.56e2_dense_linear_erm_none_s0",
                   "decoder-S0_D2.56e2_dense_linear50+sparse_linear50_erm_none_s0"]


@pytest.mark.parametrize("job", ["icl_smoke.yaml", "lm_ladder_1b.yaml"])
def test_shipped_job_files_validate(repo, job):
    load_spec(repo / "jobs" / job)


def test_inverse_width_lr_rule_scales_each_trials_lr_by_its_width(write_spec):
    doc = tiny_icl_spec(model={"family": "decoder", "sizes": ["S0", "S2"]},
                        train={"optimizer": {"lr": 1e-3, "lr_scaling": "inverse_width",
                                             "lr_reference_width": 128}})
    lrs = {t.size.name: t.lr for t in expand(load_spec(write_spec(doc)))}
    assert lrs == {"S0": pytest.approx(2e-3), "S2": pytest.approx(1e-3)}  # widths 64 and 128
    doc["train"]["optimizer"]["lr_scaling"] = "fixed"
    assert {t.lr for t in expand(load_spec(write_spec(doc)))} == {1e-3}


def test_a_list_of_learning_rates_is_a_grid_axis_with_its_value_in_trial_ids_and_trial_specs():
    doc = tiny_icl_spec(train={"optimizer": {"lr": [1e-3, 3e-3], "weight_decay": [0.0, 0.1]}})
    doc["data"]["batch_size"] = [32, 64]
    spec = validate(doc)
    trials = expand(spec)
    assert len(trials) == 8 and len({t.trial_id for t in trials}) == 8
    t = next(t for t in trials if "_lr0.003_bs64_wd0.1_" in t.trial_id)
    assert t.lr == 3e-3 and t.spec.data.batch_size == 64 and t.spec.train.optimizer.weight_decay == 0.1
    assert dict(t.hyperparameters) == {"lr": 3e-3, "batch_size": 64, "weight_decay": 0.1}
    assert t.spec.micro_batch() == 32 and t.data_per_step == 64  # the trial's own batch, two workers
    # a list of one value is that value: no axis, and the ids stay as they were
    one = expand(validate(tiny_icl_spec(train={"optimizer": {"lr": [2e-3]}})))
    assert one[0].lr == 2e-3 and "_lr" not in one[0].trial_id


def test_bad_hyperparameter_values_are_refused_naming_the_item(write_spec):
    msg = problems(write_spec, tiny_icl_spec(train={"optimizer": {"lr": [1e-3, -1.0]}}))
    assert "train.optimizer.lr[1]: -1.0 is not allowed; allowed: > 0" in msg
    msg = problems(write_spec, tiny_icl_spec(train={"optimizer": {"lr": [1e-3, 1e-3]}}))
    assert "train.optimizer.lr: [0.001, 0.001] repeats a value" in msg
    doc = tiny_icl_spec()
    doc["data"]["batch_size"] = [32, 33]
    assert "data.batch_size: 33 is not divisible by resources.workers=2" in problems(write_spec, doc)


def test_the_laws_a_spec_names_are_checked_before_anything_runs(write_spec):
    law = {"metric": "eval/id/mse", "by": "eval/id/mse"}
    msg = problems(write_spec, tiny_icl_spec(analysis={"laws": [law]}))
    assert "analysis.laws[0].by: applies with best_of only" in msg
    law = {"metric": "eval/id/mse", "best_of": ["momentum"]}
    msg = problems(write_spec, tiny_icl_spec(analysis={"laws": [law]}))
    assert "analysis.laws[0].best_of: 'momentum' is not a hyperparameter axis; allowed: lr, batch_size, " \
           "weight_decay" in msg
    ok = validate(tiny_icl_spec(analysis={"laws": [{"metric": "eval/id/mse", "form": "power",
                                                    "x": ["data_size"]}]}))
    assert ok.analysis.laws[0].bootstrap == 200
