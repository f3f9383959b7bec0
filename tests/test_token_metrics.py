"""Chunked token statistics against full softmax, and every token metric against the
probability-matrix metrics of `metrics.py`, scikit-learn, scipy or a hand computation."""

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

from reliscale.evaluation import metrics as M
from reliscale.evaluation.token_metrics import (
    TokenStats,
    bits_per_byte,
    byte_level_token_bytes,
    sequence_ood_metrics,
    sequence_scores,
    token_metrics,
    token_stats,
)


def lm_head_case(n_seq=6, seq=9, d=8, vocab=37, scale=1.0, seed=0):
    """Random hidden states and head; targets hit the argmax ~half the time."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_seq, seq, d, generator=g, dtype=torch.float64)
    weight = scale * torch.randn(vocab, d, generator=g, dtype=torch.float64)
    logits = (hidden @ weight.T).numpy()
    rand = torch.randint(0, vocab, (n_seq, seq), generator=g).numpy()
    coin = torch.rand(n_seq, seq, generator=g).numpy() < 0.5
    targets = torch.as_tensor(np.where(coin, logits.argmax(-1), rand))
    return hidden.float(), weight.float(), targets


def full_reference(hidden, weight, targets):
    """Unchunked float64 statistics from the materialised logits."""
    z = hidden.double().numpy() @ weight.double().numpy().T
    y = targets.numpy()
    logp = log_softmax(z, axis=-1)
    p = np.exp(logp)
    p_y = np.take_along_axis(p, y[..., None], -1)[..., 0]
    return {
        "nll": -np.take_along_axis(logp, y[..., None], -1)[..., 0],
        "confidence": p.max(-1),
        "correct": p.argmax(-1) == y,
        "brier": (p**2).sum(-1) - 2 * p_y + 1,
        "entropy": scipy_entropy(p, axis=-1),
        "probs": p,
    }


@pytest.mark.parametrize("position_chunk,vocab_chunk", [(7, 5), (1000, 1000), (1, 37), (16, 36)])
def test_chunked_stats_match_full_softmax(position_chunk, vocab_chunk):
    hidden, weight, targets = lm_head_case()
    got = token_stats(hidden, weight, targets, position_chunk, vocab_chunk)
    ref = full_reference(hidden, weight, targets)
    for key in ("nll", "confidence", "brier", "entropy"):
        assert getattr(got, key).shape == targets.shape
        np.testing.assert_allclose(getattr(got, key), ref[key], atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(got.correct, ref["correct"])
    np.testing.assert_array_equal(got.targets, targets.numpy())


def test_chunked_stats_stay_exact_with_large_logits_whose_max_moves_between_chunks():
    # logits of size ~100: a naive exp overflows float32; the running max must rescale
    hidden, weight, targets = lm_head_case(scale=30.0, seed=1)
    got = token_stats(hidden, weight, targets, position_chunk=5, vocab_chunk=4)
    ref = full_reference(hidden, weight, targets)
    assert np.all(np.isfinite(got.nll))
    np.testing.assert_allclose(got.nll, ref["nll"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.brier, ref["brier"], atol=1e-5)
    np.testing.assert_allclose(got.entropy, ref["entropy"], atol=1e-4)
    np.testing.assert_array_equal(got.correct, ref["correct"])


def test_bf16_hidden_is_computed_in_float32():
    hidden, weight, targets = lm_head_case(seed=2)
    got = token_stats(hidden.bfloat16(), weight.bfloat16(), targets, 4, 8)
    ref = full_reference(hidden.bfloat16().float(), weight.bfloat16().float(), targets)
    np.testing.assert_allclose(got.nll, ref["nll"], atol=1e-5)
    np.testing.assert_allclose(got.brier, ref["brier"], atol=1e-5)


def test_bad_inputs_are_rejected_before_computing():
    hidden, weight, targets = lm_head_case()
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 37\)"):
        token_stats(hidden, weight, targets + 37)
    with pytest.raises(ValueError, match="targets must have shape"):
        token_stats(hidden, weight, targets[:, :-1])
    with pytest.raises(ValueError, match="disagree"):
        token_stats(hidden, weight[:, :-1], targets)
    with pytest.raises(ValueError, match="vocab_chunk"):
        token_stats(hidden, weight, targets, vocab_chunk=0)


@pytest.fixture(scope="module")
def case():
    hidden, weight, targets = lm_head_case(n_seq=20, seq=15, d=6, vocab=11, seed=3)
    stats = token_stats(hidden, weight, targets, position_chunk=13, vocab_chunk=4)
    ref = full_reference(hidden, weight, targets)
    return stats, ref["probs"].reshape(-1, 11), targets.numpy().reshape(-1)


def test_token_metrics_match_probability_matrix_metrics(case):
    stats, p, y = case
    got = token_metrics(stats)
    assert 0.2 < got["accuracy"] < 0.9  # both hits and misses occur
    expected = {
        "accuracy": accuracy_score(y, p.argmax(1)),
        "nll": log_loss(y, p, labels=range(11)),
        "loss": M.nll(p, y),
        "brier": brier_score_loss(y, p, labels=range(11)),
        "entropy": scipy_entropy(p, axis=1).mean(),
        "ece": M.ece(p, y),
        "ece_mass": M.ece(p, y, binning="mass"),
        "aurc": M.aurc(p, y),
        "sel_acc_50": M.selective_accuracy(p, y, 0.5),
        "sel_acc_80": M.selective_accuracy(p, y, 0.8),
        "sel_acc_90": M.selective_accuracy(p, y, 0.9),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key
    assert got["perplexity"] == pytest.approx(math.exp(M.nll(p, y)), rel=1e-5)
    assert "bpb" not in got


def test_ece_bins_other_than_15_match_metrics(case):
    stats, p, y = case
    assert token_metrics(stats, n_bins=4)["ece"] == pytest.approx(M.ece(p, y, n_bins=4), abs=1e-6)


def test_concatenated_rank_parts_give_the_metrics_of_the_whole(case):
    stats, _, _ = case
    halves = [TokenStats(**{k: v[i::2] for k, v in vars(stats).items()}) for i in (0, 1)]
    merged = token_metrics(TokenStats.concat(halves))
    whole = token_metrics(stats)
    assert merged == pytest.approx(whole, abs=1e-12)


def test_bpb_by_hand_leaves_special_tokens_out_of_both_sums():
    # vocab of 4: token 0 is special (0 bytes), tokens 1..3 have 1, 2 and 3 bytes
    token_bytes = np.array([0, 1, 2, 3])
    targets = np.array([[1, 0, 3], [2, 2, 0]])
    nll = np.array([[0.5, 9.0, 1.5], [2.0, 1.0, 7.0]])
    # NLLs of non-special targets: 0.5 + 1.5 + 2 + 1 = 5 nats over 1 + 3 + 2 + 2 = 8 bytes
    assert bits_per_byte(nll, targets, token_bytes) == pytest.approx(5.0 / (8 * math.log(2)))


def test_bpb_in_the_suite_uses_the_stats_targets(case):
    stats, _, y = case
    token_bytes = np.arange(11) % 3  # ids 0, 3, 6, 9 count as special
    nll = stats.nll.reshape(-1).astype(np.float64)
    b = token_bytes[y]
    by_hand = sum(n for n, k in zip(nll, b, strict=True) if k > 0) / (math.log(2) * b.sum())
    assert token_metrics(stats, token_bytes)["bpb"] == pytest.approx(by_hand, rel=1e-12)


def test_bpb_rejects_a_table_shorter_than_the_vocabulary():
    with pytest.raises(ValueError, match="token_bytes has 3 entries but a target id is 5"):
        bits_per_byte(np.ones(2), np.array([1, 5]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="bpb is undefined"):
        bits_per_byte(np.ones(2), np.array([0, 0]), np.array([0, 1]))


def test_byte_level_token_bytes_sum_to_the_utf8_length_and_specials_count_zero():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["héllo wörld, ça va très bien; 日本語のテキスト\n"] * 20, trainer=trainer)
    table = byte_level_token_bytes(tok)
    text = "très 日本 wörld é"
    ids = tok.encode(text).ids
    assert table[ids].sum() == len(text.encode("utf-8"))
    assert table[tok.token_to_id("<|endoftext|>")] == 0
    assert len(table) == tok.get_vocab_size()
    word_level = Tokenizer(models.WordLevel({"日本": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="token 0 \\('日本'\\) is not made of byte-level"):
        byte_level_token_bytes(word_level)


def fpr95_brute_force(neg, pos):
    """FPR at the highest threshold that flags >= 95 % of the positives (score >= t)."""
    for t in np.sort(np.concatenate([neg, pos]))[::-1]:
        if np.mean(pos >= t) >= 0.95:
            return np.mean(neg >= t)
    raise AssertionError


def test_sequence_ood_metrics_match_sklearn_and_a_threshold_sweep():
    hidden, weight, targets = lm_head_case(n_seq=40, seq=6, seed=4)
    ood_hidden, _, ood_targets = lm_head_case(n_seq=30, seq=6, seed=5)
    ood_targets = torch.randint(0, 37, ood_targets.shape, generator=torch.Generator().manual_seed(6))
    s_id = token_stats(hidden, weight, targets)
    s_ood = token_stats(ood_hidden * 0.7, weight, ood_targets)
    got = sequence_ood_metrics(s_id, s_ood)
    nll_id, maxp_id = sequence_scores(s_id)
    nll_ood, maxp_ood = sequence_scores(s_ood)
    np.testing.assert_allclose(nll_id, full_reference(hidden, weight, targets)["nll"].mean(1),
                               atol=1e-5)
    is_ood = np.r_[np.zeros(40), np.ones(30)]
    assert got["ood_auroc_nll"] == pytest.approx(roc_auc_score(is_ood, np.r_[nll_id, nll_ood]))
    assert got["ood_auroc_maxprob"] == pytest.approx(
        roc_auc_score(is_ood, -np.r_[maxp_id, maxp_ood]))
    assert 0.6 < got["ood_auroc_nll"] < 1.0
    assert got["fpr95_nll"] == pytest.approx(fpr95_brute_force(nll_id, nll_ood))
    assert got["fpr95_maxprob"] == pytest.approx(fpr95_brute_force(-maxp_id, -maxp_ood))
