"""In-context regression over function classes (Garg et al. 2022; Yadlowsky et al. 2023).

A prompt is n pairs (x_i, y_i) with x ~ N(0, I_d) and y = f(x) for one f drawn
from a function class; the model predicts every y_i from the pairs before it.
Every class is scaled so that E[y²] = d: errors divided by d put the trivial
zero predictor at 1 for every class.

Training batches are a pure function of (seed, rank, step); eval splits of
(seed, split) and are cached on disk with their baselines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reliscale.tasks.cache import cached_arrays
from reliscale.tasks.registry import ICL_CLASSES

RELU_HIDDEN = 100
SPARSE_K = 3
KNN_K = 3
SIN_FREQ = 2.0

# An OOD split evaluates on the first class of this order that the mixture does not contain.
OOD_CLASS_ORDER = ("sparse_linear", "relu2nn", "sinusoid", "dense_linear")


def _functions(cls: str, rng: np.random.Generator, b: int, d: int, x: np.ndarray) -> np.ndarray:
    """y = f(x) for b functions of class `cls`, one per prompt; x: (b, n, d)."""
    if cls == "dense_linear":
        w = rng.standard_normal((b, d))
        return np.einsum("bnd,bd->bn", x, w)
    if cls == "sparse_linear":
        w = np.zeros((b, d))
        k = min(SPARSE_K, d)
        idx = np.argsort(rng.random((b, d)), axis=1)[:, :k]
        np.put_along_axis(w, idx, rng.standard_normal((b, k)) * np.sqrt(d / k), axis=1)
        return np.einsum("bnd,bd->bn", x, w)
    if cls == "relu2nn":
        w1 = rng.standard_normal((b, d, RELU_HIDDEN))
        w2 = rng.standard_normal((b, RELU_HIDDEN)) * np.sqrt(2.0 / RELU_HIDDEN)
        return np.einsum("bnh,bh->bn", np.maximum(np.einsum("bnd,bdh->bnh", x, w1), 0), w2)
    if cls == "sinusoid":
        w = rng.standard_normal((b, d)) / np.sqrt(d)
        phase = rng.uniform(0, 2 * np.pi, (b, 1))
        return np.sqrt(2 * d) * np.sin(SIN_FREQ * np.einsum("bnd,bd->bn", x, w) + phase)
    raise ValueError(f"unknown function class {cls!r}; allowed: {', '.join(ICL_CLASSES)}")


def sample_prompts(rng: np.random.Generator, n_prompts: int, mixture: dict[str, float], dim: int,
                   points: int, noise_std: float = 0.0, x_scale: float = 1.0,
                   y_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Prompts from a mixture of classes: x (B, n, d), y (B, n), group (B,) = class index in mixture."""
    names = list(mixture)
    probs = np.array([mixture[c] for c in names], dtype=float)
    group = rng.choice(len(names), size=n_prompts, p=probs / probs.sum())
    x = rng.standard_normal((n_prompts, points, dim)) * x_scale
    y = np.empty((n_prompts, points))
    for g, cls in enumerate(names):
        rows = np.flatnonzero(group == g)
        if rows.size:
            y[rows] = _functions(cls, rng, rows.size, dim, x[rows])
    y = y * y_scale + noise_std * rng.standard_normal(y.shape)
    return {"x": x.astype(np.float32), "y": y.astype(np.float32), "group": group.astype(np.int64)}


# ---------------------------------------------------------------- baselines


