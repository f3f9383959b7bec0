"""The study spec: one schema, validated once, expanded into typed trial configs.

A spec is YAML. `load_spec(path, overrides)` applies `--set key.path=value`
overrides, validates the whole document and raises one `SpecError` listing every
problem (key path, bad value, what is allowed) before anything runs.
`expand(spec)` turns the validated spec into the grid of `TrialConfig`s.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from reliscale.spec import ladder
from reliscale.tasks import TASKS, TaskInfo

# ------------------------------------------------------------------ schema


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShapeSpec(_Section):
    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    heads: int = Field(gt=0)
    ffn: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ShapeSpec:
        if self.width % self.heads:
            raise At("heads", f"{self.heads} does not divide width={self.width}; "
                     f"allowed: a divisor of {self.width}")
        return self

    def to_shape(self) -> ladder.Shape:
        return ladder.Shape(self.width, self.depth, self.heads, self.ffn)


def _size_kind(v: Any) -> str:
    if isinstance(v, dict | BaseModel):
        keys = set(v) if isinstance(v, dict) else set(type(v).model_fields)
        return "two" if keys & {"enc", "dec"} else "shape"
    return "rung"


SizeRef = Annotated[
    Annotated[str, Tag("rung")] | Annotated[ShapeSpec, Tag("shape")], Discriminator(_size_kind)
]


class TwoAxisSize(_Section):
    """A size on both axes of a two-stack model (vision/text, encoder/decoder)."""

    enc: SizeRef
    dec: SizeRef


AnySize = Annotated[
    Annotated[str, Tag("rung")] | Annotated[ShapeSpec, Tag("shape")] | Annotated[TwoAxisSize, Tag("two")],
    Discriminator(_size_kind),
]


def _as_tuple(v: Any) -> Any:
    """An axis may be given as one value or a list of values; store a tuple either way."""
    return tuple(v) if isinstance(v, list | tuple) else (v,)


def _one_or_many(v: Any) -> Any:
    """A hyperparameter is one value or a list of values (a grid axis); a list of one is the value."""
    if isinstance(v, list | tuple):
        return v[0] if len(v) == 1 else tuple(v)
    return v


def _absolute(path: str) -> str:
    """A data path as every process reads it: relative paths are taken from where the spec is loaded
    (trials run in other folders, on other nodes)."""
    return str(Path(path).expanduser().resolve())


def _values(v: Any) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _check_each(name: str, v: Any, ok: Any, allowed: str) -> Any:
    for i, x in enumerate(_values(v)):
        if isinstance(x, bool) or not ok(x):
            raise At(f"[{i}]" if isinstance(v, tuple) else "", f"{x!r} is not allowed; allowed: {allowed}")
    if isinstance(v, tuple) and len(set(v)) != len(v):
        raise At("", f"{list(v)} repeats a value; allowed: distinct values of {name}")
    return v


class ModelSpec(_Section):
    family: Literal["decoder", "vit", "encdec"]
    sizes: tuple[AnySize, ...] = Field(min_length=1)

    _sizes_as_tuple = field_validator("sizes", mode="before")(_as_tuple)

    @model_validator(mode="after")
    def _known_rungs(self) -> ModelSpec:
        rungs = ladder.LADDERS[self.family]
        for i, size in enumerate(self.sizes):
            refs = (size.enc, size.dec) if isinstance(size, TwoAxisSize) else (size,)
            for ref in refs:
                if isinstance(ref, str) and ref not in rungs:
                    raise At(f"sizes[{i}]", f"{ref!r} is not a {self.family} ladder rung; "
                             f"allowed: {', '.join(rungs)} or {{width, depth, heads}}"
                             + _did_you_mean(ref, rungs))
            if isinstance(size, TwoAxisSize) and self.family == "decoder":
                raise At(f"sizes[{i}]", "the decoder family has one size axis; allowed: a rung "
                         "name or {width, depth, heads}, not {enc, dec}")
        return self

    def resolved_sizes(self) -> list[ladder.ModelSize]:
        def ref(r: str | ShapeSpec) -> str | ladder.Shape:
            return r if isinstance(r, str) else r.to_shape()

        out = []
        for s in self.sizes:
            if isinstance(s, TwoAxisSize):
                out.append(ladder.resolve_size(self.family, ref(s.enc), ref(s.dec)))
            else:
                out.append(ladder.resolve_size(self.family, ref(s)))
        return out


Mixture = dict[str, float]
PATCH_TASK = "icl"  # PAINT's patch stage interpolates in-context regressors over function classes


class ImageDataSpec(_Section):
    """An image dataset on disk for `data.task: images` (see `reliscale.tasks.images`).

    Folders are opened by the study's preflight, not here: a job file may name a folder that
    exists only on the cluster it is meant for.
    """

    root: str  # <root>/<split>/<class>/*.png|jpg, or <root>/<split>[-*].parquet
    train_split: str = "train"
    eval_split: str = "test"  # held-out images: the id, corrupted and ood splits
    num_classes: int | None = Field(default=None, gt=1)  # trained classes; None: count them on disk
    image_size: int = Field(default=224, gt=0)  # side the model sees; smaller images are upscaled
    patch_size: int = Field(default=16, gt=0)
    num_channels: Literal[1, 3] = 3
    mean: tuple[float, ...] = (0.5,)  # normalisation: one value for all channels, or one each
    std: tuple[float, ...] = (0.5,)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # training random resized crop: area fraction
    flip: float = Field(default=0.5, ge=0, le=1)  # training horizontal flip probability
    eval_crop: float | None = 0.875  # eval resize + centre crop (ImageNet 256 -> 224); None: resize
    corruptions: tuple[str, ...] = ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression")
    severities: tuple[int, ...] = (1, 3, 5)
    ood_classes: tuple[str, ...] = ()  # class names never trained on; their held-out images: `ood`
    ood_root: str | None = None  # a second dataset; its eval split is the split `ood_far`
    downstream_root: str | None = None  # few-shot dataset; None: every class of `root`
    on_bad_input: Literal["refuse", "skip"] = "refuse"
    cache: bool = True  # keep decoded images in memory: for sets that fit in every worker's RAM

    _lists_as_tuples = field_validator("corruptions", "severities", "mean", "std", mode="before")(
        _as_tuple)
    _absolute_roots = field_validator("root", "ood_root", "downstream_root")(
        lambda v: v if v is None else _absolute(v))

    @field_validator("ood_classes", mode="before")
    @classmethod
    def _class_names(cls, v: Any) -> Any:
        return tuple(str(c) for c in _as_tuple(v))  # folder names: `[8, 9]` means "8", "9"

    @field_validator("corruptions")
    @classmethod
    def _known_corruptions(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from reliscale.data.corruptions import CORRUPTIONS

        for i, name in enumerate(names):
            if name not in CORRUPTIONS:
                raise At(f"[{i}]", f"{name!r} is not a corruption; allowed: {', '.join(CORRUPTIONS)}"
                         + _did_you_mean(name, CORRUPTIONS))
        return _check_each("corruptions", names, lambda x: True, "")

    @field_validator("severities")
    @classmethod
    def _severity_range(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return _check_each("severities", v, lambda x: isinstance(x, int) and 1 <= x <= 5, "1..5")

    @model_validator(mode="after")
    def _consistent(self) -> ImageDataSpec:
        if self.image_size % self.patch_size:
            raise At("patch_size", f"{self.patch_size} does not divide image_size={self.image_size}; "
                     f"allowed: a divisor of {self.image_size}")
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, self.num_channels):
            raise At("mean", f"mean {list(self.mean)} and std {list(self.std)}: allowed: equal "
                     f"lengths, 1 or num_channels={self.num_channels}")
        if min(self.std) <= 0:
            raise At("std", f"{list(self.std)} is not allowed; allowed: values > 0")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise At("crop_scale", f"{list(self.crop_scale)} is not allowed; allowed: "
                     "[lo, hi] with 0 < lo <= hi <= 1")
        if self.eval_crop is not None and not 0 < self.eval_crop <= 1:
            raise At("eval_crop", f"{self.eval_crop!r} is not allowed; allowed: (0, 1] or null")
        if len(set(self.ood_classes)) != len(self.ood_classes):
            raise At("ood_classes", f"{list(self.ood_classes)} repeats a class; allowed: distinct names")
        return self


class DataSpec(_Section):
    task: str
    sizes: tuple[float, ...] = Field(min_length=1)
    unit: Literal["examples", "tokens"] = "examples"
    batch_size: int | tuple[int, ...]  # a list is a grid axis
    mixture: tuple[Mixture, ...] | None = None
    dim: int = Field(default=8, gt=0)  # in-context regression: input dimension d
    points: int = Field(default=16, gt=1)  # in-context regression: (x, y) pairs per prompt
    noise_std: float = Field(default=0.0, ge=0)
    sparsity: int = Field(default=3, gt=0)  # in-context regression: non-zero weights of sparse_linear
    seq_len: int = Field(default=128, gt=0)  # lm: tokens per sequence
    vocab_size: int = Field(default=50304, gt=1)  # lm
    path: str | None = None  # lm: a dataset folder `reliscale data prepare` wrote; None = the synthetic language
    domains: tuple[Mixture, ...] | None = None  # lm: training domains of the dataset and their weights
    cache_dir: str | None = None  # where generated splits are cached
    images: ImageDataSpec | None = None  # images: the dataset on disk and its eval splits

    _axes_as_tuples = field_validator("sizes", "mixture", "domains", mode="before")(
        lambda v: v if v is None else _as_tuple(v))
    _batch_sizes = field_validator("batch_size", mode="before")(_one_or_many)
    _absolute_path = field_validator("path")(lambda v: v if v is None else _absolute(v))

    @field_validator("batch_size")
    @classmethod
    def _positive_batches(cls, v: Any) -> Any:
        return _check_each("batch_size", v, lambda x: isinstance(x, int) and x > 0, "a positive integer")

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASKS:
            raise At("", f"{task!r} is not a task; allowed: {', '.join(TASKS)}" + _did_you_mean(task, TASKS))
        return task

    @field_validator("sizes")
    @classmethod
    def _positive_integers(cls, sizes: tuple[float, ...]) -> tuple[float, ...]:
        for i, s in enumerate(sizes):
            if not (s > 0 and math.isfinite(s) and float(s).is_integer()):
                raise At(f"[{i}]", f"{s!r} is not allowed; allowed: a positive integer")
        return sizes

    @model_validator(mode="after")
    def _task_fits(self) -> DataSpec:
        info = TASKS[self.task].info
        for i, s in enumerate(self.sizes):
            if s < max(_values(self.batch_size)):
                raise At(f"sizes[{i}]", f"{int(s)} is smaller than batch_size={max(_values(self.batch_size))}; "
                         "allowed: data sizes of at least one batch")
        if self.unit != info.unit:
            raise At("unit", f"{self.unit!r} is not allowed for task {self.task!r}; allowed: {info.unit!r}")
        if self.domains is not None and self.mixture is not None:
            raise At("domains", "is given beside data.mixture; allowed: one of them")
        kind = TASKS[self.task]
        key, names = ("domains", kind.domain_names(self)) if self.domains is not None else (
            "mixture", info.function_classes)
        what = "a domain of the dataset" if key == "domains" else "a function class"
        for j, mix in enumerate(self.mixtures()):
            for name, weight in mix.items():
                if names is not None and name not in names:
                    allowed = ", ".join(names) or "none (this task has no mixture)"
                    raise At(f"{key}[{j}].{name}", f"not {what} of task {self.task!r}; "
                             f"allowed: {allowed}" + _did_you_mean(name, names))
                if not weight > 0:
                    raise At(f"{key}[{j}].{name}", f"weight {weight!r} is not allowed; allowed: > 0")
        return self

    def mixtures(self) -> list[Mixture]:
        """The pretraining mixtures of the grid: function classes, or the dataset's domains."""
        given = self.domains if self.domains is not None else self.mixture
        if given is None:
            return [TASKS[self.task].default_mixture(self)]
        return list(given)


