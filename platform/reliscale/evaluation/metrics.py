"""Reliability metrics on numpy arrays (torch tensors are converted).

Definitions follow Plex (uncertainty-baselines / robustness_metrics):

- ECE is top-label with equal-width bins ``[lo, hi)`` on [0, 1]; a confidence of exactly
  1.0 falls in the last bin and empty bins are dropped.
- Brier is ``sum_k (p_k - y_k)^2`` per example (range [0, 2]), averaged.
- Calibration AUROC treats a *wrong* prediction as the positive class, scored by
  ``1 - max p``.
- OOD detection treats OOD as the positive class. Every OOD score here is oriented so that
  **higher means more OOD** (``msp_score = 1 - max p``, ``entropy_score`` = predictive
  entropy, a GP head's variance).
- FPR@95 is the false-positive rate at the first threshold whose TPR is >= 0.95.

scikit-learn is imported by the ranking metrics that use it, not with the module: every worker
imports this module, and a regression or language-model trial has no use for its ~0.5 s import.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

_SUM_ATOL = 1e-2  # float32 softmax rows sum to 1 within ~1e-6, bf16 rows within ~4e-3
_NLL_EPS = 1e-12  # p[y] is clipped here so a confidently wrong example costs ~27.6 nats


def _array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; bf16 has no numpy dtype, so widen floats
        x = x.detach().cpu()
        x = x.double() if x.is_floating_point() else x
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _probs(probs: Any, name: str = "probs") -> np.ndarray:
    p = _array(probs, name).astype(np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"{name} must have shape [N>0, C>=2], got {p.shape}")
    if p.min() < -_SUM_ATOL or p.max() > 1 + _SUM_ATOL:
        raise ValueError(f"{name} must lie in [0, 1], got range [{p.min()}, {p.max()}]")
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1) > _SUM_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name} rows must sum to 1 (got {sums[i]:.6f} in row {i}); pass softmax "
            "probabilities, not logits"
        )
    return np.clip(p, 0.0, 1.0)


def _labels(labels: Any, n: int, num_classes: int) -> np.ndarray:
    y = _array(labels, "labels")
    if y.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match probs, got {y.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _probs(probs)
    return p, _labels(labels, p.shape[0], p.shape[1])


def _scores(scores: Any, name: str) -> np.ndarray:
    s = _array(scores, name).astype(np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {s.shape}")
    return s


def _same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {shapes}")


# --- the (confidence, correct) core shared by the probability-matrix and token metrics ---


def _conf_correct(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct).reshape(-1)
    if conf.size == 0 or conf.shape != ok.shape:
        raise ValueError(f"confidence and correct must be non-empty and of equal size, got "
                         f"{conf.shape} and {ok.shape}")
    if not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidence must be finite and lie in [0, 1]")
    return conf, ok.astype(np.float64)


def ece_from_confidence(confidence: Any, correct: Any, n_bins: int = 15,
                        binning: Literal["width", "mass"] = "width") -> float:
    """Top-label ECE from max probabilities and hits (see `ece` for the binning)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, ok = _conf_correct(confidence, correct)
    if binning == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif binning == "mass":
        edges = np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
    else:
        raise ValueError(f"binning must be 'width' or 'mass', got {binning!r}")
    bins = np.searchsorted(edges[1:-1], conf, side="right")
    gap = np.bincount(bins, weights=ok, minlength=n_bins) - np.bincount(
        bins, weights=conf, minlength=n_bins)
    return float(np.sum(np.abs(gap)) / len(conf))


