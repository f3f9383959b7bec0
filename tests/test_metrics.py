"""Each metric against an independent reference: sklearn/scipy, a brute-force loop written
from the definition, or a hand-worked example."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from scipy.stats import norm
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

from reliscale.evaluation import metrics as M


def random_probs(n: int, c: int, seed: int = 0, sharpness: float = 3.0):
    rng = np.random.default_rng(seed)
    logits = sharpness * rng.normal(size=(n, c))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # labels agree with the argmax ~60% of the time so both outcomes occur
    y = np.where(rng.random(n) < 0.6, p.argmax(1), rng.integers(0, c, n))
    return p, y


def ece_loop(p, y, n_bins=15):
    """Textbook ECE written as a loop over bins [lo, hi), last bin closed."""
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        if inside.any():
            gap = abs(np.mean(pred[inside] == y[inside]) - np.mean(conf[inside]))
            total += inside.mean() * gap
    return total


def auroc_pairs(neg, pos):
    """Mann-Whitney AUROC: P(score_pos > score_neg) + 0.5 P(tie)."""
    wins = sum((b > a) + 0.5 * (b == a) for a, b in itertools.product(neg, pos))
    return wins / (len(neg) * len(pos))


# --- classification basics -----------------------------------------------------------------


def test_accuracy_nll_brier_match_sklearn():
    p, y = random_probs(500, 5)
    assert M.accuracy(p, y) == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert M.nll(p, y) == pytest.approx(log_loss(y, p, labels=range(5)))
    assert M.brier(p, y) == pytest.approx(brier_score_loss(y, p, labels=range(5)))


def test_brier_hand_worked_and_range():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    # (0.09 + 0.04 + 0.01 + 0.01 + 0.81 + 0.64) / 2
    assert M.brier(p, np.array([0, 1])) == pytest.approx(0.8)
    assert M.brier(np.array([[0.0, 1.0]]), np.array([0])) == pytest.approx(2.0)


def test_saturated_probabilities():
    p = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = np.array([0, 0])
    assert M.accuracy(p, y) == 0.5
    assert M.nll(p, y) == pytest.approx(-0.5 * math.log(1e-12))
    assert M.brier(p, y) == pytest.approx(1.0)
    assert M.ece(p, y) == pytest.approx(0.5)


def test_accepts_torch_tensors_including_bf16():
    p, y = random_probs(64, 4)
    pt, yt = torch.tensor(p, dtype=torch.float32), torch.tensor(y)
    assert M.nll(pt, yt) == pytest.approx(M.nll(p, y), rel=1e-5)
    assert M.accuracy(pt.bfloat16(), yt) == M.accuracy(p, y)


# --- ECE -----------------------------------------------------------------------------------


def test_ece_equals_textbook_loop():
    for seed in range(5):
        p, y = random_probs(300, 3, seed=seed)
        assert M.ece(p, y) == pytest.approx(ece_loop(p, y))
        assert M.ece(p, y, n_bins=7) == pytest.approx(ece_loop(p, y, n_bins=7))


def test_ece_confidence_one_falls_in_last_bin():
    # torchmetrics issue 3510 puts 1.0 into an extra bin and would give 0.5*0.03 + 0.5*1
    p = np.array([[0.97, 0.03], [1.0, 0.0]])
    y = np.array([0, 1])
    assert M.ece(p, y) == pytest.approx(abs(0.5 - 0.985))


def test_ece_bin_edges_are_left_closed():
    # 0.6 = 9/15 opens bin 9; 0.59 is in bin 8. Bin 8: conf 0.59 right -> 0.41.
    # Bin 9: confidences 0.6 (wrong) and 0.65 (right) -> |0.5 - 0.625| = 0.125.
    p = np.array([[0.59, 0.41], [0.6, 0.4], [0.65, 0.35]])
    y = np.array([0, 1, 0])
    assert M.ece(p, y) == pytest.approx((0.41 + 2 * 0.125) / 3)


def test_ece_perfectly_calibrated_and_empty_bins():
    # all confidence 0.75 (one non-empty bin, 14 empty), accuracy exactly 0.75
    p = np.tile([0.75, 0.25], (8, 1))
    y = np.array([0, 0, 0, 1, 0, 0, 0, 1])
    assert M.ece(p, y) == pytest.approx(0.0)
    assert M.ece(p, y, binning="mass") == pytest.approx(0.0)


def test_ece_mass_uses_equal_count_bins():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 60)  # distinct
    p = np.stack([conf, 1 - conf], 1)
    y = (rng.random(60) > conf).astype(int)
    order = np.argsort(conf)
    expected = 0.0
    for chunk in np.split(order, 15):  # 4 examples per bin
        expected += len(chunk) / 60 * abs(np.mean(y[chunk] == 0) - conf[chunk].mean())
    assert M.ece(p, y, binning="mass") == pytest.approx(expected)


def test_ece_rejects_bad_binning():
    p, y = random_probs(10, 2)
    with pytest.raises(ValueError, match="binning"):
        M.ece(p, y, binning="quantile")


# --- calibration AUROC and selective prediction ----------------------------------------------


def test_calibration_auroc_against_pair_counting_with_ties():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45], [0.7, 0.3]])
    y = np.array([0, 1, 0, 1, 0, 0])
    score = 1 - p.max(1)
    wrong = p.argmax(1) != y
    assert M.calibration_auroc(p, y) == pytest.approx(auroc_pairs(score[~wrong], score[wrong]))


def test_calibration_auroc_one_outcome_is_nan():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert math.isnan(M.calibration_auroc(p, np.array([0, 1])))  # all correct
    assert math.isnan(M.calibration_auroc(p, np.array([1, 0])))  # all wrong


def test_risk_coverage_and_aurc_without_ties():
    # confidences descending: 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong)
    p = np.array([[0.7, 0.3], [0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    y = np.array([0, 0, 0, 1])  # by row: right(0.7), right(0.9), wrong(0.6), right(0.8)
    cov, risk = M.risk_coverage(p, y)
    # order 0.9 R, 0.8 R, 0.7 R, 0.6 W
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 0, 0.25])
    assert M.aurc(p, y) == pytest.approx(np.mean([0, 0, 0, 0.25]))


def test_aurc_matches_brute_force_thresholds_with_ties():
    rng = np.random.default_rng(3)
    conf = rng.choice([0.5, 0.6, 0.7, 0.9], 40)
    p = np.stack([conf, 1 - conf], 1)
    y = (rng.random(40) > conf).astype(int)
    wrong = y != 0
    area, prev = 0.0, 0.0
    for t in sorted(set(conf), reverse=True):
        kept = conf >= t
        area += wrong[kept].mean() * (kept.mean() - prev)
        prev = kept.mean()
    assert M.aurc(p, y) == pytest.approx(area)
    shuffled = rng.permutation(40)
    assert M.aurc(p[shuffled], y[shuffled]) == pytest.approx(area)


def test_aurc_perfect_ranking_closed_form():
    # n right examples ranked above m wrong ones: AURC = (1/N) sum_{k>n} (k-n)/k
    n, m = 6, 4
    conf = np.linspace(0.99, 0.51, n + m)
    p = np.stack([conf, 1 - conf], 1)
    y = np.array([0] * n + [1] * m)
    expected = sum((k - n) / k for k in range(n + 1, n + m + 1)) / (n + m)
    assert M.aurc(p, y) == pytest.approx(expected)


def test_selective_accuracy():
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.52])
    p = np.stack([conf, 1 - conf], 1)
    y = np.array([0, 0, 0, 1, 0, 1, 1, 0, 1, 1])
    assert M.selective_accuracy(p, y, 0.5) == pytest.approx(4 / 5)
    assert M.selective_accuracy(p, y, 0.3) == pytest.approx(1.0)
    assert M.selective_accuracy(p, y, 1.0) == pytest.approx(M.accuracy(p, y))
    with pytest.raises(ValueError, match="coverage"):
        M.selective_accuracy(p, y, 0.0)


def test_selective_accuracy_all_tied_equals_accuracy():
    p = np.tile([0.6, 0.4], (10, 1))
    y = np.array([0, 1, 1, 0, 0, 0, 1, 0, 0, 1])
    for c in (0.1, 0.5, 0.8):
        assert M.selective_accuracy(p, y, c) == pytest.approx(0.6)


def test_all_correct():
    p = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 1, 0])
    assert M.accuracy(p, y) == 1.0
    assert M.aurc(p, y) == 0.0
    assert M.selective_accuracy(p, y, 0.5) == 1.0
    # ECE = mean(1 - conf) when everything is right and bins are distinct
    assert M.ece(p, y) == pytest.approx(np.mean([0.1, 0.3, 0.4]))


# --- OOD -----------------------------------------------------------------------------------


def test_ood_scores_orientation_and_values():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(M.msp_score(p), [0.0, 0.5, 2 / 3])
    np.testing.assert_allclose(M.entropy_score(p), scipy_entropy(p, axis=1))
    assert M.entropy_score(p)[2] == pytest.approx(math.log(3))


def test_ood_auroc_against_pair_counting():
    rng = np.random.default_rng(0)
    s_id = np.round(rng.normal(0, 1, 30), 1)  # rounding creates ties
    s_ood = np.round(rng.normal(1, 1, 20), 1)
    assert M.ood_auroc(s_id, s_ood) == pytest.approx(auroc_pairs(s_id, s_ood))
    assert M.ood_auroc([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert M.ood_auroc([0.8, 0.9], [0.1, 0.2]) == 0.0


def average_precision_loop(pos, neg):
    """AP = sum over positives ranked by score of precision at that rank (no ties)."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    ranked = is_pos[np.argsort(-scores)]
    hits = np.cumsum(ranked)
    return float(np.sum(ranked * hits / np.arange(1, len(ranked) + 1)) / len(pos))