class OptimizerSpec(_Section):
    """AdamW. With `lr_scaling: inverse_width` each trial's LR is lr · lr_reference_width / width.

    The rule: maximal-update parametrisation's LR for Adam on hidden matrices falls as 1/width
    (Yang et al. 2022), and published ladders follow it closely: GPT-3's LR falls 3x from width
    768 to 2048 (6e-4 -> 2e-4; Brown et al. 2020, Table 2.1), the rule gives 2.7x. For a two-stack
    model the wider stack sets the width.
    """

    name: Literal["adamw"] = "adamw"
    lr: float | tuple[float, ...] = 1e-3  # a list is a grid axis
    lr_scaling: Literal["fixed", "inverse_width"] = "fixed"
    lr_reference_width: int = Field(default=1024, gt=0)  # the width at which the LR is `lr`
    weight_decay: float | tuple[float, ...] = 0.0  # a list is a grid axis
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(default=1.0, ge=0)

    _sweeps = field_validator("lr", "weight_decay", mode="before")(_one_or_many)

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, v: Any) -> Any:
        return _check_each("lr", v, lambda x: isinstance(x, int | float) and x > 0 and math.isfinite(x), "> 0")

    @field_validator("weight_decay")
    @classmethod
    def _weight_decay(cls, v: Any) -> Any:
        return _check_each("weight_decay", v, lambda x: isinstance(x, int | float) and x >= 0, ">= 0")