def _sorted_errors(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    conf, ok = _conf_correct(confidence, correct)
    order = np.argsort(-conf, kind="stable")
    return conf[order], 1.0 - ok[order]


def risk_coverage_from_confidence(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk) of selective prediction by confidence, one point per distinct
    confidence (descending); tied confidences are accepted together."""
    conf, err = _sorted_errors(confidence, correct)
    ends = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))
    kept = ends + 1
    return kept / len(conf), np.cumsum(err)[ends] / kept


def aurc_from_confidence(confidence: Any, correct: Any) -> float:
    """Area under the risk-coverage step curve: without ties the plain (1/N) Σ_k risk(k)
    (neither rescaled by 1/(1 − 1/N) nor E-AURC)."""
    coverage, risk = risk_coverage_from_confidence(confidence, correct)
    return float(np.sum(risk * np.diff(coverage, prepend=0.0)))


def selective_accuracy_from_confidence(confidence: Any, correct: Any, coverage: float) -> float:
    """Accuracy on the ceil(coverage·N) most confident, a cut inside tied confidences
    counting the tie group's mean accuracy."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    conf, err = _sorted_errors(confidence, correct)
    k = max(1, int(np.ceil(coverage * len(conf) - 1e-9)))
    cut = conf[k - 1]
    above, tied = conf > cut, conf == cut
    hits = (1 - err[above]).sum() + (k - int(above.sum())) * (1 - err[tied]).mean()
    return float(hits / k)


# --- classification -----------------------------------------------------------------------


def accuracy(probs: Any, labels: Any) -> float:
    """Top-1 accuracy; ties in ``probs`` resolve to the lowest class index (np.argmax)."""
    p, y = _probs_labels(probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def nll(probs: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the true class, with p[y] clipped at 1e-12."""
    p, y = _probs_labels(probs, labels)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], _NLL_EPS))))


def brier(probs: Any, labels: Any) -> float:
    """Mean over examples of ``sum_k (p_k - onehot_k)^2`` (Plex's multiclass Brier)."""
    p, y = _probs_labels(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def ece(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    binning: Literal["width", "mass"] = "width",
) -> float:
    """Top-label expected calibration error.

    ``binning="width"``: equal-width bins ``[lo, hi)`` with 1.0 in the last bin.
    ``binning="mass"``: adaptive bins whose edges are quantiles of the confidences (equal
    counts when confidences are distinct; tied confidences always share a bin).
    Empty bins are dropped in both cases.
    """
    p, y = _probs_labels(probs, labels)
    return ece_from_confidence(p.max(axis=1), p.argmax(axis=1) == y, n_bins, binning)


def calibration_auroc(probs: Any, labels: Any) -> float:
    """AUROC of ``1 - max p`` at detecting wrong predictions (wrong = positive).

    Returns NaN when every prediction is right (or every one wrong): the AUROC is then
    undefined.
    """
    p, y = _probs_labels(probs, labels)
    wrong = p.argmax(axis=1) != y
    if wrong.all() or not wrong.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(wrong, 1.0 - p.max(axis=1)))


def _conf_correct_of(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = _probs_labels(probs, labels)
    return p.max(axis=1), p.argmax(axis=1) == y


def risk_coverage(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve of selective prediction by confidence ``max p``.

    Returns ``(coverage, risk)``, one point per distinct confidence (descending), where
    coverage is the fraction of examples with confidence >= that threshold and risk their
    error rate. Tied confidences are accepted or rejected together, so the curve does not
    depend on input order.
    """
    return risk_coverage_from_confidence(*_conf_correct_of(probs, labels))


def aurc(probs: Any, labels: Any) -> float:
    """Area under the risk-coverage curve (a step function; lower is better).

    Without ties this is the mean over k of the error rate of the k most confident
    examples (Geifman et al.).
    """
    return aurc_from_confidence(*_conf_correct_of(probs, labels))


def selective_accuracy(probs: Any, labels: Any, coverage: float) -> float:
    """Accuracy on the ``ceil(coverage * N)`` most confident examples.

    If the cut falls inside a group of tied confidences, the group contributes its mean
    accuracy (the expectation over random tie-breaking).
    """
    return selective_accuracy_from_confidence(*_conf_correct_of(probs, labels), coverage)


# --- OOD detection ------------------------------------------------------------------------


def msp_score(probs: Any) -> np.ndarray:
    """OOD score ``1 - max p`` (higher = more OOD)."""
    return 1.0 - _probs(probs).max(axis=1)


def entropy_score(probs: Any) -> np.ndarray:
    """OOD score: predictive entropy in nats, with 0 log 0 = 0 (higher = more OOD)."""
    p = _probs(probs)
    logp = np.log(np.where(p > 0, p, 1.0))
    return -np.sum(p * logp, axis=1)


def _ood_targets(scores_id: Any, scores_ood: Any) -> tuple[np.ndarray, np.ndarray]:
    s_id = _scores(scores_id, "scores_id")
    s_ood = _scores(scores_ood, "scores_ood")
    is_ood = np.concatenate([np.zeros(len(s_id)), np.ones(len(s_ood))])
    return is_ood, np.concatenate([s_id, s_ood])


def ood_auroc(scores_id: Any, scores_ood: Any) -> float:
    """AUROC at separating OOD (positive) from in-distribution; higher score = more OOD."""
    from sklearn.metrics import roc_auc_score

    is_ood, scores = _ood_targets(scores_id, scores_ood)
    return float(roc_auc_score(is_ood, scores))


def ood_aupr(scores_id: Any, scores_ood: Any, positive: Literal["out", "in"] = "out") -> float:
    """Average precision with OOD as positive (``"out"``) or in-distribution as positive
    (``"in"``, ranking by the negated score)."""
    from sklearn.metrics import average_precision_score

    is_ood, scores = _ood_targets(scores_id, scores_ood)
    if positive == "out":
        return float(average_precision_score(is_ood, scores))
    if positive == "in":
        return float(average_precision_score(1 - is_ood, -scores))
    raise ValueError(f"positive must be 'out' or 'in', got {positive!r}")


def fpr_at_95_tpr(scores_id: Any, scores_ood: Any) -> float:
    """Fraction of in-distribution examples flagged OOD at the first threshold that flags
    >= 95% of the OOD examples."""
    from sklearn.metrics import roc_curve

    is_ood, scores = _ood_targets(scores_id, scores_ood)
    fpr, tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95)])


# --- regression / in-context learning -----------------------------------------------------


def normalized_mse(pred: Any, target: Any, dim: int) -> float:
    """Mean squared error divided by the input dimension ``dim`` (Garg et al.): for
    ``y = w.x`` with ``x, w ~ N(0, I_dim)`` predicting zero scores 1."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    yhat = _array(pred, "pred").astype(np.float64)
    y = _array(target, "target").astype(np.float64)
    _same_shape(pred=yhat, target=y)
    return float(np.mean((yhat - y) ** 2) / dim)


def _gaussian_args(mean: Any, var: Any, target: Any) -> tuple[np.ndarray, ...]:
    mu = _array(mean, "mean").astype(np.float64)
    y = _array(target, "target").astype(np.float64)
    _same_shape(mean=mu, target=y)
    v = _array(var, "var").astype(np.float64)
    try:
        v = np.broadcast_to(v, y.shape)
    except ValueError:
        raise ValueError(f"var of shape {v.shape} does not broadcast to {y.shape}") from None
    if (v <= 0).any():
        raise ValueError("var must be > 0")
    return mu, v, y


def gaussian_nll(mean: Any, var: Any, target: Any) -> float:
    """Mean Gaussian negative log-likelihood ``0.5 (log 2 pi var + (y - mean)^2 / var)``."""
    mu, v, y = _gaussian_args(mean, var, target)
    return float(np.mean(0.5 * (np.log(2 * np.pi * v) + (y - mu) ** 2 / v)))


def interval_coverage(mean: Any, var: Any, target: Any, level: float = 0.9) -> float:
    """Fraction of targets inside the central ``level`` Gaussian predictive interval."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mu, v, y = _gaussian_args(mean, var, target)
    half_width = NormalDist().inv_cdf(0.5 + level / 2) * np.sqrt(v)
    return float(np.mean(np.abs(y - mu) <= half_width))


# --- robustness ---------------------------------------------------------------------------


def shift_gap(
    id_metrics: Mapping[str, float], shifted_metrics: Mapping[str, float]
) -> dict[str, float]:
    """``shifted - id`` for every metric present in both (positive = went up under shift,
    e.g. an accuracy drop is negative, an ECE increase positive)."""
    shared = [k for k in id_metrics if k in shifted_metrics]
    if not shared:
        raise ValueError(
            f"no metric in common: id has {sorted(id_metrics)}, shifted has "
            f"{sorted(shifted_metrics)}"
        )
    return {k: float(shifted_metrics[k]) - float(id_metrics[k]) for k in shared}


def worst_group(
    values_by_group: Mapping[str, float], *, higher_is_better: bool = True
) -> tuple[str, float]:
    """The worst group and its value: the minimum for a higher-is-better metric (accuracy),
    the maximum otherwise (loss, error)."""
    if not values_by_group:
        raise ValueError("values_by_group is empty")
    values = {g: float(v) for g, v in values_by_group.items()}
    nonfinite = [g for g, v in values.items() if not np.isfinite(v)]
    if nonfinite:
        raise ValueError(f"values_by_group has NaN or inf for groups {nonfinite}")
    pick = min if higher_is_better else max
    group = pick(values, key=values.__getitem__)
    return group, values[group]


# --- the suite ----------------------------------------------------------------------------

SELECTIVE_COVERAGES = (0.5, 0.8, 0.9)


def evaluate_classification(
    probs: Any,
    labels: Any,
    *,
    ood_probs: Any = None,
    variance: Any = None,
    ood_variance: Any = None,
    n_bins: int = 15,
) -> dict[str, float]:
    """All classification reliability metrics of one split as a flat ``name -> value`` dict.

    OOD keys need ``ood_probs`` (scores: MSP for AUROC/AUPR/FPR@95, plus entropy);
    ``ood_auroc_variance`` needs ``variance`` and ``ood_variance`` (per-example predictive
    variance, e.g. a GP head's, higher = more OOD). ``calibration_auroc`` is NaN when every
    prediction is right.
    """
    if (variance is None) != (ood_variance is None):
        raise ValueError("variance and ood_variance must be given together")
    p, y = _probs_labels(probs, labels)
    out = {
        "accuracy": accuracy(p, y),
        "nll": nll(p, y),
        "brier": brier(p, y),
        "ece": ece(p, y, n_bins=n_bins),
        "ece_mass": ece(p, y, n_bins=n_bins, binning="mass"),
        "calibration_auroc": calibration_auroc(p, y),
        "aurc": aurc(p, y),
    }
    for c in SELECTIVE_COVERAGES:
        out[f"sel_acc_{round(c * 100)}"] = selective_accuracy(p, y, c)
    if ood_probs is not None:
        q = _probs(ood_probs, "ood_probs")
        if q.shape[1] != p.shape[1]:
            raise ValueError(f"ood_probs has {q.shape[1]} classes, probs has {p.shape[1]}")
        msp_id, msp_ood = msp_score(p), msp_score(q)
        out["ood_auroc_msp"] = ood_auroc(msp_id, msp_ood)
        out["ood_auroc_entropy"] = ood_auroc(entropy_score(p), entropy_score(q))
        out["ood_aupr_in"] = ood_aupr(msp_id, msp_ood, positive="in")
        out["ood_aupr_out"] = ood_aupr(msp_id, msp_ood, positive="out")
        out["fpr95"] = fpr_at_95_tpr(msp_id, msp_ood)
    if variance is not None:
        v_id = _scores(variance, "variance")
        if v_id.shape != (p.shape[0],):
            raise ValueError(f"variance must have shape ({p.shape[0]},), got {v_id.shape}")
        out["ood_auroc_variance"] = ood_auroc(v_id, _scores(ood_variance, "ood_variance"))
    return out
