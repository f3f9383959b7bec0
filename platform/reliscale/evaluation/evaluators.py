"""The evaluation suite of a trial, run at every eval point on every split.

Every rank predicts an equal shard of each fixed eval split (under ZeRO-3 all
ranks must run the same forward passes); rank 0 gathers the predictions and
computes the metrics, logged as `eval/<split>/<metric>`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from reliscale.worker.ranks import several_ranks

EVAL_CHUNK = 128


def eval_schedule(steps: int, points: int) -> list[int]:
    """Optimizer steps (1-based counts) after which to evaluate: log-spaced, ending at `steps`."""
    marks = np.unique(np.round(np.geomspace(1, steps, points)).astype(int))
    return sorted(set(marks.tolist()) | {steps})


def _gather(rows: np.ndarray, n: int) -> np.ndarray | None:
    """Concatenate every rank's rows on rank 0 (in rank order), trimmed to n rows."""
    if not several_ranks():
        return rows[:n]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return np.concatenate(parts)[:n] if dist.get_rank() == 0 else None


def _shard(arrays: dict[str, np.ndarray], rank: int, world: int) -> dict[str, np.ndarray]:
    """Rank `rank`'s contiguous shard, after padding to a multiple of `world` by repeating the last row."""
    n = len(next(iter(arrays.values())))
    per = -(-n // world)
    out = {}
    for k, a in arrays.items():
        padded = np.concatenate([a, np.repeat(a[-1:], per * world - n, axis=0)])
        out[k] = padded[rank * per:(rank + 1) * per]
    return out


@torch.no_grad()
def predict_split(model, arrays: dict[str, np.ndarray], device, rank: int, world: int,
                  method: str = "predict") -> np.ndarray | dict[str, np.ndarray] | None:
    """`model.<method>` of the whole split on rank 0 (None elsewhere)."""
    n = len(next(iter(arrays.values())))
    shard = _shard(arrays, rank, world)
    outs = []
    m = len(next(iter(shard.values())))
    fn = getattr(model, method)
    for i in range(0, m, EVAL_CHUNK):
        batch = {k: torch.as_tensor(v[i:i + EVAL_CHUNK], device=device) for k, v in shard.items()}
        outs.append(fn(batch))
    if isinstance(outs[0], torch.Tensor):
        return _gather(torch.cat(outs).float().cpu().numpy(), n)
    # A head's Prediction(probs, variance): gather each field.
    fields = {}
    for name in ("probs", "variance"):
        values = [getattr(o, name) for o in outs]
        if values[0] is not None:
            fields[name] = _gather(torch.cat(values).float().cpu().numpy(), n)
    return fields if rank == 0 else None


class ICLEvaluator:
    """Error vs number of in-context examples, beside least squares, averaging, k-NN and zero."""

    def __init__(self, task, splits: tuple[str, ...], metrics: tuple[str, ...] | None):
        self.task, self.metrics = task, metrics
        self.splits = {name: task.split(name) for name in splits}
        self.curves: dict[str, np.ndarray] = {}

    def run(self, model, device, rank: int, world: int) -> dict[str, float]:
        from reliscale.tasks.icl import icl_metrics

        out = {}
        for name, split in self.splits.items():
            pred = predict_split(model, {"x": split.x, "y": split.y}, device, rank, world)
            if rank != 0:
                continue
            metrics, self.curves[name] = icl_metrics(pred, split)
            if len(split.group_names) > 1:
                metrics.update(_group_metrics(pred, split))
            out.update({f"eval/{name}/{k}": v for k, v in metrics.items() if _wanted(k, self.metrics)})
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


class LMEvaluator:
    """Held-out next-token loss and perplexity, beside the unigram and (synthetic) floor losses."""

    def __init__(self, task, splits: tuple[str, ...], metrics: tuple[str, ...] | None):
        self.metrics = metrics
        self.splits = {name: task.split(name) for name in splits}

    def run(self, model, device, rank: int, world: int) -> dict[str, float]:
        from reliscale.tasks.lm import lm_metrics

        out = {}
        for name, split in self.splits.items():
            losses = predict_split(model, {"tokens": split["tokens"]}, device, rank, world)
            if rank == 0:
                metrics = lm_metrics(losses, split)
                out.update({f"eval/{name}/{k}": v for k, v in metrics.items() if _wanted(k, self.metrics)})
        return out

    def write_artifacts(self, folder: Path) -> list[Path]:
        return []


def _group_metrics(pred: np.ndarray, split) -> dict[str, float]:
    """Error on each function class of a mixed split, and the worst of them."""
    d = split.x.shape[2]
    err = ((pred - split.y) ** 2 / d).mean(axis=1)
    per = {n: float(err[split.group == g].mean()) for g, n in enumerate(split.group_names)
           if (split.group == g).any()}
    return {**{f"mse_{n}": v for n, v in per.items()}, "worst_group_mse": max(per.values())}


def _wanted(key: str, metrics: tuple[str, ...] | None) -> bool:
    """Metrics the spec asked for; derived ones (per group, gaps, worst cases) always."""
    return metrics is None or key in metrics or key.startswith(("mse_", "worst", "gap_", "mean_var"))


GP_FIT_EXAMPLES = 2048  # training examples whose features form the GP head's Laplace precision


class ClassificationEvaluator:
    """Plex's reliability metrics on the in-distribution, shifted and OOD splits, and few-shot.

    Logged per split: accuracy, NLL, Brier, ECE (equal-width and equal-mass), calibration
    AUROC, AURC, selective accuracy; on shifted splits also the gap to `id`; on `ood` the
    detection metrics (MSP, entropy and, for a GP head, variance as the score); the worst
    class and worst shifted split; on `fewshot` the linear probe's accuracy at every k
    (`reliscale.evaluation.fewshot`), overall and on the classes training never showed.
    """

    def __init__(self, stream, splits: tuple[str, ...], metrics: tuple[str, ...] | None):
        self.stream, self.metrics = stream, metrics
        self.splits = {name: stream.task.split(name) for name in splits if name != "fewshot"}
        self.fewshot = stream.task.fewshot() if "fewshot" in splits else None
        self.predictions: dict[str, dict[str, np.ndarray]] = {}

    def _fit_gp_precision(self, model, device, rank: int, world: int) -> None:
        """SNGP's Laplace step: precision from one pass of training features, summed over ranks."""
        head = model.head
        if not hasattr(head, "update_precision"):
            return
        head.reset_precision()
        task = self.stream.task
        chunk = min(EVAL_CHUNK, task.train_size // world)
        for step in range(max(1, min(GP_FIT_EXAMPLES, task.train_size) // (chunk * world))):
            x, _ = task.train_batch(step, rank, world, chunk)
            head.update_precision(model.features({"x": torch.as_tensor(x, device=device)}))
        head.sync_precision()

    def run(self, model, device, rank: int, world: int) -> dict[str, float]:
        from reliscale.evaluation.metrics import evaluate_classification

        with torch.no_grad():
            self._fit_gp_precision(model, device, rank, world)
        preds = {name: predict_split(model, {"x": x}, device, rank, world)
                 for name, (x, _) in self.splits.items()}
        features = None
        if self.fewshot is not None:
            xs, _, xq, _ = self.fewshot
            features = tuple(predict_split(model, {"x": x}, device, rank, world, "features") for x in (xs, xq))
        if rank != 0:
            return {}
        self.predictions = {name: {**p, "labels": self.splits[name][1]} for name, p in preds.items()}
        idp, ood = preds["id"], preds.get("ood")
        id_metrics = evaluate_classification(
            idp["probs"], self.splits["id"][1],
            ood_probs=None if ood is None else ood["probs"],
            variance=idp.get("variance") if ood is not None else None,
            ood_variance=None if ood is None else ood.get("variance"))
        out = {f"eval/id/{k}": v for k, v in id_metrics.items() if not k.startswith(("ood", "fpr"))}
        out.update({f"eval/ood/{k}": v for k, v in id_metrics.items() if k.startswith(("ood", "fpr"))})
        out["eval/id/worst_class_accuracy"] = _worst_class_accuracy(idp["probs"], self.splits["id"][1])
        for name, p in preds.items():
            if "variance" in p:
                out[f"eval/{name}/mean_variance"] = float(p["variance"].mean())
            if name in ("id", "ood"):
                continue
            shifted = evaluate_classification(p["probs"], self.splits[name][1])
            out.update({f"eval/{name}/{k}": v for k, v in shifted.items()})
            for k in ("accuracy", "nll", "ece"):
                out[f"eval/{name}/gap_{k}"] = shifted[k] - id_metrics[k]
        shifted_acc = [out[f"eval/{n}/accuracy"] for n in preds if n not in ("id", "ood")]
        if shifted_acc:
            out["eval/shifted/worst_split_accuracy"] = min(shifted_acc)
        if features is not None:
            out.update({f"eval/fewshot/{k}": v for k, v in self._fewshot(*features).items()})
        return {k: v for k, v in out.items() if _wanted(k.rsplit("/", 1)[1], self.metrics)}

    def _fewshot(self, support: np.ndarray, query: np.ndarray) -> dict[str, float]:
        from reliscale.evaluation.fewshot import fewshot_metrics
        from reliscale.tasks.images import OOD_CLASSES

        _, ys, _, yq = self.fewshot
        metrics, preds = fewshot_metrics(support, ys, query, yq, OOD_CLASSES, self.stream.task.seed)
        self.predictions["fewshot"] = {"predictions": preds, "labels": yq}
        return metrics

    def write_artifacts(self, folder: Path) -> list[Path]:
        """Reliability diagram and risk-coverage plot of `id`, and every split's predictions."""
        from reliscale.evaluation.plots import reliability_diagram, risk_coverage_plot

        if not self.predictions:
            return []
        idp = self.predictions["id"]
        arrays = {f"{split}/{k}": v for split, p in self.predictions.items() for k, v in p.items()}
        np.savez_compressed(folder / "predictions.npz", **arrays)
        return [reliability_diagram(folder / "reliability_id.png", idp["probs"], idp["labels"]),
                risk_coverage_plot(folder / "risk_coverage_id.png", idp["probs"], idp["labels"]),
                folder / "predictions.npz"]


def _worst_class_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    correct = probs.argmax(1) == labels
    return float(min(correct[labels == c].mean() for c in np.unique(labels)))