class ScheduleSpec(_Section):
    """Linear warmup over `warmup_frac` of the steps, then cosine decay to `min_lr_frac`·lr."""

    warmup_frac: float = Field(default=0.05, ge=0, lt=1)
    min_lr_frac: float = Field(default=0.1, ge=0, le=1)


class TrainSpec(_Section):
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: int = 2
    micro_batch: int | None = Field(default=None, gt=0)  # per worker; None = batch_size / workers
    activation_checkpointing: bool = False
    deepspeed: dict[str, Any] = Field(default_factory=dict)  # merged over the generated config

    @field_validator("zero_stage")
    @classmethod
    def _stage(cls, stage: int) -> int:
        if stage not in (0, 1, 2, 3):
            raise At("", f"{stage!r} is not a ZeRO stage; allowed: 0, 1, 2, 3")
        return stage

    @field_validator("deepspeed")
    @classmethod
    def _owned_keys(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        owned = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"}
        bad = sorted(owned & set(overrides))
        if bad:
            raise At(bad[0], "is set from data.batch_size and resources.workers; "
                     "allowed: any other DeepSpeed config key")
        return overrides


class EvalSpec(_Section):
    splits: tuple[str, ...] | None = None  # None = every split of the task
    metrics: tuple[str, ...] | None = None  # None = every metric of the task
    points: int = Field(default=6, ge=1)  # log-spaced eval points along the data axis
    examples: int = Field(default=512, gt=0)  # size of each fixed eval split
    choice_tasks: tuple[str, ...] = ()  # lm: JSONL files of {context, choices, label}, scored at every point

    _absolute_paths = field_validator("choice_tasks")(lambda v: tuple(_absolute(p) for p in v))


class ResourcesSpec(_Section):
    workers: int = Field(default=2, gt=0)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    max_concurrent_trials: int = Field(default=1, gt=0)
    max_failures: int = Field(default=2, ge=0)
    cluster_cpus: float | None = Field(default=None, gt=0)  # the largest the cluster can grow to
    cluster_gpus: float | None = Field(default=None, ge=0)
    memory_per_worker_gb: float | None = Field(default=None, gt=0)  # None: 80 per GPU, else RAM/workers

    @property
    def threads_per_worker(self) -> int:
        """Torch threads a worker runs: its CPU share rounded, at least one. A worker asking 1.99
        CPUs (a 2-CPU machine less the trial's own 0.01) gets two, not one."""
        return max(1, int(self.cpus_per_worker + 0.5))


class TrackingSpec(_Section):
    uri: str | None = None  # None = sqlite file in the study folder

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str | None) -> str | None:
        schemes = ("sqlite:///", "http://", "https://", "file:", "postgresql://")
        if uri is not None and not uri.startswith(schemes):
            raise At("", f"{uri!r} is not a tracking URI; allowed: one starting with {', '.join(schemes)}")
        return uri