def test_ood_aupr_in_and_out_against_definition():
    rng = np.random.default_rng(1)
    s_id, s_ood = rng.normal(0, 1, 25), rng.normal(1, 1, 15)
    assert M.ood_aupr(s_id, s_ood, "out") == pytest.approx(average_precision_loop(s_ood, s_id))
    assert M.ood_aupr(s_id, s_ood, "in") == pytest.approx(average_precision_loop(-s_id, -s_ood))
    with pytest.raises(ValueError, match="positive"):
        M.ood_aupr(s_id, s_ood, "both")


def test_fpr_at_95_tpr_hand_worked():
    s_ood = np.arange(1, 21) / 20.0  # 20 OOD: 0.05..1.0
    s_id = np.array([0.01, 0.02, 0.03, 0.12, 0.5, 0.9, 0.95, 0.97, 0.99, 0.995])
    # TPR >= 0.95 needs the threshold <= 0.10 (19 of 20 OOD flagged); the ID scores above
    # 0.10 are 0.12 .. 0.995: 7 of 10.
    assert M.fpr_at_95_tpr(s_id, s_ood) == pytest.approx(0.7)


def test_fpr_at_95_tpr_brute_force():
    rng = np.random.default_rng(2)
    s_id, s_ood = rng.normal(0, 1, 200), rng.normal(2, 1, 100)
    best = min(
        np.mean(s_id >= t) for t in np.concatenate([s_id, s_ood]) if np.mean(s_ood >= t) >= 0.95
    )
    assert M.fpr_at_95_tpr(s_id, s_ood) == pytest.approx(best)


