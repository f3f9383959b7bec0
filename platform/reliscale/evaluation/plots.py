"""The plots a trial logs to MLflow: ICL error curves, reliability diagrams, risk-coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def icl_curve_plot(path: Path, split: str, curve: np.ndarray, baselines: dict[str, np.ndarray]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(curve, "k-o", ms=3, label="model")
    for name, values in baselines.items():
        ax.plot(values, "--", label=name)
    ax.set(xlabel="in-context examples", ylabel="squared error / d", title=f"split: {split}",
           ylim=(0, max(1.5, float(curve.max()) * 1.05)))
    ax.legend(fontsize=8)
    return _save(fig, path)


def reliability_diagram(path: Path, probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> Path:
    """Accuracy vs confidence in equal-width bins; each bar is labelled with its example count."""
    from reliscale.evaluation.metrics import ece

    conf, correct = probs.max(1), probs.argmax(1) == labels
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    acc = np.array([correct[bins == b].mean() if (bins == b).any() else np.nan for b in range(n_bins)])
    counts = np.bincount(bins, minlength=n_bins)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(centers, acc, width=1 / n_bins, edgecolor="k", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
    for c, a, n in zip(centers, acc, counts, strict=True):
        if n:
            ax.text(c, min(a, 0.95) + 0.02, str(n), ha="center", fontsize=6)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"ECE {ece(probs, labels, n_bins):.3f}")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def risk_coverage_plot(path: Path, probs: np.ndarray, labels: np.ndarray) -> Path:
    from reliscale.evaluation.metrics import aurc, risk_coverage

    coverage, risk = risk_coverage(probs, labels)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(coverage, risk, "b-")
    ax.set(xlabel="coverage (most confident first)", ylabel="risk (error rate)", xlim=(0, 1),
           ylim=(0, None), title=f"AURC {aurc(probs, labels):.3f}")
    return _save(fig, path)