class StorageSpec(_Section):
    path: str | None = None  # None = <study folder>/checkpoints


class ObjectiveSpec(_Section):
    """Options of the minimax objective: exponentiated-gradient step size on group weights."""

    step_size: float = Field(default=0.1, gt=0)


class TechniqueSpec(_Section):
    ensemble_size: int = Field(default=3, gt=0)
    gp_features: int = Field(default=256, gt=0)
    gp_spectral_norm: bool = False
    het_factors: int = Field(default=10, gt=0)
    het_samples: int = Field(default=16, gt=0)
    het_temperature: float = Field(default=1.0, gt=0)


class PatchSpec(_Section):
    """PAINT after the grid (Ilharco et al. 2022): fine-tune trained trials on patching tasks,
    interpolate θ(α) = (1-α)·θ_base + α·θ_ft and pick α on held-out prompts.

    joint: one fine-tune on the union of the tasks; parallel: one per task, weights averaged;
    sequential: fine-tune on task 1, patch, fine-tune the patched model on task 2, ...
    """

    tasks: tuple[Mixture, ...] = Field(min_length=1)  # each an ICL mixture, e.g. {sinusoid: 1}
    mode: Literal["joint", "sequential", "parallel"] = "joint"
    finetune_size: float  # training prompts of each fine-tune
    lr: float | None = Field(default=None, gt=0)  # replaces train.optimizer.lr for fine-tunes; None: keep it
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    select_metric: Literal["mse", "mse_first", "mse_mid", "mse_last", "ls_ratio"] = "mse"  # lower wins
    trials: tuple[str, ...] | None = None  # trial ids to patch; None: every trial of the grid

    _tasks_as_tuple = field_validator("tasks", mode="before")(_as_tuple)

    @field_validator("alphas", mode="before")
    @classmethod
    def _alpha_grid(cls, v: Any) -> tuple[float, ...]:
        from reliscale.patch.alphas import check_alphas, parse_alphas

        try:
            return parse_alphas(v) if isinstance(v, str) else check_alphas(_as_tuple(v))
        except ValueError as e:
            raise At("", str(e)) from None

    @field_validator("finetune_size")
    @classmethod
    def _whole(cls, n: float) -> float:
        if not (n > 0 and math.isfinite(n) and float(n).is_integer()):
            raise At("", f"{n!r} is not allowed; allowed: a positive integer")
        return n

    @model_validator(mode="after")
    def _known_classes(self) -> PatchSpec:
        classes = TASKS[PATCH_TASK].info.function_classes
        for j, mix in enumerate(self.tasks):
            if not mix:
                raise At(f"tasks[{j}]", "empty mixture; allowed: {class: weight, ...}")
            for name, weight in mix.items():
                if name not in classes:
                    raise At(f"tasks[{j}].{name}", f"not an icl function class; allowed: {', '.join(classes)}"
                             + _did_you_mean(name, classes))
                if not weight > 0:
                    raise At(f"tasks[{j}].{name}", f"weight {weight!r} is not allowed; allowed: > 0")
        return self


class FinetuneSpec(_Section):
    """Plex's adaptation after pretraining: fine-tune trained trials on `data.images.downstream_root`.

    Each fine-tune is an ordinary trial (role `finetune`) that starts from its pretrained trial's
    final weights with a new classifier head for the downstream classes, trains on the downstream
    training split and is evaluated there: `id`, the corrupted splits of `data.images`, and `ood`
    (the downstream `ood_classes`, never fine-tuned on). `reliscale.driver.finetune` runs them.
    """

    size: float  # downstream training examples each fine-tune sees
    lr: float | None = Field(default=None, gt=0)  # replaces train.optimizer.lr; None: the trial's own
    batch_size: int | None = Field(default=None, gt=0)  # None: the trial's data.batch_size
    ood_classes: tuple[str, ...] = ()  # downstream classes held out of fine-tuning: the split `ood`
    num_classes: int | None = Field(default=None, gt=1)  # classes fine-tuned on: lets `plan` size the head
    trials: tuple[str, ...] | None = None  # trial ids to fine-tune; None: every trial of the grid

    @field_validator("size")
    @classmethod
    def _whole(cls, n: float) -> float:
        if not (n > 0 and math.isfinite(n) and float(n).is_integer()):
            raise At("", f"{n!r} is not allowed; allowed: a positive integer")
        return n

    @field_validator("ood_classes", mode="before")
    @classmethod
    def _class_names(cls, v: Any) -> Any:
        names = tuple(str(c) for c in _as_tuple(v))
        if len(set(names)) != len(names):
            raise At("", f"{list(names)} repeats a class; allowed: distinct names")
        return names


