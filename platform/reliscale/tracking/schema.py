"""The tags and params a study's MLflow runs carry: the contract the analysis reads.

Imports nothing, so that analysis code which must not load MLflow, Ray or torch can share
these names (`docs/mlflow-layout.md` describes the whole layout).
"""

from __future__ import annotations

# Tags
ROLE = "reliscale.role"  # one of the roles below
TRIAL_ID = "reliscale.trial_id"
STUDY = "reliscale.study"  # the study's name
PATCH_ID = "reliscale.patch_id"  # the id of an α sweep
PATCH_ALPHA = "reliscale.patch.alpha"  # the α a sweep chose
OUTCOME = "reliscale.outcome"  # an outcome below; absent on a trial that trained its whole budget
DIVERGED_WHY = "reliscale.diverged"  # what was not finite, on a diverged trial
NODE_ID = "reliscale.node_id"  # the Ray node rank 0 of a trial ran on
PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"  # the UI's mode

# Roles: the parent run, a grid trial, a PAINT fine-tune, an α sweep
STUDY_ROLE, TRIAL, FINETUNE, PATCH = "study", "trial", "finetune", "patch"

# Outcomes of a trial stopped before its budget
DIVERGED = "diverged"  # a non-finite loss or gradients
PRUNED = "pruned"  # stopped early by the study's scheduler

# The axes of a trial, also copied to tags (`reliscale.<axis>`) for the MLflow compare view
AXES = ("family", "size", "objective", "technique", "mixture", "seed", "data_size", "lr", "batch_size",
        "weight_decay")


def trial_params(trial, counts: dict[str, int], flops: float) -> dict[str, str]:
    """The params of a trial's child run: its axes and what its size costs."""
    spec = trial.spec
    params = {
        "trial_id": trial.trial_id, "family": trial.family, "size": trial.size.name,
        "data_size": trial.data_size, "data_unit": spec.data.unit, "task": spec.data.task,
        "flops": f"{flops:.6e}", "objective": trial.objective, "technique": trial.technique,
        "mixture": trial.mixture_name, "seed": trial.seed, "zero_stage": spec.train.zero_stage,
        "workers": spec.resources.workers, "precision": spec.train.precision,
        "batch_size": spec.data.batch_size, "lr": trial.lr, "weight_decay": spec.train.optimizer.weight_decay,
        **counts,
    }
    if trial.size.two_axis:
        params["size_enc"] = trial.size.enc.label
        params["size_dec"] = trial.size.dec.label
    return {k: str(v) for k, v in params.items()}
