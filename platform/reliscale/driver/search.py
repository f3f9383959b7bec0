"""Pruning a hyperparameter sweep (spec section `search`): Tune's ASHA, one instance per cell.

A cell is every axis of a trial but its swept hyperparameters: a trial competes only with the
trials that differ from it in lr, weight decay or batch size. Time is the fraction of a trial's
own budget (`progress` in every report), so trials of different budgets share rungs.

A pruned trial ends as done, not failed: Tune's stop ends its workers, so the driver ends its
MLflow run (outcome `pruned`, FINISHED) and removes its workers' placement group.
"""

from __future__ import annotations

from collections.abc import Hashable

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from reliscale.spec.schema import SearchSpec, TrialConfig

PROGRESS = "progress"  # the report key ASHA counts time in: steps done / steps of the budget


def cell(trial: TrialConfig) -> Hashable:
    """Every axis of a trial except its swept hyperparameters."""
    return (trial.family, trial.size.name, trial.data_size, trial.mixture, trial.objective, trial.technique,
            trial.seed)


def label(search: SearchSpec) -> str:
    """How the live view names the scheduler: `asha, eval/id/loss`."""
    return f"{search.scheduler}, {search.metric}"


def pruned(last_result: dict) -> bool:
    """Whether a trial Tune completed was stopped before its budget by the scheduler: its last
    report is short of the budget and is not a divergence (a diverged trial ends itself)."""
    return last_result.get(PROGRESS, 1.0) < 1.0 and not last_result.get("diverged")


def run_order(trials: list[TrialConfig], flops: dict[str, float]) -> list[str]:
    """Trial ids in the order Tune starts them: one setting of the swept hyperparameters at a time
    (every cell's first setting, then every cell's second, ...), largest first within a setting.

    ASHA compares a trial at a rung only with the trials that reached the rung before it: a cell
    whose settings all start together has nothing to prune against. One at a time, each cell's
    earlier settings are ahead of its later ones at every rung.
    """
    rounds = {h: i for i, h in enumerate(dict.fromkeys(t.hyperparameters for t in trials))}
    order = sorted(trials, key=lambda t: (rounds[t.hyperparameters], -flops[t.trial_id]))
    return [t.trial_id for t in order]


class CellASHA(FIFOScheduler):
    """Tune's ASHAScheduler, one per cell; every call goes to the trial's cell's instance.

    Trials start in grid order (FIFO's `choose_trial_to_run`, as in each ASHA instance). This
    scheduler names no metric to Tune: Tune would then refuse the progress reports between
    eval points, which do not carry it; ASHA itself lets a report without the metric continue.
    """

    def __init__(self, search: SearchSpec, trials: list[TrialConfig]):
        super().__init__()
        self.cell_of = {t.trial_id: cell(t) for t in trials}
        self.cells = {
            c: ASHAScheduler(time_attr=PROGRESS, metric=search.metric, mode=search.mode, max_t=1,
                             grace_period=search.grace_fraction, reduction_factor=search.reduction_factor,
                             stop_last_trials=False)
            for c in dict.fromkeys(self.cell_of.values())
        }

    def _asha(self, trial) -> ASHAScheduler:
        return self.cells[self.cell_of[trial.config["trial_id"]]]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return all([s.set_search_properties(metric, mode, **spec) for s in self.cells.values()])

    def on_trial_add(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(PROGRESS, 0.0) >= 1.0:  # the budget is spent: a stop would only cut its final logging
            return TrialScheduler.CONTINUE
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"cell {c}: {s.debug_string()}" for c, s in self.cells.items())


class RecordPruned(tune.Callback):
    """Ends the MLflow run of each pruned trial and removes its workers' placement group.

    Tune calls `on_trial_complete` before it stops the trial, while the trial's controller waits
    in its report: removing the placement group then ends the workers with nothing left to
    restart them. The trial's own clean-up (`run_trial`'s `finally`) races the actor's exit, and a
    placement group outlives the actor that made it (see `trial.trainer`): one left behind would
    hold its CPUs for the rest of the study.
    """

    def __init__(self, study: str, run_ids: dict[str, str], tracking_uri: str):
        self.study, self.run_ids, self.uri = study, run_ids, tracking_uri

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if not pruned(trial.last_result):
            return
        from reliscale.tracking.store import mark_pruned
        from reliscale.trial.trainer import placement_group_key, remove_recorded_placement_group

        tid = trial.config["trial_id"]
        remove_recorded_placement_group(placement_group_key(self.study, tid))
        mark_pruned(self.uri, self.run_ids[tid])
