"""MNIST-1D classification with in-distribution, covariate-shift and OOD splits.

Examples follow MNIST-1D's generative process (Greydanus 2020; the ``mnist1d`` package
provides the digit templates): a 12-point digit template is padded with 36-60 zeros,
resampled onto a 72-point grid, scaled in amplitude, circularly translated, its background
filled with smoothed noise, iid noise added, sheared by a linear ramp, and resampled to 40
points. It is re-implemented here, vectorised, with an explicit numpy Generator, because
``mnist1d.data.make_dataset`` seeds numpy's global RNG, normalises each generated set by
its own statistics (which would undo an amplitude shift) and cannot change one factor at a
time. Signals are divided by one fixed constant, the same for every split.

Layout: the training classes are digits 0-7; the ``ood`` split holds the unseen digits
8 and 9 (its labels are those digits, never valid classes). The few-shot task (``fewshot``)
is 10-way over all digits, rendered as in distribution: a support pool to draw k labelled
examples per digit from, and a query set, each from its own stream. The covariate-shift splits
re-render the *same* examples as ``id`` (same digits, labels and random draws) with one
generative factor moved outside its training range:

- ``noise``: iid noise std 0.15 instead of 0.02;
- ``scale``: 6-18 zeros of padding instead of 36-60, so digits are about 2x wider;
- ``shift``: translations of 48-71 grid points, which training (0-47) never shows;
- ``blur``: the final signal smoothed by a Gaussian of std 1.5 samples.

Inputs are ``(1, 1, 40)`` "images" (channels, height, width): transformers' ViT takes them
with ``image_size=(1, 40)``, ``patch_size=(1, p)`` and ``num_channels=1``.

Every example is a function of (seed, stream, chunk of 1024), so any training set is a
prefix of a larger one (nested data sizes) and eval splits do not depend on ``train_size``.

The ``mnist1d`` package (which imports matplotlib) and scipy load when a signal is first
rendered: the task registry imports this module in every driver, trial actor and worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from reliscale.tasks.base import TaskInfo, TaskKind
from reliscale.tasks.cache import cached_arrays, default_cache_dir
from reliscale.tasks.classification import CLASSIFICATION_METRICS, TECHNIQUES, ClassificationStream
from reliscale.tasks.registry import register

VERSION = 1  # bump when the generator changes: it names the cache files
ID_CLASSES = tuple(range(8))
OOD_CLASSES = (8, 9)
ALL_CLASSES = ID_CLASSES + OOD_CLASSES
NUM_CLASSES = len(ID_CLASSES)
TEMPLATE_LEN = 12
GRID_LEN = 72  # template + the largest training padding, as mnist1d
SIGNAL_LEN = 40
RAW_STD = 0.156  # std of the raw in-distribution signal (measured on 1e5 examples)
CHUNK = 1024
SIGNAL_PATCH = 4  # signal points per token of the models
TRAIN_STREAM, TEST_STREAM, OOD_STREAM, EPOCH_STREAM, QUERY_STREAM, SUPPORT_STREAM = range(6)
SUPPORT_POOL = 1000  # about 100 per digit: 25 shots x a few draws without exhausting a digit


@dataclass(frozen=True)
class Factors:
    """Ranges of the generative factors; ranges are [lo, hi] for padding, [lo, hi) else."""

    padding: tuple[int, int] = (36, 60)
    amplitude: tuple[float, float] = (0.8, 1.2)
    translation: tuple[int, int] = (0, 48)
    background_noise: float = 0.25
    iid_noise: float = 0.02
    shear: float = 0.75
    blur: float = 0.0


ID_FACTORS = Factors()
SPLIT_FACTORS: dict[str, Factors] = {
    "id": ID_FACTORS,
    "noise": replace(ID_FACTORS, iid_noise=0.15),
    "scale": replace(ID_FACTORS, padding=(6, 18)),
    "shift": replace(ID_FACTORS, translation=(48, GRID_LEN)),
    "blur": replace(ID_FACTORS, blur=1.5),
    "ood": ID_FACTORS,
}


def draw(seed: int, stream: int, n: int, classes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The random draws of ``n`` examples: labels, uniforms per factor, noise arrays."""
    chunks = []
    for c in range(-(-n // CHUNK)):
        rng = np.random.default_rng([seed, stream, c])
        chunks.append(
            {
                "label": rng.choice(np.array(classes), CHUNK),
                "padding": rng.random(CHUNK),
                "amplitude": rng.random(CHUNK),
                "translation": rng.random(CHUNK),
                "shear": rng.random(CHUNK),
                "background": rng.standard_normal((CHUNK, GRID_LEN)),
                "iid": rng.standard_normal((CHUNK, GRID_LEN)),
            }
        )
    return {k: np.concatenate([ch[k] for ch in chunks])[:n] for k in chunks[0]}


def _resample(x: np.ndarray, lengths: np.ndarray, out_len: int) -> np.ndarray:
    """Linearly resample the first ``lengths[i]`` points of each row onto ``out_len``."""
    pos = np.linspace(0.0, 1.0, out_len)[None, :] * (lengths[:, None] - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[1] - 1)
    frac = pos - lo
    rows = np.arange(len(x))[:, None]
    return x[rows, lo] * (1 - frac) + x[rows, hi] * frac


def render(d: dict[str, np.ndarray], f: Factors) -> np.ndarray:
    """Signals [n, 40] (float32, normalised) of the draws ``d`` under factors ``f``."""
    from mnist1d.data import get_templates
    from scipy.ndimage import gaussian_filter1d

    n = len(d["label"])
    rows = np.arange(n)[:, None]
    pad = f.padding[0] + np.floor(d["padding"] * (f.padding[1] - f.padding[0] + 1))
    padded = np.zeros((n, TEMPLATE_LEN + f.padding[1] + 1))
    padded[:, :TEMPLATE_LEN] = get_templates()["x"][d["label"]] + 1e-8  # nonzero = digit
    x = _resample(padded, TEMPLATE_LEN + pad, GRID_LEN)
    x *= (f.amplitude[0] + (f.amplitude[1] - f.amplitude[0]) * d["amplitude"])[:, None]
    k = np.floor(f.translation[0] + (f.translation[1] - f.translation[0]) * d["translation"])
    x = x[rows, (np.arange(GRID_LEN)[None, :] - k[:, None].astype(np.int64)) % GRID_LEN]
    background = gaussian_filter1d(f.background_noise * d["background"], sigma=2, axis=-1)
    x = np.where(x != 0, x, background) + f.iid_noise * d["iid"]
    x -= (f.shear * (d["shear"] - 0.5))[:, None] * np.linspace(-0.5, 0.5, GRID_LEN)[None, :]
    x = _resample(x, np.full(n, GRID_LEN), SIGNAL_LEN)
    if f.blur:
        x = gaussian_filter1d(x, sigma=f.blur, axis=-1)
    return (x / RAW_STD).astype(np.float32)


class MNIST1DTask:
    """MNIST-1D: a budgeted training stream and fixed eval splits, cached as npz files.

    Arrays are numpy: x float32 of shape ``(n, *input_shape)``, y int64.
    """

    num_classes = NUM_CLASSES
    unseen_classes = OOD_CLASSES
    input_shape = (1, 1, SIGNAL_LEN)
    split_names = tuple(SPLIT_FACTORS)

    def __init__(
        self, seed: int, train_size: int, eval_size: int, cache_dir: str | Path | None = None
    ) -> None:
        if train_size < 1 or eval_size < 1:
            raise ValueError(
                f"train_size and eval_size must be >= 1, got {train_size}, {eval_size}"
            )
        self.seed, self.train_size, self.eval_size = seed, train_size, eval_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._train: tuple[np.ndarray, np.ndarray] | None = None

    def _load(
        self, name: str, stream: int, n: int, classes: tuple[int, ...], f: Factors
    ) -> tuple[np.ndarray, np.ndarray]:
        def build() -> dict[str, np.ndarray]:
            d = draw(self.seed, stream, n, classes)
            x = render(d, f).reshape(n, *self.input_shape)
            return {"x": x, "y": d["label"].astype(np.int64)}

        path = self.cache_dir / f"mnist1d-v{VERSION}-seed{self.seed}-{name}-n{n}.npz"
        arrays = cached_arrays(path, build)
        return arrays["x"], arrays["y"]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """An eval split of ``eval_size`` examples; see the module docstring."""
        if name not in SPLIT_FACTORS:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(self.split_names)}")
        stream, classes = (OOD_STREAM, OOD_CLASSES) if name == "ood" else (TEST_STREAM, ID_CLASSES)
        return self._load(name, stream, self.eval_size, classes, SPLIT_FACTORS[name])

    def fewshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The 10-way few-shot task: support pool x, y and query x, y (``eval_size`` examples)."""
        xs, ys = self._load("fewshot_support", SUPPORT_STREAM, SUPPORT_POOL, ALL_CLASSES, ID_FACTORS)
        xq, yq = self._load("fewshot_query", QUERY_STREAM, self.eval_size, ALL_CLASSES, ID_FACTORS)
        return xs, ys, xq, yq

    def train_examples(
        self, step: int, rank: int, world_size: int, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank ``rank``'s share of global batch ``step`` (``world_size * batch_size`` examples).

        Within an epoch of ``train_size // (world_size * batch_size)`` steps no example
        repeats and ranks get disjoint examples; the first epoch reads the training set in
        order, each later one in a seeded permutation.
        """
        if not 0 <= rank < world_size or step < 0 or batch_size < 1:
            raise ValueError(
                f"bad step/rank/world_size/batch_size: {step}/{rank}/{world_size}/{batch_size}"
            )
        global_batch = world_size * batch_size
        steps_per_epoch = self.train_size // global_batch
        if steps_per_epoch == 0:
            raise ValueError(f"global batch {global_batch} exceeds train_size {self.train_size}")
        if self._train is None:
            self._train = self._load("train", TRAIN_STREAM, self.train_size, ID_CLASSES, ID_FACTORS)
        epoch, within = divmod(step, steps_per_epoch)
        start = within * global_batch + rank * batch_size
        if epoch == 0:
            idx = np.arange(start, start + batch_size)
        else:
            rng = np.random.default_rng([self.seed, EPOCH_STREAM, epoch])
            idx = rng.permutation(self.train_size)[start : start + batch_size]
        x, y = self._train
        return x[idx], y[idx]


@register
class MNIST1D(TaskKind):
    """MNIST-1D, generated procedurally: in-distribution, covariate shifts, unseen classes, and
    few-shot adaptation to all ten digits."""

    name = "mnist1d"
    info = TaskInfo(
        kind="classification", unit="examples", families=("vit", "encdec", "decoder"),
        techniques=TECHNIQUES, splits=("id", *(s for s in SPLIT_FACTORS if s != "id"), "fewshot"),
        metrics=CLASSIFICATION_METRICS,
    )

    def build(self, trial, world: int, cache_dir: Path) -> ClassificationStream:
        task = MNIST1DTask(trial.seed, trial.data_size, trial.spec.eval.examples, cache_dir)
        return ClassificationStream(task, world, trial.spec.grad_accumulation())

    def model(self, trial):
        from reliscale.models.build import signal_classifier

        return signal_classifier(trial, SIGNAL_LEN, SIGNAL_PATCH, NUM_CLASSES)

    def evaluator(self, task, trial):
        from reliscale.evaluation.classification import ClassificationEvaluator

        return ClassificationEvaluator(task, trial.spec.splits(), trial.spec.eval.metrics)

    def sequence_lengths(self, trial) -> tuple[int, int]:
        patches = SIGNAL_LEN // SIGNAL_PATCH
        if trial.family == "vit":
            return patches + 1, (patches + 2 if trial.size.dec else 0)
        return patches, (1 if trial.family == "encdec" else 0)