def baseline_errors(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Squared error / d of each baseline predicting y_k from the first k pairs: name -> (B, n)."""
    b, n, d = x.shape
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    preds = {name: np.zeros((b, n)) for name in ("ls", "avg", "knn", "zero")}
    for k in range(1, n):
        xs, ys, xq = x64[:, :k], y64[:, :k], x64[:, k]
        w_ls = np.einsum("bdk,bk->bd", np.linalg.pinv(xs), ys)  # minimum-norm least squares
        preds["ls"][:, k] = np.einsum("bd,bd->b", xq, w_ls)
        w_avg = np.einsum("bk,bkd->bd", ys, xs) / k
        preds["avg"][:, k] = np.einsum("bd,bd->b", xq, w_avg)
        dist = np.linalg.norm(xs - xq[:, None, :], axis=2)
        nearest = np.argsort(dist, axis=1)[:, :KNN_K]
        preds["knn"][:, k] = np.take_along_axis(ys, nearest, axis=1).mean(axis=1)
    return {name: (p - y64) ** 2 / d for name, p in preds.items()}


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class ICLSplit:
    x: np.ndarray
    y: np.ndarray
    group: np.ndarray
    baselines: dict[str, np.ndarray]  # name -> (B, n) normalised squared errors


def ood_class(mixture: dict[str, float]) -> str:
    return next(c for c in OOD_CLASS_ORDER if c not in mixture)


class ICLTask:
    """Streams training prompts and holds the fixed eval splits of one trial."""

    def __init__(self, mixture: dict[str, float], dim: int, points: int, noise_std: float,
                 seed: int, eval_examples: int, cache_dir: Path):
        self.mixture, self.dim, self.points, self.noise_std = dict(mixture), dim, points, noise_std
        self.seed, self.eval_examples, self.cache_dir = seed, eval_examples, Path(cache_dir)

    num_groups = property(lambda self: len(self.mixture))
    group_names = property(lambda self: list(self.mixture))

    def train_batch(self, step: int, micro: int, rank: int, size: int) -> dict[str, np.ndarray]:
        """Micro-batch `micro` of optimizer step `step` on `rank`: a pure function of its indices."""
        rng = np.random.default_rng([self.seed, 1, rank, step, micro])
        return sample_prompts(rng, size, self.mixture, self.dim, self.points, self.noise_std)

    def split_args(self, name: str) -> dict:
        """The generating distribution of each eval split."""
        if name == "id":
            return {"mixture": self.mixture}
        if name == "ood_class":
            return {"mixture": {ood_class(self.mixture): 1.0}}
        if name == "wnorm":  # functions with twice the weight norm
            return {"mixture": self.mixture, "y_scale": 2.0}
        if name == "xscale":  # inputs twice as large
            return {"mixture": self.mixture, "x_scale": 2.0}
        raise ValueError(f"unknown split {name!r}; allowed: id, ood_class, wnorm, xscale")

    def split(self, name: str) -> ICLSplit:
        args = self.split_args(name)
        key = (f"icl_{name}_{'-'.join(f'{k}{v:g}' for k, v in args['mixture'].items())}"
               f"_d{self.dim}_n{self.points}_e{self.noise_std:g}_x{args.get('x_scale', 1):g}"
               f"_y{args.get('y_scale', 1):g}_s{self.seed}_B{self.eval_examples}")

        def build() -> dict[str, np.ndarray]:
            rng = np.random.default_rng([self.seed, 2, sum(map(ord, name))])
            p = sample_prompts(rng, self.eval_examples, dim=self.dim, points=self.points,
                               noise_std=self.noise_std, **args)
            return {**p, **{f"baseline_{k}": v for k, v in baseline_errors(p["x"], p["y"]).items()}}

        arrays = cached_arrays(self.cache_dir / f"{key}.npz", build)
        base = {k.removeprefix("baseline_"): v for k, v in arrays.items() if k.startswith("baseline_")}
        return ICLSplit(arrays["x"], arrays["y"], arrays["group"], base)


def icl_metrics(pred: np.ndarray, split: ICLSplit) -> tuple[dict[str, float], np.ndarray]:
    """Scalar metrics of a split and the model's error curve over in-context examples."""
    d = split.x.shape[2]
    curve = ((pred.astype(np.float64) - split.y) ** 2 / d).mean(axis=0)
    base = {k: v.mean(axis=0) for k, v in split.baselines.items()}
    mid = min(d, len(curve) - 1)
    metrics = {
        "mse": float(curve.mean()),
        "mse_first": float(curve[0]),
        "mse_mid": float(curve[mid]),
        "mse_last": float(curve[-1]),
        "ls_ratio": float(curve.mean() / max(base["ls"].mean(), 1e-12)),
    }
    metrics.update({f"baseline_{k}": float(v.mean()) for k, v in base.items()})
    return metrics, curve
