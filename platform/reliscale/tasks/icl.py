"""In-context regression over function classes (Garg et al. 2022; Yadlowsky et al. 2023).

A prompt is n pairs (x_i, y_i) with x ~ N(0, I_d) and y = f(x) for one f drawn
from a function class; the model predicts every y_i from the pairs before it.
Every class is scaled so that E[y²] = d: errors divided by d put the trivial
zero predictor at 1 for every class.

Eval splits: the pretraining mixture (`id`), a class outside it (`ood_class`),
shifted weights or inputs (`wnorm`, `xscale`), any pure class by name, and convex
combinations of two classes (`convex-<a>-<b>[-<percent of b>]`), each beside the
baselines least squares, lasso, averaging, k-NN and zero.

Training batches are a pure function of (seed, rank, step); eval splits of
(seed, split) and are cached on disk with their baselines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reliscale.tasks.base import TaskInfo, TaskKind
from reliscale.tasks.cache import cached_arrays
from reliscale.tasks.registry import register

RELU_HIDDEN = 100
KNN_K = 3
SIN_FREQ = 2.0
LASSO_ALPHA = 0.01  # lasso L1 strength, sklearn scaling (1/2k)||y - Xw||² + α||w||₁: prompts are noise-free

ICL_CLASSES = ("dense_linear", "sparse_linear", "relu2nn", "sinusoid")
ICL_METRICS = ("mse", "mse_first", "mse_mid", "mse_last", "ls_ratio", "best_ratio", "worst_group_mse",
               "baseline_ls", "baseline_lasso", "baseline_avg", "baseline_knn", "baseline_zero",
               "baseline_best")
_CONVEX = re.compile(r"convex-({0})-({0})(?:-(\d{{1,2}}))?".format("|".join(ICL_CLASSES)))


def parse_convex_split(name: str) -> tuple[str, str, float] | None:
    """'convex-dense_linear-sinusoid-25' -> ('dense_linear', 'sinusoid', 0.25): 25 % of the second class.

    Without a percentage the two classes weigh half each. None when `name` is not such a split.
    """
    m = _CONVEX.fullmatch(name)
    if not m or m[1] == m[2] or m[3] in ("0", "00"):
        return None
    return m[1], m[2], int(m[3] or 50) / 100

# An OOD split evaluates on the first class of this order that the mixture does not contain.
OOD_CLASS_ORDER = ("sparse_linear", "relu2nn", "sinusoid", "dense_linear")


def _functions(cls: str, rng: np.random.Generator, b: int, d: int, x: np.ndarray,
               sparse_k: int) -> np.ndarray:
    """y = f(x) for b functions of class `cls`, one per prompt; x: (b, n, d)."""
    if cls == "dense_linear":
        w = rng.standard_normal((b, d))
        return np.einsum("bnd,bd->bn", x, w)
    if cls == "sparse_linear":
        w = np.zeros((b, d))
        k = min(sparse_k, d)
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
                   y_scale: float = 1.0, sparse_k: int = 3) -> dict[str, np.ndarray]:
    """Prompts from a mixture of classes: x (B, n, d), y (B, n), group (B,) = class index in mixture."""
    names = list(mixture)
    probs = np.array([mixture[c] for c in names], dtype=float)
    group = rng.choice(len(names), size=n_prompts, p=probs / probs.sum())
    x = rng.standard_normal((n_prompts, points, dim)) * x_scale
    y = np.empty((n_prompts, points))
    for g, cls in enumerate(names):
        rows = np.flatnonzero(group == g)
        if rows.size:
            y[rows] = _functions(cls, rng, rows.size, dim, x[rows], sparse_k)
    y = y * y_scale + noise_std * rng.standard_normal(y.shape)
    return {"x": x.astype(np.float32), "y": y.astype(np.float32), "group": group.astype(np.int64)}


def sample_convex_prompts(rng: np.random.Generator, n_prompts: int, a: str, b: str, t: float, dim: int,
                          points: int, noise_std: float = 0.0, sparse_k: int = 3) -> dict[str, np.ndarray]:
    """Prompts whose function is (1-t)·f_a + t·f_b, f_a and f_b drawn independently.

    Both classes have zero-mean functions with E[f²] = d, so dividing by sqrt((1-t)² + t²)
    keeps E[y²] = d.
    """
    x = rng.standard_normal((n_prompts, points, dim))
    mixed = (1 - t) * _functions(a, rng, n_prompts, dim, x, sparse_k) + t * _functions(b, rng, n_prompts, dim,
                                                                                        x, sparse_k)
    y = mixed / np.sqrt((1 - t) ** 2 + t**2) + noise_std * rng.standard_normal((n_prompts, points))
    return {"x": x.astype(np.float32), "y": y.astype(np.float32), "group": np.zeros(n_prompts, np.int64)}


# ---------------------------------------------------------------- baselines


def lasso(x: np.ndarray, y: np.ndarray, alpha: float, iters: int = 3000, tol: float = 1e-9) -> np.ndarray:
    """Batched lasso by FISTA: argmin_w (1/2k)||y - Xw||² + α||w||₁ for each of B problems.

    x: (B, k, d), y: (B, k) -> w: (B, d). Step 1/L with L the largest eigenvalue of XᵀX/k.
    """
    k = x.shape[1]
    gram = np.einsum("bki,bkj->bij", x, x) / k
    xty = np.einsum("bki,bk->bi", x, y) / k
    step = 1.0 / np.maximum(np.linalg.eigvalsh(gram)[:, -1], 1e-12)[:, None]
    w = z = np.zeros_like(xty)
    momentum = 1.0
    for _ in range(iters):
        grad = np.einsum("bij,bj->bi", gram, z) - xty
        u = z - step * grad
        w_next = np.sign(u) * np.maximum(np.abs(u) - step * alpha, 0.0)
        m_next = (1 + np.sqrt(1 + 4 * momentum**2)) / 2
        z = w_next + (momentum - 1) / m_next * (w_next - w)
        done = np.max(np.abs(w_next - w)) < tol
        w, momentum = w_next, m_next
        if done:
            break
    return w



def baseline_errors(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Squared error / d of each baseline predicting y_k from the first k pairs: name -> (B, n)."""
    b, n, d = x.shape
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    preds = {name: np.zeros((b, n)) for name in ("ls", "lasso", "avg", "knn", "zero")}
    for k in range(1, n):
        xs, ys, xq = x64[:, :k], y64[:, :k], x64[:, k]
        w_ls = np.einsum("bdk,bk->bd", np.linalg.pinv(xs), ys)  # minimum-norm least squares
        preds["ls"][:, k] = np.einsum("bd,bd->b", xq, w_ls)
        preds["lasso"][:, k] = np.einsum("bd,bd->b", xq, lasso(xs, ys, LASSO_ALPHA))
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
    group_names: tuple[str, ...]  # the class of each group index
    baselines: dict[str, np.ndarray]  # name -> (B, n) normalised squared errors