# The axes a law may be fitted on one value of (`where`), as each trial of the grid names them.
LAW_WHERE = {"technique": lambda t: t.technique, "objective": lambda t: t.objective,
             "mixture": lambda t: t.mixture_name, "seed": lambda t: str(t.seed), "family": lambda t: t.family}


class LawSpec(_Section):
    """A scaling law the driver fits when the grid finishes (`reliscale fit`'s options)."""

    metric: str = Field(pattern=r"^(eval|train)/")  # e.g. eval/id/loss
    form: Literal["chinchilla", "power", "broken-power", "sigmoid-of-loss"] | None = None  # None: by the x count
    x: tuple[str, ...] | None = None  # columns, e.g. [n_params, data_size]; None: by form
    best_of: tuple[str, ...] = ()  # swept hyperparameters: fit the best trial of each cell
    by: str | None = None  # with best_of: the metric picking the best (default: `metric`)
    increasing: bool = False  # the metric grows towards 1 with scale (accuracy)
    bootstrap: int = Field(default=200, ge=0)
    holdout_largest: int = Field(default=1, ge=0)
    role: Literal["trial", "finetune"] = "trial"  # finetune: the fine-tunes, by their pretraining's size
    where: dict[str, str] = {}  # fit one slice of the grid, e.g. {technique: gp}; keys: LAW_WHERE

    @field_validator("where", mode="before")
    @classmethod
    def _axes_only(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        for key in v:
            if key not in LAW_WHERE:
                raise At(key, f"{key!r} is not an axis a law can be sliced by; "
                         f"allowed: {', '.join(LAW_WHERE)}")
        return {k: str(x) for k, x in v.items()}

    @model_validator(mode="after")
    def _by_needs_best_of(self) -> LawSpec:
        if self.by and not self.best_of:
            raise At("by", "applies with best_of only; allowed: best_of: [lr, ...] beside it")
        bad = sorted(set(self.best_of) - set(HYPER_LABELS))
        if bad:
            raise At("best_of", f"{bad[0]!r} is not a hyperparameter axis; allowed: {', '.join(HYPER_LABELS)}")
        return self


class AnalysisSpec(_Section):
    laws: tuple[LawSpec, ...] = Field(default=(), min_length=1)


class SearchSpec(_Section):
    """Early stopping of a hyperparameter sweep: Tune's ASHA (Li et al. 2020) inside each cell.

    Time is the fraction of a trial's own budget; rungs sit at grace_fraction · reduction_factor^k.
    At a rung a trial meets the trials of its cell (every axis but the swept hyperparameters) that
    reached it before; outside their best 1/reduction_factor, it is stopped: outcome `pruned`.
    """

    scheduler: Literal["asha"]
    metric: str  # eval/<split>/<metric>, one the trials log at their eval points
    mode: Literal["min", "max"] = "min"
    grace_fraction: float = 0.25
    reduction_factor: float = 3

    @field_validator("grace_fraction")
    @classmethod
    def _a_fraction(cls, v: float) -> float:
        if not 0 < v < 1:
            raise At("", f"{v!r} is not allowed; allowed: a fraction of the budget in (0, 1)")
        return v

    @field_validator("reduction_factor")
    @classmethod
    def _reduces(cls, v: float) -> float:
        if not v >= 2:
            raise At("", f"{v!r} is not allowed; allowed: >= 2")
        return v


Objective = Literal["erm", "minimax"]
Technique = Literal["none", "batchensemble", "gp", "het"]


class StudySpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelSpec
    data: DataSpec
    objective: tuple[Objective, ...] = Field(default=("erm",), min_length=1)
    objective_options: ObjectiveSpec = ObjectiveSpec()
    technique: tuple[Technique, ...] = Field(default=("none",), min_length=1)
    technique_options: TechniqueSpec = TechniqueSpec()
    seeds: tuple[int, ...] = Field(default=(0,), min_length=1)  # a count n means seeds 0..n-1
    eval: EvalSpec = EvalSpec()
    train: TrainSpec = TrainSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    storage: StorageSpec = StorageSpec()
    patch: PatchSpec | None = None
    search: SearchSpec | None = None
    finetune: FinetuneSpec | None = None  # downstream fine-tunes of the image task, after the grid
    analysis: AnalysisSpec | None = None  # laws fitted (and logged to the parent run) when the grid ends

    _axes_as_tuples = field_validator("objective", "technique", mode="before")(_as_tuple)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, seeds: Any) -> Any:
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 1:
                raise At("", f"{seeds!r} is not allowed; allowed: a count >= 1 or a list of seeds")
            return tuple(range(seeds))
        return seeds

    @model_validator(mode="after")
    def _cross_checks(self) -> StudySpec:
        info = TASKS[self.data.task].info
        if self.model.family not in info.families:
            raise At("model.family", f"{self.model.family!r} cannot train task {self.data.task!r}; "
                     f"allowed: {', '.join(info.families)}")
        for t in self.technique:
            if t not in info.techniques:
                raise At("technique", f"{t!r} does not apply to task {self.data.task!r}; "
                         f"allowed: {', '.join(info.techniques)}")
        kind = TASKS[self.data.task]
        for i, item in enumerate(self.eval.splits or ()):
            if not kind.allows_split(self, item):
                raise At(f"eval.splits[{i}]", f"{item!r} is not a split of task {self.data.task!r}; "
                         f"allowed: {', '.join(kind.splits(self))}{info.extra_split_help}"
                         + _did_you_mean(item, kind.splits(self) + info.function_classes))
        for i, item in enumerate(self.eval.metrics or ()):
            if item not in info.metrics:
                raise At(f"eval.metrics[{i}]", f"{item!r} is not known for task {self.data.task!r}; "
                         f"allowed: {', '.join(info.metrics)}" + _did_you_mean(item, info.metrics))
        problem = TASKS[self.data.task].check(self)
        if problem:
            raise At(*problem)
        if self.eval.splits is not None and "id" not in self.eval.splits:
            raise At("eval.splits", "the in-distribution split 'id' is required; "
                     "allowed: a list containing 'id'")
        r = self.resources
        for batch in _values(self.data.batch_size):
            if batch % r.workers:
                raise At("data.batch_size", f"{batch} is not divisible by resources.workers="
                         f"{r.workers}; allowed: a multiple of {r.workers}")
            micro = self.train.micro_batch
            if micro is not None and (batch // r.workers) % micro:
                raise At("train.micro_batch", f"{micro} does not divide the per-worker batch "
                         f"{batch // r.workers} (data.batch_size / resources.workers); "
                         f"allowed: a divisor of {batch // r.workers}")
        problem = cluster_fit_problem(self, r.cluster_cpus, r.cluster_gpus)
        if problem:
            raise At("resources.workers", problem)
        return self

    @model_validator(mode="after")
    def _patch_fits(self) -> StudySpec:
        p = self.patch
        if p is None:
            return self
        if self.data.task != PATCH_TASK:
            raise At("patch", f"patching needs in-context regression tasks, not data.task={self.data.task!r}; "
                     f"allowed: data.task {PATCH_TASK!r}")
        if p.finetune_size < max(_values(self.data.batch_size)):
            raise At("patch.finetune_size", f"{int(p.finetune_size)} is smaller than batch_size="
                     f"{max(_values(self.data.batch_size))}; allowed: at least one batch")
        grid = {mixture_name(m) for m in self.data.mixtures()}
        for j, mix in enumerate(p.tasks):
            if mixture_name(mix) in grid:
                raise At(f"patch.tasks[{j}]", f"{mixture_name(mix)!r} is a pretraining mixture of the grid; "
                         "allowed: a task the trials were not trained on")
        self._check_trial_ids("patch.trials", p.trials)
        return self

    def _check_trial_ids(self, key: str, named: tuple[str, ...] | None) -> None:
        """Each of `named` (a stage's `trials`) is a trial of the grid."""
        ids = [t.trial_id for t in expand(self)]
        for i, tid in enumerate(named or ()):
            if tid not in ids:
                raise At(f"{key}[{i}]", f"{tid!r} is not a trial of this grid; allowed: "
                         f"{', '.join(ids[:6])}{', ...' if len(ids) > 6 else ''}" + _did_you_mean(tid, ids))

    @model_validator(mode="after")
    def _laws_fit(self) -> StudySpec:
        laws = self.analysis.laws if self.analysis else ()
        grid = expand(self) if any(law.where for law in laws) else []
        for i, law in enumerate(laws):
            if law.role == "finetune" and self.finetune is None:
                raise At(f"analysis.laws[{i}].role", "'finetune' fits the fine-tunes, and the spec has no "
                         "finetune section; allowed: trial, or add a finetune section")
            for key, value in law.where.items():
                have = list(dict.fromkeys(LAW_WHERE[key](t) for t in grid))
                if value not in have:
                    raise At(f"analysis.laws[{i}].where.{key}", f"{value!r} is not a value of the grid; "
                             f"allowed: {', '.join(have)}")
        return self

    @model_validator(mode="after")
    def _finetune_fits(self) -> StudySpec:
        f = self.finetune
        if f is None:
            return self
        im = self.data.images
        if self.data.task != "images" or im is None or im.downstream_root is None:
            raise At("finetune", "fine-tunes need data.task 'images' with data.images.downstream_root; "
                     "allowed: a downstream dataset folder in data.images.downstream_root")
        batch = f.batch_size or max(_values(self.data.batch_size))
        if f.batch_size is not None and f.batch_size % self.resources.workers:
            raise At("finetune.batch_size", f"{f.batch_size} is not divisible by resources.workers="
                     f"{self.resources.workers}; allowed: a multiple of {self.resources.workers}")
        if f.size < batch:
            raise At("finetune.size", f"{int(f.size)} is smaller than the batch size {batch}; "
                     "allowed: at least one batch")
        self._check_trial_ids("finetune.trials", f.trials)
        return self

    @model_validator(mode="after")
    def _search_fits(self) -> StudySpec:
        s = self.search
        if s is None:
            return self
        if not any(isinstance(v, tuple) for v in self._hyper_values().values()):
            raise At("search.scheduler", "nothing to prune: no hyperparameter is swept; allowed: a list in "
                     "train.optimizer.lr, train.optimizer.weight_decay or data.batch_size")
        parts = s.metric.split("/")
        if len(parts) != 3 or parts[0] != "eval":
            raise At("search.metric", f"{s.metric!r} is not allowed; allowed: eval/<split>/<metric>, "
                     "e.g. eval/id/" + self.task_info().metrics[0])
        split, metric = parts[1:]
        if split not in self.splits():
            raise At("search.metric", f"split {split!r} of {s.metric!r} is not evaluated; allowed: "
                     f"{', '.join(self.splits())}" + _did_you_mean(split, self.splits()))
        metrics = self.eval.metrics or self.task_info().metrics
        if metric not in metrics:
            raise At("search.metric", f"{metric!r} of {s.metric!r} is not a metric the trials log "
                     f"(task {self.data.task!r}); allowed: {', '.join(metrics)}" + _did_you_mean(metric, metrics))
        return self

    # axes -------------------------------------------------------------
    def task_info(self) -> TaskInfo:
        return TASKS[self.data.task].info

    def hyperparameters(self) -> list[dict[str, float]]:
        """Every combination of the swept hyperparameters (one empty dict when none is swept)."""
        axes = {name: _values(value) for name, value in self._hyper_values().items() if isinstance(value, tuple)}
        return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]

    def _hyper_values(self) -> dict[str, Any]:
        opt = self.train.optimizer
        return {"lr": opt.lr, "batch_size": self.data.batch_size, "weight_decay": opt.weight_decay}

    def at(self, values: dict[str, float]) -> StudySpec:
        """This spec with the swept hyperparameters fixed to `values`: a trial's own spec."""
        if not values:
            return self
        opt = self.train.optimizer.model_copy(update={k: v for k, v in values.items() if k != "batch_size"})
        data = self.data.model_copy(update={k: v for k, v in values.items() if k == "batch_size"})
        return self.model_copy(update={"train": self.train.model_copy(update={"optimizer": opt}), "data": data})

    def micro_batch(self) -> int:
        return self.train.micro_batch or self.data.batch_size // self.resources.workers

    def grad_accumulation(self) -> int:
        return self.data.batch_size // (self.resources.workers * self.micro_batch())

    def splits(self) -> tuple[str, ...]:
        return self.eval.splits or TASKS[self.data.task].splits(self)


