"""The study driver: a Ray Tune grid whose trials each fit a Ray Train trainer.

Ray 2.60 runs Train V2, where `Tuner(TorchTrainer)` is refused; each Tune trial
is therefore a function that builds and fits its own data-parallel trainer, whose
controller runs in the trial and hands the workers' reports to Tune
(`reliscale.trial.trainer`). The Tune trial holds a token 0.01 CPU; its workers hold the
real resources.

Everything that can fail cheaply is checked before the first trial starts: the
spec, the storage path, the tracking store and the cluster's size.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from reliscale import tracking
from reliscale.driver.laws import fit_study_laws
from reliscale.driver.paths import SPEC_FILE, StudyPaths, default_root
from reliscale.driver.plan import param_counts, plan_trial
from reliscale.spec.schema import (
    TRIAL_CPU,
    SearchSpec,
    SpecError,
    StudySpec,
    TrialConfig,
    check_fits_cluster,
    dump_spec,
    expand,
)
from reliscale.tasks import TASKS
from reliscale.worker.checkpoints import StartFrom


def _check_storage(paths: StudyPaths) -> None:
    try:
        paths.storage.mkdir(parents=True, exist_ok=True)
        probe = paths.storage / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as e:
        raise SpecError([f"storage.path: {str(paths.storage)!r} is not writable ({e.strerror or e}); "
                         "allowed: a writable folder with free space"]) from None


def _check_tracking(uri: str) -> None:
    """Reach the store before any trial starts."""
    try:
        tracking.check_reachable(uri)
    except Exception as e:
        raise SpecError([f"tracking.uri: {uri!r} is unreachable ({type(e).__name__}: {str(e)[:200]}); "
                         "allowed: a reachable MLflow tracking URI"]) from None


def _write_spec(spec: StudySpec, paths: StudyPaths) -> None:
    paths.dir.mkdir(parents=True, exist_ok=True)
    path = paths.dir / SPEC_FILE
    text = dump_spec(spec)
    if path.exists() and path.read_text() != text:
        raise SpecError([f"name: study {spec.name!r} already exists in {paths.dir} with a different "
                         "spec; allowed: a new name, or `reliscale resume` for the stored spec"])
    path.write_text(text)


def connect_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (or the job's cluster), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=env, log_to_driver=True)
    else:
        ray.init(runtime_env=env)  # dashboard on 127.0.0.1 only; Ray Train's state API needs it


def run_study(spec: StudySpec, root: Path | None = None, progress_interval_s: float = 15.0):
    """Run (or continue) a study, then its patch stage if it has one; returns every Tune result."""
    # Checks, at import, that Ray and DeepSpeed are the versions whose internals reliscale uses:
    # a mismatch stops the study here rather than in its trials.
    from reliscale.compat import deepspeed, ray_train  # noqa: F401

    problem = TASKS[spec.data.task].preflight(spec)
    if problem:
        raise SpecError([problem], spec.name)
    paths = StudyPaths(spec, root or default_root())
    trials = expand(spec)
    _write_spec(spec, paths)
    _check_storage(paths)
    _check_tracking(paths.tracking_uri)

    counts = param_counts(trials)
    rows = {t.trial_id: plan_trial(t, counts[t.trial_id]) for t in trials}
    runs = tracking.StudyRuns(paths.tracking_uri, spec.name, paths.artifacts)
    run_ids = {t.trial_id: runs.trial_run(t, tracking.trial_params(t, counts[t.trial_id],
                                                                    rows[t.trial_id].flops))
               for t in trials}
    runs.log_spec(dump_spec(spec))
    finished = frozenset(tid for tid, run in runs.trial_runs().items() if run.info.status == "FINISHED")

    connect_ray()
    import ray

    if spec.resources.cluster_cpus is None:
        total = ray.cluster_resources()
        check_fits_cluster(spec, total.get("CPU", 0.0), total.get("GPU", 0.0))

    results = fit_trials(trials, {k: r.flops for k, r in rows.items()}, run_ids, finished, paths, "tune",
                         progress_interval_s, search=spec.search)
    if spec.patch is not None and not [r for r in results if r.error]:
        from reliscale.patch.stage import run_patch_stage

        results += run_patch_stage(spec, trials, paths, runs, fit_trials, progress_interval_s)
    if spec.finetune is not None and not [r for r in results if r.error]:
        from reliscale.driver.finetune import run_finetune_stage

        results += run_finetune_stage(spec, trials, paths, runs, fit_trials, progress_interval_s)
    ok = not [r for r in results if r.error]
    report_results(spec, paths, runs.experiment_id)
    if ok and spec.analysis:
        fit_study_laws(spec, paths)
    runs.finish(ok=ok)
    return results


def report_results(spec: StudySpec, paths: StudyPaths, experiment_id: str) -> None:
    """The finished study's table (every trial's state and final metrics) and where to see its runs."""
    from reliscale.driver.status import format_status, study_status

    print("\n" + format_status(study_status(spec, paths.dir.parent)), flush=True)
    uri = paths.tracking_uri
    serve = "" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}, then "
    print(f"\nMLflow runs: {serve}{tracking.ui_link(uri, experiment_id)}", flush=True)


def fit_trials(trials: list[TrialConfig], flops: dict[str, float], run_ids: dict[str, str],
               finished: frozenset[str], paths: StudyPaths, tune_name: str, progress_interval_s: float,
               init_from: dict[str, StartFrom] | None = None, search: SearchSpec | None = None) -> list:
    """Run trials as one Ray Tune grid named `tune_name` (continuing it if it was stopped); with a
    `search`, its scheduler prunes the sweep of each cell (`reliscale.driver.search`)."""
    from ray import tune

    from reliscale.compat.ray_train import set_restored_callbacks
    from reliscale.driver import search as pruning
    from reliscale.driver.progress import ProgressView
    from reliscale.trial.run import run_trial

    spec = trials[0].spec
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, trials={t.trial_id: t for t in trials}, run_ids=run_ids,
                             tracking_uri=paths.tracking_uri, storage=str(paths.trials_dir),
                             finished=finished, init_from=init_from),
        {"cpu": TRIAL_CPU},
    )
    view = ProgressView(spec.name, flops, {t.trial_id: t.data_size for t in trials},
                        min(spec.resources.max_concurrent_trials, len(trials)), progress_interval_s,
                        pruning=pruning.label(search) if search else None)
    callbacks = [view, pruning.RecordPruned(spec.name, run_ids, paths.tracking_uri)] if search else [view]
    run_config = tune.RunConfig(
        name=tune_name, storage_path=str(paths.storage), verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=1),
    )
    # Largest trials first (with a search, within each setting: see run_order): the study ends sooner
    # when no big trial starts last, alone.
    order = pruning.run_order(trials, flops) if search else sorted(flops, key=lambda tid: -flops[tid])
    grid = {"trial_id": tune.grid_search(order)}
    tune_dir = paths.storage / tune_name
    if tune.Tuner.can_restore(str(tune_dir)):
        tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_errored=True, param_space=grid)
        # The restored Tuner unpickles the old run's callbacks; show this run's view instead.
        set_restored_callbacks(tuner, callbacks)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=grid,
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.max_concurrent_trials,
                                        scheduler=pruning.CellASHA(search, trials) if search else None),
            run_config=run_config,
        )
    return list(tuner.fit())
