"""Every MLflow call of the platform, and the tags and params its runs carry.

A study is one experiment with one parent run and one child run per trial, fine-tune and α
sweep (`docs/mlflow-layout.md`). The parts:
  schema  tag names, roles, outcomes, a trial's params; imports nothing
  store   retries, the study's runs (found or created by the driver, or opened read-only)
  logger  TrialLogger, rank 0's buffered logging into its trial's run

The schema's names are loaded here; the rest loads MLflow on first use (PEP 562), so that
`import reliscale.tracking.schema` (the analysis does) does not import MLflow.
"""

from __future__ import annotations

from reliscale.tracking.schema import (
    AXES,
    DIVERGED,
    DIVERGED_WHY,
    EXPERIMENT_KIND,
    FINETUNE,
    MODEL_TRAINING,
    NODE_ID,
    OUTCOME,
    PARENT,
    PATCH,
    PATCH_ALPHA,
    PATCH_ID,
    PRUNED,
    ROLE,
    STUDY,
    STUDY_ROLE,
    TRIAL,
    TRIAL_ID,
    trial_params,
)

_STORE = ("PATIENT", "PERMANENT", "NoRuns", "StudyRuns", "check_reachable", "complete_run",
          "default_uri", "transient", "ui_link", "with_retries")

__all__ = ["AXES", "DIVERGED", "DIVERGED_WHY", "EXPERIMENT_KIND", "FINETUNE", "MODEL_TRAINING", "NODE_ID", "OUTCOME", "PARENT", "PATCH",
           "PATCH_ALPHA", "PATCH_ID", "PRUNED", "ROLE", "STUDY", "STUDY_ROLE", "TRIAL", "TRIAL_ID",
           "TrialLogger", "trial_params", *_STORE]


def __getattr__(name: str):
    if name in _STORE:
        import reliscale.tracking.store as store

        return getattr(store, name)
    if name == "TrialLogger":
        import reliscale.tracking.logger as logger

        return logger.TrialLogger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