def ood_class(mixture: dict[str, float]) -> str:
    return next(c for c in OOD_CLASS_ORDER if c not in mixture)


class ICLTask:
    """Streams training prompts and holds the fixed eval splits of one trial."""

    def __init__(self, mixture: dict[str, float], dim: int, points: int, noise_std: float,
                 seed: int, eval_examples: int, cache_dir: Path, sparse_k: int = 3):
        self.mixture, self.dim, self.points, self.noise_std = dict(mixture), dim, points, noise_std
        self.seed, self.eval_examples, self.cache_dir = seed, eval_examples, Path(cache_dir)
        self.sparse_k = sparse_k

    num_groups = property(lambda self: len(self.mixture))
    group_names = property(lambda self: list(self.mixture))

    def datasets(self) -> list[dict]:
        return []  # generated

    def train_batch(self, step: int, micro: int, rank: int, size: int) -> dict[str, np.ndarray]:
        """Micro-batch `micro` of optimizer step `step` on `rank`: a pure function of its indices."""
        rng = np.random.default_rng([self.seed, 1, rank, step, micro])
        return sample_prompts(rng, size, self.mixture, self.dim, self.points, self.noise_std,
                              sparse_k=self.sparse_k)

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
        if name in ICL_CLASSES:  # one pure class
            return {"mixture": {name: 1.0}}
        convex = parse_convex_split(name)
        if convex:
            return {"convex": convex}
        raise ValueError(f"unknown split {name!r}; allowed: id, ood_class, wnorm, xscale, a class "
                         f"({', '.join(ICL_CLASSES)}) or convex-<class>-<class>[-<percent>]")

    def split(self, name: str) -> ICLSplit:
        args = self.split_args(name)
        source = ("-".join(f"{k}{v:g}" for k, v in args["mixture"].items()) if "mixture" in args
                  else "convex-{}-{}-{:g}".format(*args["convex"]))
        key = (f"icl_{name}_{source}_d{self.dim}_k{self.sparse_k}_n{self.points}_e{self.noise_std:g}"
               f"_x{args.get('x_scale', 1):g}_y{args.get('y_scale', 1):g}_s{self.seed}"
               f"_B{self.eval_examples}_lasso{LASSO_ALPHA:g}")
        common = {"dim": self.dim, "points": self.points, "noise_std": self.noise_std, "sparse_k": self.sparse_k}

        def build() -> dict[str, np.ndarray]:
            rng = np.random.default_rng([self.seed, 2, sum(map(ord, name))])
            if "convex" in args:
                p = sample_convex_prompts(rng, self.eval_examples, *args["convex"], **common)
            else:
                p = sample_prompts(rng, self.eval_examples, **common, **args)
            return {**p, **{f"baseline_{k}": v for k, v in baseline_errors(p["x"], p["y"]).items()}}

        arrays = cached_arrays(self.cache_dir / f"{key}.npz", build)
        base = {k.removeprefix("baseline_"): v for k, v in arrays.items() if k.startswith("baseline_")}
        groups = tuple(args["mixture"]) if "mixture" in args else (name,)
        return ICLSplit(arrays["x"], arrays["y"], arrays["group"], groups, base)


