"""The live study view: FLOPs-weighted progress, an ETA from finished trials, plain lines."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from reliscale.driver.progress import ProgressView


@dataclass
class TrialState:  # the two attributes of a Tune trial the view reads
    status: str
    config: dict


def test_progress_is_weighted_by_planned_flops():
    view = ProgressView("s", {"small": 1.0, "big": 3.0}, {"small": 100, "big": 100}, concurrency=1)
    view.on_trial_result(0, [], TrialState("RUNNING", {"trial_id": "big"}), {"data_seen": 50})
    assert view.fraction_done() == pytest.approx(1.5 / 4)


def test_eta_fits_overhead_plus_compute_from_finished_trials(monkeypatch):
    clock = iter([0.0, 0.0, 10.0, 10.0, 30.0, 30.0, 30.0])
    monkeypatch.setattr("reliscale.driver.progress.time.monotonic", lambda: next(clock))
    flops = {"a": 1.0, "b": 3.0, "c": 5.0}
    view = ProgressView("s", flops, {k: 10 for k in flops}, concurrency=1)
    for tid in ("a", "b"):
        view.on_trial_start(0, [], TrialState("RUNNING", {"trial_id": tid}))
    view.durations = {"a": 10.0, "b": 20.0}  # a + b·flops: 5 s overhead + 5 s per unit
    view.started = {"a": 0.0, "b": 10.0}
    assert view.eta_s() == pytest.approx(5 + 5 * 5.0)  # trial c, not started yet


def test_view_prints_counts_and_running_trials(capsys):
    view = ProgressView("study1", {"t1": 1.0, "t2": 1.0}, {"t1": 10, "t2": 10}, concurrency=2)
    trials = [TrialState("TERMINATED", {"trial_id": "t1"}), TrialState("RUNNING", {"trial_id": "t2"})]
    view.on_trial_result(0, trials, trials[1], {"data_seen": 4, "train/loss": 0.5})
    view._print(trials, "hello")
    out = capsys.readouterr().out
    assert "[reliscale study1]" in out and "done 1/2  running 1  pending 0" in out and "| hello" in out
    assert "t2" in out and "4 / 10" in out and "train/loss 0.5" in out


def test_trials_tune_has_not_created_yet_count_as_pending(capsys):
    flops = {f"t{i}": 1.0 for i in range(5)}
    view = ProgressView("study1", flops, {k: 10 for k in flops}, concurrency=2)
    trials = [TrialState("TERMINATED", {"trial_id": "t0"}), TrialState("RUNNING", {"trial_id": "t1"}),
              TrialState("RUNNING", {"trial_id": "t2"})]  # t3, t4: not handed to Tune's runner yet
    view._print(trials)
    assert "done 1/5  running 2  pending 2  errors 0" in capsys.readouterr().out


def test_a_trial_reported_complete_counts_as_done_before_tune_marks_it_terminated(capsys):
    # Tune calls on_trial_complete while the trial's status is still RUNNING (seen in a real
    # study: every "finished" line said one trial fewer done and listed the finished one as running).
    view = ProgressView("study1", {"t1": 1.0, "t2": 1.0}, {"t1": 10, "t2": 10}, concurrency=2)
    trials = [TrialState("RUNNING", {"trial_id": "t1"}), TrialState("RUNNING", {"trial_id": "t2"})]
    view.on_trial_complete(0, trials, trials[0])
    out = capsys.readouterr().out
    assert "done 1/2  running 1  pending 0" in out and "| finished t1" in out
    assert "    t1 " not in out and "    t2 " in out


def test_a_diverged_trial_is_named_as_such_and_its_time_does_not_feed_the_eta(capsys):
    view = ProgressView("study1", {"t1": 1.0, "t2": 1.0}, {"t1": 100, "t2": 100}, concurrency=1)
    trials = [TrialState("RUNNING", {"trial_id": "t1"}), TrialState("RUNNING", {"trial_id": "t2"})]
    view.on_trial_start(0, trials, trials[0])
    view.on_trial_result(0, trials, trials[0], {"data_seen": 30, "diverged": "training loss nan"})
    view.on_trial_complete(0, trials, trials[0])
    out = capsys.readouterr().out
    assert "errors 0  diverged 1  compute" in out
    assert "| DIVERGED t1 at 30 / 100: training loss nan" in out
    assert view.durations == {}
