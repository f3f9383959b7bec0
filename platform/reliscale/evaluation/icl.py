"""In-context regression's evaluation: error vs number of in-context examples, beside baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reliscale.evaluation.predict import predict_split, wanted


class ICLEvaluator:
    """Error vs number of in-context examples, beside least squares, averaging, k-NN and zero."""

    def __init__(self, task, splits: tuple[str, ...], metrics: tuple[str, ...] | None):
        self.task, self.metrics = task, metrics
        self.splits = {name: task.split(name) for name in splits}
        self.curves: dict[str, np.ndarray] = {}

    def run(self, model, device, rank: int, world: int) -> dict[str, float]:
        out = {}
        for name, split in self.splits.items():
            pred = predict_split(model, {"x": split.x, "y": split.y}, device, rank, world)
            if rank != 0:
                continue
            metrics, self.curves[name] = icl_metrics(pred, split)
            if len(split.group_names) > 1:
                metrics.update(_group_metrics(pred, split))
            out.update({f"eval/{name}/{k}": v for k, v in metrics.items() if wanted(k, self.metrics)})
        return out

    def write_artifacts(self, folder: Path) -> list[Path]:
        """Per split: the error curve (CSV) and a plot of model vs baselines (PNG)."""
        from reliscale.evaluation.plots import icl_curve_plot

        paths = []
        for name, curve in self.curves.items():
            base = {k: v.mean(axis=0) for k, v in self.splits[name].baselines.items()}
            csv = folder / f"icl_curve_{name}.csv"
            cols = ["k", "model", *base]
            rows = [[k, curve[k], *(base[b][k] for b in base)] for k in range(len(curve))]
            np.savetxt(csv, np.array(rows), delimiter=",", header=",".join(cols), comments="", fmt="%.6g")
            paths += [csv, icl_curve_plot(folder / f"icl_curve_{name}.png", name, curve, base)]
        return paths


def _group_metrics(pred: np.ndarray, split) -> dict[str, float]:
    """Error on each function class of a mixed split, and the worst of them."""
    d = split.x.shape[2]
    err = ((pred - split.y) ** 2 / d).mean(axis=1)
    per = {n: float(err[split.group == g].mean()) for g, n in enumerate(split.group_names)
           if (split.group == g).any()}
    return {**{f"mse_{n}": v for n, v in per.items()}, "worst_group_mse": max(per.values())}


def icl_metrics(pred: np.ndarray, split) -> tuple[dict[str, float], np.ndarray]:
    """Scalar metrics of a split (`tasks.icl.ICLSplit`) and the model's error curve over in-context examples."""
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
    best = min((float(v.mean()) for k, v in base.items() if k != "zero"), default=float("nan"))
    metrics["baseline_best"] = best
    metrics["best_ratio"] = float(curve.mean() / max(best, 1e-12))
    return metrics, curve