TRIAL_CPU = 0.01  # the Tune function trial's own request; its workers hold the real resources


def cluster_fit_problem(spec: StudySpec, cpus: float | None, gpus: float | None) -> str | None:
    """Why one trial needs more CPUs/GPUs than the cluster can ever provide, or None."""
    r = spec.resources
    need_cpu = r.workers * r.cpus_per_worker + TRIAL_CPU
    if cpus is not None and need_cpu > cpus + 1e-9:
        return (f"{r.workers} workers x {r.cpus_per_worker} CPU (+{TRIAL_CPU} for the trial) = "
                f"{need_cpu:g} CPUs, but the cluster has at most {cpus:g}; allowed: "
                f"workers x cpus_per_worker <= {cpus - TRIAL_CPU:g}")
    need_gpu = r.workers * r.gpus_per_worker
    if gpus is not None and need_gpu > gpus + 1e-9:
        return (f"{r.workers} workers x {r.gpus_per_worker} GPU = {need_gpu:g} GPUs, but the "
                f"cluster has at most {gpus:g}; allowed: workers x gpus_per_worker <= {gpus:g}")
    return None


def check_fits_cluster(spec: StudySpec, cpus: float | None, gpus: float | None) -> None:
    """The same check against a live cluster's resources, before any trial starts."""
    problem = cluster_fit_problem(spec, cpus, gpus)
    if problem:
        raise SpecError([f"resources.workers: {problem}"], spec.name)