def test_ood_needs_both_sides():
    with pytest.raises(ValueError, match="scores_ood"):
        M.ood_auroc([0.1, 0.2], [])


# --- regression ----------------------------------------------------------------------------


def test_normalized_mse_zero_predictor_closed_form():
    rng = np.random.default_rng(0)
    d = 20
    x, w = rng.normal(size=(4000, d)), rng.normal(size=(4000, d))
    y = np.sum(x * w, axis=1)
    assert M.normalized_mse(np.zeros_like(y), y, d) == pytest.approx(1.0, abs=0.05)
    assert M.normalized_mse(y, y, d) == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        M.normalized_mse(y[:10], y[:9], d)


def test_gaussian_nll_matches_scipy():
    rng = np.random.default_rng(0)
    mu, var, y = rng.normal(size=50), rng.uniform(0.1, 2, 50), rng.normal(size=50)
    expected = -np.mean(norm.logpdf(y, mu, np.sqrt(var)))
    assert M.gaussian_nll(mu, var, y) == pytest.approx(expected)
    assert M.gaussian_nll(mu, 0.5, y) == pytest.approx(-np.mean(norm.logpdf(y, mu, 0.5**0.5)))
    with pytest.raises(ValueError, match="var must be > 0"):
        M.gaussian_nll(mu, np.zeros(50), y)


