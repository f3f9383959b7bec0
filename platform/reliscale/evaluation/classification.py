"""Plex's reliability suite for classifiers: id, shifted and OOD splits, and few-shot probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reliscale.evaluation.predict import EVAL_CHUNK, predict_split, wanted

GP_FIT_EXAMPLES = 2048  # training examples whose features form the GP head's Laplace precision
OOD_SPLITS = ("ood", "ood_far")  # detected against `id`; every other split but id is a shift


class ClassificationEvaluator:
    """Plex's reliability metrics on the in-distribution, shifted and OOD splits, and few-shot.

    Logged per split: accuracy, NLL, Brier, ECE (equal-width and equal-mass), calibration
    AUROC, AURC, selective accuracy; on shifted splits also the gap to `id`, and every metric
    averaged over the shifted splits (`eval/shifted/mean_<metric>`) and over each group of
    `shift_groups` (`eval/<group>/<metric>`); on each OOD split the detection metrics (MSP,
    entropy and, for a GP head, variance as the score); the worst class and worst shifted
    split; on `fewshot` the linear probe's accuracy at every k (`reliscale.evaluation.fewshot`),
    overall and on the classes training never showed.
    """

    def __init__(self, stream, splits: tuple[str, ...], metrics: tuple[str, ...] | None,
                 shift_groups: dict[str, tuple[str, ...]] | None = None):
        self.stream, self.metrics, self.shift_groups = stream, metrics, shift_groups or {}
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
            x, _ = task.train_examples(step, rank, world, chunk)
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
        idp, y_id = preds["id"], self.splits["id"][1]
        id_metrics = evaluate_classification(idp["probs"], y_id)
        out = {f"eval/id/{k}": v for k, v in id_metrics.items()}
        out["eval/id/worst_class_accuracy"] = _worst_class_accuracy(idp["probs"], y_id)
        for name, p in preds.items():
            if "variance" in p:
                out[f"eval/{name}/mean_variance"] = float(p["variance"].mean())
            if name in OOD_SPLITS:
                detection = evaluate_classification(
                    idp["probs"], y_id, ood_probs=p["probs"], variance=idp.get("variance"),
                    ood_variance=p.get("variance"))
                out.update({f"eval/{name}/{k}": v for k, v in detection.items()
                            if k.startswith(("ood", "fpr"))})
            if name == "id" or name in OOD_SPLITS:
                continue
            shifted = evaluate_classification(p["probs"], self.splits[name][1])
            out.update({f"eval/{name}/{k}": v for k, v in shifted.items()})
            for k in ("accuracy", "nll", "ece"):
                out[f"eval/{name}/gap_{k}"] = shifted[k] - id_metrics[k]
        shifted_splits = [n for n in preds if n != "id" and n not in OOD_SPLITS]
        if shifted_splits:
            out["eval/shifted/worst_split_accuracy"] = min(out[f"eval/{n}/accuracy"]
                                                           for n in shifted_splits)
        if features is not None:
            out.update({f"eval/fewshot/{k}": v for k, v in self._fewshot(*features).items()})
        out = {k: v for k, v in out.items() if wanted(k.rsplit("/", 1)[1], self.metrics)}
        return out | self._shift_means(out, shifted_splits)

    def _shift_means(self, out: dict[str, float], shifted: list[str]) -> dict[str, float]:
        """Each logged metric of the shifted splits, averaged per group and over them all."""
        groups = {g: [n for n in names if n in shifted] for g, names in self.shift_groups.items()}
        means = {}
        for group, names in [*groups.items(), ("shifted", shifted)]:
            for key in [k.rsplit("/", 1)[1] for k in out if names and k.startswith(f"eval/{names[0]}/")]:
                label = key if group != "shifted" or key.startswith("mean_") else f"mean_{key}"
                means[f"eval/{group}/{label}"] = float(np.mean([out[f"eval/{n}/{key}"] for n in names]))
        return means

    def _fewshot(self, support: np.ndarray, query: np.ndarray) -> dict[str, float]:
        from reliscale.evaluation.fewshot import fewshot_metrics
        _, ys, _, yq = self.fewshot
        metrics, preds = fewshot_metrics(support, ys, query, yq, self.stream.task.unseen_classes,
                                        self.stream.task.seed)
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
