"""A study's downstream fine-tunes (spec section `finetune`), run after the grid.

Plex's third pillar is adaptation: a pretrained model fine-tuned on a downstream dataset, its
reliability measured there. Every trained trial (or those named in `finetune.trials`) gets one
fine-tune: an ordinary trial of the platform (Ray Tune -> Ray Train -> DeepSpeed) whose dataset
is `data.images.downstream_root`, whose weights start from the trial's final checkpoint with a
new classifier head for the downstream classes, and whose child run carries the role
`finetune` with the pretrained trial's axes (`base_trial`, `pretrain_data_size`). A law of
"pretraining scale -> downstream reliability" is fitted on those runs (`reliscale fit --role
finetune`, or `role: finetune` in the spec's `analysis.laws`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reliscale import tracking
from reliscale.spec.finetune import finetune_trials
from reliscale.spec.schema import StudySpec, TrialConfig
from reliscale.worker.checkpoints import StartFrom, final_checkpoint

TUNE_NAME = "finetune"


def finetune_params(ft: TrialConfig, base: TrialConfig, counts: dict[str, int], flops: float,
                    start: str) -> dict[str, str]:
    """The fine-tune run's params: its own axes, and the pretraining it starts from."""
    return {**tracking.trial_params(ft, counts, flops), "base_trial": base.trial_id,
            "pretrain_data_size": str(base.data_size), "init_from": Path(start).name,
            "downstream": ft.spec.data.images.root}


def run_finetune_stage(spec: StudySpec, trials: list[TrialConfig], paths, runs: tracking.StudyRuns,
                       fit_trials: Callable[..., list], progress_interval_s: float) -> list:
    """Fine-tune the selected trials that trained their whole budget; returns the Tune results.

    `fit_trials` is the driver's (`reliscale.driver.study.fit_trials`). A diverged or pruned trial
    has no model worth adapting: it is left out, with a line saying so."""
    from reliscale.driver.plan import param_counts, plan_trial

    outcome = {tid: run.data.tags.get(tracking.OUTCOME) for tid, run in runs.trial_runs().items()}
    pairs = []
    for base, ft in finetune_trials(spec, trials):
        if outcome.get(base.trial_id):
            print(f"[reliscale {spec.name}] not fine-tuning {base.trial_id}: {outcome[base.trial_id]}", flush=True)
        else:
            pairs.append((base, ft))
    if not pairs:
        return []
    flat = [ft for _, ft in pairs]
    start = {ft.trial_id: str(final_checkpoint(paths.trials_dir / base.trial_id)) for base, ft in pairs}
    counts = param_counts(flat)
    flops = {f.trial_id: plan_trial(f, counts[f.trial_id]).flops for f in flat}
    run_ids = {ft.trial_id: runs.trial_run(ft, finetune_params(ft, base, counts[ft.trial_id], flops[ft.trial_id],
                                                               start[ft.trial_id]), role=tracking.FINETUNE)
               for base, ft in pairs}
    finished = frozenset(t for t, run in runs.trial_runs().items() if run.info.status == "FINISHED")
    init = {tid: StartFrom(path, new_head=True) for tid, path in start.items()}
    return fit_trials(flat, flops, run_ids, finished, paths, TUNE_NAME, progress_interval_s, init)
