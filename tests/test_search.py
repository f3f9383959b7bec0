"""The `search` section, the per-cell ASHA scheduler, the sweep's run order and the live view of
pruned trials: fast checks without Ray workers (the end-to-end study: test_search_study.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from ray.tune.schedulers import TrialScheduler

from reliscale.driver.progress import ProgressView
from reliscale.driver.search import CellASHA, pruned, run_order
from reliscale.spec.schema import SpecError, expand, validate

from conftest import tiny_icl_spec

SEARCH = {"scheduler": "asha", "metric": "eval/id/mse", "grace_fraction": 0.25, "reduction_factor": 2}
SWEEP = {"optimizer": {"lr": [1e-3, 1e-2]}}


def spec_with(search: dict, train: dict | None = SWEEP, **over):
    doc = tiny_icl_spec("s", search=search, **over)
    if train is not None:
        doc["train"] = {**doc["train"], **train}
    return validate(doc)


def problems(search: dict, **kw) -> str:
    with pytest.raises(SpecError) as e:
        spec_with(search, **kw)
    return str(e.value)


def test_a_search_over_a_swept_lr_is_valid():
    spec = spec_with(SEARCH)
    assert spec.search.metric == "eval/id/mse" and spec.search.reduction_factor == 2


def test_an_unknown_scheduler_is_refused_naming_the_allowed_one():
    assert "search.scheduler: 'hyperband' is not allowed" in problems({**SEARCH, "scheduler": "hyperband"})
    assert "'asha'" in problems({**SEARCH, "scheduler": "hyperband"})


@pytest.mark.parametrize("grace", [0.0, 1.0, 1.5, -0.1])
def test_grace_fraction_must_lie_strictly_between_0_and_1(grace):
    assert (f"search.grace_fraction: {grace!r} is not allowed; allowed: a fraction of the budget in (0, 1)"
            in problems({**SEARCH, "grace_fraction": grace}))


def test_reduction_factor_below_2_is_refused():
    assert "search.reduction_factor: 1.5 is not allowed; allowed: >= 2" in problems({**SEARCH, "reduction_factor": 1.5})


def test_a_search_without_a_swept_hyperparameter_has_nothing_to_prune():
    assert ("search.scheduler: nothing to prune: no hyperparameter is swept; allowed: a list in "
            "train.optimizer.lr" in problems(SEARCH, train=None))


def test_a_swept_batch_size_is_enough_to_prune():
    spec = spec_with(SEARCH, train=None, data={**tiny_icl_spec()["data"], "batch_size": [16, 32]})
    assert len(expand(spec)) == 2


def test_a_metric_the_task_does_not_log_is_refused_with_the_allowed_ones():
    text = problems({**SEARCH, "metric": "eval/id/loss"})
    assert "search.metric: 'loss' of 'eval/id/loss' is not a metric the trials log (task 'icl')" in text
    assert "allowed: mse, mse_first" in text


def test_a_metric_outside_the_evaluated_metrics_is_refused():
    text = problems({**SEARCH, "metric": "eval/id/ls_ratio"}, eval={"points": 3, "metrics": ["mse"]})
    assert "'ls_ratio' of 'eval/id/ls_ratio' is not a metric the trials log" in text and "allowed: mse" in text


def test_a_split_that_is_not_evaluated_is_refused():
    text = problems({**SEARCH, "metric": "eval/idd/mse"})
    assert "search.metric: split 'idd' of 'eval/idd/mse' is not evaluated; allowed: id, ood_class" in text
    assert "(did you mean 'id'?)" in text


def test_a_metric_not_of_the_eval_split_metric_form_is_refused():
    assert ("search.metric: 'mse' is not allowed; allowed: eval/<split>/<metric>, e.g. eval/id/mse"
            in problems({**SEARCH, "metric": "mse"}))


# ------------------------------------------------------------------ the scheduler


@dataclass
class FakeTrial:  # what Tune's schedulers read of a trial
    trial_id: str
    config: dict = field(default_factory=dict)


def two_cells():
    """Two sizes x two LRs: cells S0 and S1, each with lr 0.001 and 0.01."""
    spec = spec_with(SEARCH, model={"family": "decoder", "sizes": ["S0", "S1"]})
    trials = expand(spec)
    return trials, CellASHA(spec.search, trials), {t.trial_id: FakeTrial(t.trial_id, {"trial_id": t.trial_id})
                                                    for t in trials}


def ids(trials, size: str, lr: str) -> str:
    return next(t.trial_id for t in trials if t.size.name == size and f"_lr{lr}_" in t.trial_id)


def test_a_trial_worse_than_its_cell_at_a_rung_is_stopped_but_not_by_another_cell():
    trials, sched, fake = two_cells()
    for f in fake.values():
        sched.on_trial_add(None, f)
    s0_a, s0_b, s1_b = fake[ids(trials, "S0", "0.001")], fake[ids(trials, "S0", "0.01")], fake[ids(trials, "S1", "0.01")]
    go, stop = TrialScheduler.CONTINUE, TrialScheduler.STOP
    # rung 0.25: the first to reach it continues; the median of one value is that value (rf 2)
    assert sched.on_trial_result(None, s0_a, {"progress": 0.25, "eval/id/mse": 1.0}) == go
    # S1 meets no S0 trial: an mse 5x worse continues, it is the first of its own cell
    assert sched.on_trial_result(None, s1_b, {"progress": 0.3, "eval/id/mse": 5.0}) == go
    # the other S0 trial, worse at the same rung, is stopped
    assert sched.on_trial_result(None, s0_b, {"progress": 0.25, "eval/id/mse": 2.0}) == stop


def test_a_better_trial_continues_and_reports_without_the_metric_never_decide():
    trials, sched, fake = two_cells()
    for f in fake.values():
        sched.on_trial_add(None, f)
    a, b = fake[ids(trials, "S0", "0.001")], fake[ids(trials, "S0", "0.01")]
    go = TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, a, {"progress": 0.25, "eval/id/mse": 2.0}) == go
    assert sched.on_trial_result(None, b, {"progress": 0.25, "train/loss": 9.0}) == go  # a progress-only report
    assert sched.on_trial_result(None, b, {"progress": 0.26, "eval/id/mse": 1.0}) == go  # better: continues
    assert sched.metric is None  # Tune would otherwise refuse the progress-only reports


def test_a_trial_at_its_whole_budget_is_never_stopped():
    trials, sched, fake = two_cells()
    for f in fake.values():
        sched.on_trial_add(None, f)
    a, b = fake[ids(trials, "S0", "0.001")], fake[ids(trials, "S0", "0.01")]
    sched.on_trial_complete(None, a, {"progress": 1.0, "eval/id/mse": 1.0})  # recorded at rung 1
    assert sched.on_trial_result(None, b, {"progress": 1.0, "eval/id/mse": 9.0}) == TrialScheduler.CONTINUE


def test_the_sweep_starts_one_setting_at_a_time_largest_first():
    trials, _, _ = two_cells()
    flops = {t.trial_id: (2.0 if t.size.name == "S1" else 1.0) for t in trials}
    assert run_order(trials, flops) == [ids(trials, "S1", "0.001"), ids(trials, "S0", "0.001"),
                                        ids(trials, "S1", "0.01"), ids(trials, "S0", "0.01")]


@pytest.mark.parametrize(("result", "expected"), [
    ({"progress": 0.25, "eval/id/mse": 2.0}, True),
    ({"progress": 0.25, "diverged": "training loss nan"}, False),
    ({"progress": 1.0}, False),
    ({}, False),  # a trial that returned at once (its run had finished before)
])
def test_pruned_means_stopped_short_of_the_budget_without_diverging(result, expected):
    assert pruned(result) is expected


# ------------------------------------------------------------------ the live view


@dataclass
class TrialState:  # the two attributes of a Tune trial the view reads
    status: str
    config: dict


def test_the_view_names_a_pruned_trial_and_leaves_its_time_out_of_the_eta(capsys):
    view = ProgressView("study1", {"t1": 1.0, "t2": 1.0}, {"t1": 1024, "t2": 1024}, concurrency=1,
                        pruning="asha, eval/id/loss")
    trials = [TrialState("RUNNING", {"trial_id": "t1"}), TrialState("RUNNING", {"trial_id": "t2"})]
    view.on_trial_start(0, trials, trials[0])
    view.on_trial_result(0, trials, trials[0], {"data_seen": 256, "progress": 0.25, "eval/id/loss": 3.0})
    view.on_trial_complete(0, trials, trials[0])
    out = capsys.readouterr().out
    assert "| PRUNED t1 at 256 / 1,024 (asha, eval/id/loss)" in out
    assert "errors 0  pruned 1  compute" in out
    assert view.durations == {} and view.fraction_done() == pytest.approx(0.5)


def test_without_a_search_a_short_trial_is_not_called_pruned(capsys):
    view = ProgressView("study1", {"t1": 1.0}, {"t1": 1024}, concurrency=1)
    trials = [TrialState("RUNNING", {"trial_id": "t1"})]
    view.on_trial_result(0, trials, trials[0], {"data_seen": 256, "progress": 0.25})
    view.on_trial_complete(0, trials, trials[0])
    assert "| finished t1" in capsys.readouterr().out and view.pruned == {}