# ------------------------------------------------------------------ errors


class At(ValueError):
    """A validation failure at `key`, relative to the section whose validator raised it."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class SpecError(ValueError):
    """Every problem of a spec, one line each: key path, bad value, what is allowed."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{lines}")


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section that `loc` points into."""
    model: Any = StudySpec
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            continue
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), model)
    return list(getattr(model, "model_fields", {}))


def _path(loc: tuple[Any, ...]) -> str:
    # pydantic's loc also names union branches ('str', 'ShapeSpec', 'function-after[...]'): drop them.
    keys = [p for p in loc if isinstance(p, int) or (p[:1].islower() and "[" not in p and p not in _TYPE_TAGS)]
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")


_TYPE_TAGS = {"str", "int", "float", "bool", "literal", "tuple", "dict", "list", "none",
              "rung", "shape", "two"}


def _format_error(err: dict[str, Any]) -> str:
    path = _path(err["loc"])
    exc = err.get("ctx", {}).get("error")
    if isinstance(exc, At):
        key = f"{path}.{exc.key}" if path and exc.key and not exc.key.startswith("[") else path + exc.key
        return f"{key}: {exc}"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"])
        return f"{path}: unknown key; allowed keys here: {', '.join(allowed)}" + _did_you_mean(
            err["loc"][-1], allowed)
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    hint = ""
    if err["type"] == "literal_error":
        hint = _did_you_mean(err.get("input"), re.findall(r"'([^']+)'", err["ctx"]["expected"]))
    return f"{path}: {err.get('input')!r} is not allowed: {err['msg']}{hint}"


def validate(doc: dict[str, Any], source: str = "spec") -> StudySpec:
    if not isinstance(doc, dict):
        raise SpecError([f"the spec must be a mapping of keys; got {type(doc).__name__}"], source)
    try:
        return StudySpec.model_validate(doc)
    except ValidationError as e:
        errors = e.errors()
        item_paths = {_path(err["loc"]) for err in errors}
        # A list whose only item failed also reports "too short": the item's own error says it all.
        errors = [err for err in errors if not (
            err["type"] == "too_short" and any(p.startswith(_path(err["loc"]) + "[") for p in item_paths))]
        problems = _merge_union_branches([_format_error(err) for err in errors])
        raise SpecError(problems, source) from None
    except SpecError as e:
        raise SpecError(e.problems, source) from None


def _merge_union_branches(problems: list[str]) -> list[str]:
    """A value failing every branch of a union yields one error per branch: one line per key."""
    merged: dict[str, list[str]] = {}
    for p in problems:
        key, _, rest = p.partition(": ")
        merged.setdefault(key, [])
        if rest not in merged[key]:
            merged[key].append(rest)
    return [f"{k}: {' | '.join(v)}" for k, v in merged.items()]


# ------------------------------------------------------------------ loading


def apply_override(doc: dict[str, Any], assignment: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise SpecError([f"--set {assignment!r}: expected key.path=value"])
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError([f"--set {assignment!r}: empty key in {key!r}"])
    node = doc
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise SpecError([f"--set {key}: {part!r} holds {nxt!r}, not a section"])
        node = nxt
    node[parts[-1]] = yaml.safe_load(raw)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"{path}: no such spec file"])
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError([f"not valid YAML: {e}"], str(path)) from None
    doc = doc or {}
    for assignment in overrides:
        apply_override(doc, assignment)
    return validate(doc, str(path))


def dump_spec(spec: StudySpec) -> str:
    """The resolved spec as YAML (defaults filled in), as logged and stored with a study."""
    return yaml.safe_dump(json.loads(spec.model_dump_json()), sort_keys=False)


# ------------------------------------------------------------------ the grid


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: its point on every axis plus the shared spec sections."""

    study: str
    trial_id: str
    family: str
    size: ladder.ModelSize
    data_size: int
    mixture: tuple[tuple[str, float], ...]
    objective: str
    technique: str
    seed: int
    spec: StudySpec  # the study's spec with this trial's swept hyperparameters fixed
    hyperparameters: tuple[tuple[str, float], ...] = ()  # the swept ones and their values here

    def __hash__(self) -> int:
        return hash((self.study, self.trial_id))

    @property
    def mixture_name(self) -> str:
        return mixture_name(dict(self.mixture))

    @property
    def data_per_step(self) -> int:
        """Examples (or tokens) one optimizer step consumes."""
        data = self.spec.data
        return data.batch_size * (data.seq_len if data.unit == "tokens" else 1)

    @property
    def lr(self) -> float:
        """Peak learning rate of this trial: the spec's, scaled by its width if the spec says so."""
        opt = self.spec.train.optimizer
        if opt.lr_scaling == "fixed":
            return opt.lr
        width = max(s.width for s in (self.size.enc, self.size.dec) if s is not None)
        return opt.lr * opt.lr_reference_width / width

    @property
    def steps(self) -> int:
        """Optimizer steps to consume the data budget (whole global batches)."""
        return max(1, self.data_size // self.data_per_step)


HYPER_LABELS = {"lr": "lr", "batch_size": "bs", "weight_decay": "wd"}  # in trial ids


def mixture_name(mix: Mixture) -> str:
    if not mix:
        return "none"
    if len(mix) == 1:
        return next(iter(mix))
    total = sum(mix.values())
    return "+".join(f"{k}{round(100 * v / total)}" for k, v in mix.items())


def format_data_size(n: int) -> str:
    """1000000 -> '1e6', 20000 -> '2e4', 32000 -> '3.2e4'."""
    mantissa, exp = f"{n:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def expand(spec: StudySpec) -> list[TrialConfig]:
    """The cross product of every axis given as a list, in a stable order."""
    mixtures = spec.data.mixtures()
    trials = []
    for size, d, mix, hyper, obj, tech, seed in itertools.product(
        spec.model.resolved_sizes(), spec.data.sizes, mixtures, spec.hyperparameters(), spec.objective,
        spec.technique, spec.seeds,
    ):
        parts = [f"{spec.model.family}-{size.name}", f"D{format_data_size(int(d))}"]
        if len(mixtures) > 1:
            parts.append(mixture_name(mix))
        parts += [f"{HYPER_LABELS[k]}{v:g}" for k, v in hyper.items()]
        parts += [obj, tech, f"s{seed}"]
        trials.append(TrialConfig(
            study=spec.name, trial_id="_".join(parts), family=spec.model.family, size=size,
            data_size=int(d), mixture=tuple(mix.items()), objective=obj, technique=tech,
            seed=seed, spec=spec.at(hyper), hyperparameters=tuple(hyper.items()),
        ))
    ids = [t.trial_id for t in trials]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SpecError([f"the grid repeats trial {dupes[0]!r}; allowed: distinct axis values"])
    return trials