@register
class ICL(TaskKind):
    """In-context regression over function classes (Garg et al. 2022; Yadlowsky et al. 2023)."""

    name = "icl"
    info = TaskInfo(
        kind="regression", unit="examples", families=("decoder",), techniques=("none",),
        splits=("id", "ood_class", "wnorm", "xscale"), metrics=ICL_METRICS,
        function_classes=ICL_CLASSES, default_mixture={"dense_linear": 1.0},
        extra_split=lambda name: name in ICL_CLASSES or parse_convex_split(name) is not None,
        extra_split_help=", a function class, or convex-<class>-<class>[-<percent>]",
    )

    def build(self, trial, world: int, cache_dir: Path) -> ICLTask:
        data = trial.spec.data
        return ICLTask(dict(trial.mixture), data.dim, data.points, data.noise_std, trial.seed,
                       trial.spec.eval.examples, cache_dir, sparse_k=data.sparsity)

    def model(self, trial):
        from reliscale.models.build import ICLDecoder

        return ICLDecoder(trial.size.enc, trial.spec.data.dim, trial.spec.data.points)

    def evaluator(self, task, trial):
        from reliscale.evaluation.icl import ICLEvaluator

        return ICLEvaluator(task, trial.spec.splits(), trial.spec.eval.metrics)

    def sequence_lengths(self, trial) -> tuple[int, int]:
        return 2 * trial.spec.data.points, 0

    def check(self, spec) -> tuple[str, str] | None:
        data = spec.data
        uses_sparse = any("sparse_linear" in m for m in data.mixtures()) or any(
            "sparse_linear" in s for s in spec.eval.splits or ())
        if uses_sparse and data.sparsity >= data.dim:
            return ("data.sparsity", f"{data.sparsity} non-zero weights in dim={data.dim} make "
                    f"sparse_linear the same class as dense_linear; allowed: 1..{data.dim - 1}")
        return None
