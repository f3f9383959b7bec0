"""A study's patch stage (spec section `patch`), run after the grid: fine-tune, then sweep α.

Fine-tunes are ordinary trials of the platform (Ray Tune -> Ray Train -> DeepSpeed) that
start from another model's weights; their child runs carry the role `finetune`, so scaling-law
fits never see them. Each α sweep is a Ray task and one child run of the study (role `patch`):
`patch/<task>/<metric>` at step round(1000·α), the held-out curve, the chosen α, the plot.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from reliscale import tracking
from reliscale.spec.schema import Mixture, PatchSpec, StudySpec, TrialConfig, mixture_name


@dataclass(frozen=True)
class Stage:
    finetune: list[Mixture]  # one fine-tune per mixture, each from the current weights
    tasks: list[Mixture]  # the patching tasks evaluated in this stage's sweep


def stages(p: PatchSpec) -> list[Stage]:
    """joint: one fine-tune on the union; parallel: one per task (averaged); sequential: one stage per task."""
    tasks = [dict(t) for t in p.tasks]
    if p.mode == "joint":
        union: Mixture = {}
        for t in tasks:  # each task weighs the same in the union, whatever its own weights sum to
            for name, w in t.items():
                union[name] = union.get(name, 0.0) + w / sum(t.values())
        return [Stage([union], tasks)]
    if p.mode == "parallel":
        return [Stage(tasks, tasks)]
    return [Stage([t], [t]) for t in tasks]


def finetune_trial(base: TrialConfig, mix: Mixture, stage: int, p: PatchSpec) -> TrialConfig:
    """A trial like `base` (same model, seed, resources) trained on `mix` for `finetune_size` prompts."""
    spec = base.spec
    if p.lr is not None:
        optimizer = spec.train.optimizer.model_copy(update={"lr": p.lr})
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"optimizer": optimizer})})
    tag = f"ft{stage + 1}" if p.mode == "sequential" else "ft"
    return replace(base, trial_id=f"{base.trial_id}_{tag}-{mixture_name(mix)}", data_size=int(p.finetune_size),
                   mixture=tuple(mix.items()), spec=spec)


def patch_run(runs: tracking.StudyRuns, patch_id: str, params: dict[str, str]):
    """The child run of one α sweep (found again on resume); returns the mlflow Run."""
    return runs.patch_run(patch_id, params)


def metric_task(name: str) -> str:
    """A task name as MLflow metric keys allow it ('+' joins mixture classes; keys may not hold it)."""
    return name.replace("+", "-")


def log_curve(client, run_id: str, curve, supported: str) -> None:
    """Metrics by α (step = round(1000·α)), the chosen α, the trade-off plot and CSV; then finish.
    Logging it again logs nothing twice (`tracking.complete_run`)."""
    from reliscale.patch.interpolate import REPORTED, tradeoff_plot, write_csv
    report_avg, heldout_avg = curve.report_average(), curve.heldout_average()
    history: dict[str, list[tuple[int, float]]] = {}
    for i, a in enumerate(curve.alphas):
        step = round(1000 * a)
        for t in curve.tasks:
            key = metric_task(t)
            for k in REPORTED:
                history.setdefault(f"patch/{key}/{k}", []).append((step, curve.report[t][k][i]))
            history.setdefault(f"patch_heldout/{key}/{curve.metric}", []).append((step, curve.heldout[t][i]))
        history.setdefault(f"patch/average/{curve.metric}", []).append((step, float(report_avg[i])))
        history.setdefault(f"patch_heldout/average/{curve.metric}", []).append((step, float(heldout_avg[i])))
    chosen = curve.alphas.index(curve.chosen)
    history["patch/alpha"] = [(0, curve.chosen)]
    for t in curve.tasks:
        history[f"patch/chosen/{metric_task(t)}/{curve.metric}"] = [(0, curve.report[t][curve.metric][chosen])]

    with tempfile.TemporaryDirectory() as tmp:
        files = [tradeoff_plot(Path(tmp) / "tradeoff.png", curve, supported),
                 write_csv(Path(tmp) / "curve.csv", curve)]
        tracking.complete_run(client, run_id, history, {tracking.PATCH_ALPHA: f"{curve.chosen:g}"}, files, "patch")


def sweep_params(base_id: str, finetuned: list[str], p: PatchSpec, stage: int, tasks: list[str]) -> dict[str, str]:
    return {"base": base_id, "finetuned": ",".join(finetuned), "mode": p.mode, "stage": str(stage + 1),
            "alphas": ",".join(f"{a:g}" for a in p.alphas), "select_metric": p.select_metric,
            "tasks": ",".join(tasks), "heldout": "eval split of seed + patching.HELDOUT_SEED"}


def _trained(bases: list[TrialConfig], runs: tracking.StudyRuns,
             finetunes: dict[str, list[TrialConfig]]) -> list[TrialConfig]:
    """The bases whose own trial and fine-tunes did not diverge: a diverged model has nothing to patch."""
    diverged = {tid for tid, run in runs.trial_runs().items()
                if run.data.tags.get(tracking.OUTCOME) == tracking.DIVERGED}
    kept = []
    for b in bases:
        bad = [t for t in [b.trial_id, *(f.trial_id for f in finetunes.get(b.trial_id, []))] if t in diverged]
        if bad:
            print(f"[reliscale {b.study}] not patching {b.trial_id}: {', '.join(bad)} diverged", flush=True)
        else:
            kept.append(b)
    return kept


def run_patch_stage(spec: StudySpec, trials: list[TrialConfig], paths, runs: tracking.StudyRuns,
                    fit_trials: Callable[..., list], progress_interval_s: float) -> list:
    """Fine-tune every selected trial, sweep α per trial; returns the fine-tunes' Tune results.

    `fit_trials` is the driver's (`reliscale.driver.study.fit_trials`): the fine-tunes run as a
    Tune grid of ordinary trials."""
    import ray

    from reliscale.driver.plan import param_counts, plan_trial
    from reliscale.patch.interpolate import sweep_checkpoints
    from reliscale.worker.checkpoints import StartFrom, final_checkpoint

    p = spec.patch
    bases = _trained([t for t in trials if p.trials is None or t.trial_id in p.trials], runs, {})
    current = {b.trial_id: str(final_checkpoint(paths.trials_dir / b.trial_id)) for b in bases}
    r = spec.resources
    remote_sweep = ray.remote(sweep_checkpoints).options(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker)
    results: list = []
    patched: list[Mixture] = []
    for k, stage in enumerate(stages(p)):
        fts = {b.trial_id: [finetune_trial(b, mix, k, p) for mix in stage.finetune] for b in bases}
        flat = [f for fs in fts.values() for f in fs]
        counts = param_counts(flat)
        flops = {f.trial_id: plan_trial(f, counts[f.trial_id]).flops for f in flat}
        run_ids = {}
        for base_id, fs in fts.items():
            for f in fs:
                params = {**tracking.trial_params(f, counts[f.trial_id], flops[f.trial_id]),
                          "init_from": Path(current[base_id]).name, "base_trial": base_id, "patch_mode": p.mode}
                run_ids[f.trial_id] = runs.trial_run(f, params, role=tracking.FINETUNE)
        finished = frozenset(t for t, run in runs.trial_runs().items() if run.info.status == "FINISHED")
        init = {f.trial_id: StartFrom(current[base_id]) for base_id, fs in fts.items() for f in fs}
        stage_results = fit_trials(flat, flops, run_ids, finished, paths, f"patch_ft{k + 1}", progress_interval_s,
                                   init)
        results += stage_results
        if [res for res in stage_results if res.error]:
            return results
        bases = _trained(bases, runs, fts)

        patched += stage.tasks
        todo = {}
        for b in bases:
            supported = dict(b.mixture)
            names = [mixture_name(m) for m in [supported, *patched]]
            ft_ids = [f.trial_id for f in fts[b.trial_id]]
            patch_id = f"{b.trial_id}_patch{k + 1}" if p.mode == "sequential" else f"{b.trial_id}_patch"
            run = patch_run(runs, patch_id, sweep_params(b.trial_id, ft_ids, p, k, names))
            save_to = str(paths.storage / "patches" / f"{patch_id}.pt") if p.mode == "sequential" else None
            if run.info.status == "FINISHED" and (save_to is None or Path(save_to).is_file()):
                current[b.trial_id] = save_to or current[b.trial_id]
                continue  # swept before the driver was stopped
            ft_paths = [str(final_checkpoint(paths.trials_dir / t)) for t in ft_ids]
            todo[b.trial_id] = (run.info.run_id, names[0], save_to, remote_sweep.remote(
                b, current[b.trial_id], ft_paths, [supported, *patched], p.alphas, p.select_metric, save_to))
        for base_id, (run_id, supported_name, save_to, ref) in todo.items():
            log_curve(runs.client, run_id, ray.get(ref), supported_name)
            if save_to:
                current[base_id] = save_to
    return results
