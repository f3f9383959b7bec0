"""One Tune trial: build and fit the trial's Ray Train data-parallel trainer.

Kept light on purpose: the Tune trial actor imports this module, and the
workers import the heavy training stack (torch, DeepSpeed, transformers) only
inside `worker_loop`; the trainer's backend (`rendezvous.EnvRendezvous`) is torch-free
too, so the trial actor, which also runs the Train controller (`reliscale.trial.trainer`), never
imports torch.
"""

from __future__ import annotations

import gc

from reliscale.spec.schema import TrialConfig
from reliscale.worker.checkpoints import StartFrom


def import_training_stack():
    """Import the worker's training loop (torch, DeepSpeed, transformers, MLflow) and return it.

    The import creates ~0.9 M Python objects and the cyclic GC, triggered by the count of new
    objects, rescans them as they pile up: 8 full collections, a quarter of the import's time
    (5.1 -> 3.8 s a worker, bench/platform.md). Collection pauses while importing; the imported
    objects, which live as long as the process, are then frozen out of every later collection.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        import reliscale.models.build  # noqa: F401  the tasks' models (transformers), which tasks load on first use
        from reliscale.worker.loop import train_loop
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return train_loop


def worker_loop(config: dict) -> None:
    """The function every Ray Train worker runs."""
    import_training_stack()(config)


def run_trial(config: dict, trials: dict[str, TrialConfig], run_ids: dict[str, str], tracking_uri: str,
              storage: str, finished: frozenset[str] = frozenset(),
              init_from: dict[str, StartFrom] | None = None) -> None:
    """Fit the Ray Train trainer of trial `config["trial_id"]`; it restores from its own checkpoints.

    `init_from` maps a fine-tune trial to the weights it starts from.

    `finished` holds the trials whose MLflow run had finished when the driver started: Tune
    saves its own state only every few seconds, so a driver killed just after a trial ended
    can leave Tune believing it still runs. Such a trial is not started again.
    """
    if config["trial_id"] in finished:
        return
    import ray.train

    from reliscale.trial.rendezvous import EnvRendezvous
    from reliscale.trial.trainer import (
        ReportToTune,
        TrialTrainer,
        placement_group_key,
        remove_recorded_placement_group,
    )

    trial = trials[config["trial_id"]]
    # the workers' placement group of an earlier try whose trial actor died with its controller in it
    pg_key = placement_group_key(trial.study, trial.trial_id)
    remove_recorded_placement_group(pg_key)
    r = trial.spec.resources
    resources = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker:
        resources["GPU"] = r.gpus_per_worker
    trainer = TrialTrainer(
        worker_loop, backend_config=EnvRendezvous(), placement_group_key=pg_key,
        train_loop_config={"trial": trial, "run_id": run_ids[trial.trial_id], "tracking_uri": tracking_uri,
                           "init_from": (init_from or {}).get(trial.trial_id)},
        scaling_config=ray.train.ScalingConfig(num_workers=r.workers, use_gpu=r.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=trial.trial_id, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[ReportToTune()],
            # Ray Train's INFO lines (one per report, per rank) would bury the study's live view;
            # warnings and errors still reach the console, everything still reaches Ray's log files.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        trainer.fit()
    finally:  # left behind by a controller stopped before its own clean-up
        remove_recorded_placement_group(pg_key)