def test_interval_coverage():
    rng = np.random.default_rng(0)
    mu, var = rng.normal(size=20000), rng.uniform(0.5, 2, 20000)
    y = rng.normal(mu, np.sqrt(var))
    assert M.interval_coverage(mu, var, y, level=0.9) == pytest.approx(0.9, abs=0.01)
    assert M.interval_coverage(mu, var, y, level=0.5) == pytest.approx(0.5, abs=0.01)
    # hand-worked: 90% half-width for var 1 is 1.645
    assert M.interval_coverage([0, 0, 0], [1, 1, 1], [1.6, -1.7, 0.0]) == pytest.approx(2 / 3)


# --- robustness ----------------------------------------------------------------------------


def test_shift_gap_and_worst_group():
    gap = M.shift_gap({"accuracy": 0.9, "ece": 0.02, "fpr95": 0.3}, {"accuracy": 0.7, "ece": 0.1})
    assert gap == pytest.approx({"accuracy": -0.2, "ece": 0.08})
    with pytest.raises(ValueError, match="no metric in common"):
        M.shift_gap({"a": 1.0}, {"b": 1.0})
    assert M.worst_group({"a": 0.9, "b": 0.6, "c": 0.8}) == ("b", 0.6)
    assert M.worst_group({"a": 0.9, "b": 0.6}, higher_is_better=False) == ("a", 0.9)
    with pytest.raises(ValueError, match="NaN"):
        M.worst_group({"a": float("nan")})


# --- input validation ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_inputs_name_the_argument(bad):
    p, y = random_probs(5, 3)
    p[2, 1] = bad
    with pytest.raises(ValueError, match="probs contains NaN or inf"):
        M.ece(p, y)
    with pytest.raises(ValueError, match="scores_id contains NaN or inf"):
        M.ood_auroc([0.1, bad], [0.2])
    with pytest.raises(ValueError, match="target contains NaN or inf"):
        M.gaussian_nll([0.0], [1.0], [bad])


def test_shape_and_label_errors():
    p, y = random_probs(5, 3)
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        M.accuracy(p, y[:4])
    with pytest.raises(ValueError, match=r"shape \[N>0, C>=2\]"):
        M.accuracy(p[0], y)
    with pytest.raises(ValueError, match="labels must lie in"):
        M.accuracy(p, np.array([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="labels must be integers"):
        M.accuracy(p, y.astype(float))


def test_unnormalised_probs_are_rejected():
    logits = np.array([[2.0, 1.0, 0.5]])
    with pytest.raises(ValueError, match="rows must sum to 1"):
        M.nll(logits / 10, np.array([0]))


# --- the suite -----------------------------------------------------------------------------


def test_evaluate_classification_keys_and_values():
    p, y = random_probs(400, 4, seed=0)
    q, _ = random_probs(200, 4, seed=1, sharpness=0.5)
    var_id, var_ood = np.full(400, 0.1), np.full(200, 0.9)
    out = M.evaluate_classification(
        torch.tensor(p), torch.tensor(y), ood_probs=q, variance=var_id, ood_variance=var_ood
    )
    assert set(out) == {
        "accuracy", "nll", "brier", "ece", "ece_mass", "calibration_auroc", "aurc",
        "sel_acc_50", "sel_acc_80", "sel_acc_90", "ood_auroc_msp", "ood_auroc_entropy",
        "ood_aupr_in", "ood_aupr_out", "fpr95", "ood_auroc_variance",
    }  # fmt: skip
    assert all(isinstance(v, float) for v in out.values())
    assert out["ece"] == pytest.approx(ece_loop(p, y))
    assert out["sel_acc_80"] == pytest.approx(M.selective_accuracy(p, y, 0.8))
    assert out["ood_auroc_msp"] > 0.7  # the OOD set is much less confident
    assert out["ood_auroc_variance"] == 1.0
    assert set(M.evaluate_classification(p, y)) == {
        "accuracy", "nll", "brier", "ece", "ece_mass", "calibration_auroc", "aurc",
        "sel_acc_50", "sel_acc_80", "sel_acc_90",
    }  # fmt: skip
    with pytest.raises(ValueError, match="together"):
        M.evaluate_classification(p, y, variance=var_id)
