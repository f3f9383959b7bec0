"""The trials of a spec's `finetune` section: each pretrained trial's fine-tune on the downstream
dataset, derived from the trial's config the way `expand` derives the grid (no I/O)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from reliscale.spec.schema import StudySpec, TrialConfig
from reliscale.tasks import TASKS


def finetune_spec(spec: StudySpec) -> StudySpec:
    """The spec a fine-tune trains under: the downstream dataset as `data.images.root`, its
    `ood_classes`, the fine-tune's batch size and learning rate, and no few-shot split (the
    downstream classes are trained on)."""
    f, im = spec.finetune, spec.data.images
    images = im.model_copy(update={"root": im.downstream_root, "ood_classes": f.ood_classes, "ood_root": None,
                                   "downstream_root": None, "num_classes": f.num_classes})
    batch = f.batch_size or spec.data.batch_size
    data = spec.data.model_copy(update={"images": images, "sizes": (f.size,), "batch_size": batch})
    train = spec.train
    if f.lr is not None:
        train = train.model_copy(update={"optimizer": train.optimizer.model_copy(update={"lr": f.lr})})
    downstream = spec.model_copy(update={"data": data, "train": train, "finetune": None, "analysis": None,
                                         "search": None})
    splits = tuple(s for s in TASKS["images"].splits(downstream) if s != "fewshot")
    return downstream.model_copy(update={"eval": spec.eval.model_copy(update={"splits": splits})})


def finetune_trial(base: TrialConfig) -> TrialConfig:
    """A trial like `base` (model, technique, seed, resources) trained on the downstream dataset."""
    spec = finetune_spec(base.spec)
    name = Path(base.spec.data.images.downstream_root).name
    return replace(base, trial_id=f"{base.trial_id}_ft-{name}", data_size=int(base.spec.finetune.size),
                   spec=spec)


def finetune_trials(spec: StudySpec, trials: list[TrialConfig]) -> list[tuple[TrialConfig, TrialConfig]]:
    """(pretrained trial, its fine-tune) for the trials `finetune.trials` names (every one by default)."""
    if spec.finetune is None:
        return []
    wanted = spec.finetune.trials
    return [(t, finetune_trial(t)) for t in trials if wanted is None or t.trial_id in wanted]
