"""Reliability metrics of a language model at the token level, without ever building the
[N, V] logits.

`token_stats` streams over position chunks and, inside, vocabulary chunks of the LM head,
keeping per position a running max logit m (and its index), and, relative to m,
s = Σ e^(z−m), q = Σ e^(2(z−m)) and t = Σ e^(z−m)(z−m). At the end (all float32):

    nll = (m − z_y) + log s      confidence = max_k p_k = 1/s      entropy = log s − t/s
    Σ_k p_k² = q / s²            brier = Σ_k p_k² − 2 p_y + 1, with p_y = e^(−nll)

Merging across ranks: each rank returns per-position arrays (`TokenStats`, shaped like
its targets, e.g. [sequences, positions]); rank 0 gathers and concatenates them
(`TokenStats.concat`) and computes every metric once, so sorting-based metrics (AURC,
selective accuracy, equal-mass ECE) are exact rather than binned approximations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from reliscale.evaluation.metrics import (
    SELECTIVE_COVERAGES,
    aurc_from_confidence,
    ece_from_confidence,
    fpr_at_95_tpr,
    ood_auroc,
    selective_accuracy_from_confidence,
)


@dataclass(frozen=True)
class TokenStats:
    """Per scored position (all arrays share the targets' shape)."""

    nll: np.ndarray  # nats, −log p_y
    confidence: np.ndarray  # max_k p_k
    correct: np.ndarray  # bool, argmax == target (ties go to the lowest token id)
    brier: np.ndarray  # full-vocabulary Brier score, in [0, 2]
    entropy: np.ndarray  # nats
    targets: np.ndarray  # int64 token ids

    @classmethod
    def concat(cls, parts: list[TokenStats]) -> TokenStats:
        """Join stats of several batches or ranks along the first axis."""
        if not parts:
            raise ValueError("TokenStats.concat needs at least one part")
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                      for f in fields(cls)})


@torch.no_grad()
def token_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                position_chunk: int = 1024, vocab_chunk: int = 8192) -> TokenStats:
    """Per-position statistics of logits ``hidden @ weight.T`` (a bias-free LM head).

    ``hidden`` is [..., d] (any float dtype; computed in float32), ``weight`` [V, d],
    ``targets`` [...] the next-token ids. Peak extra memory is one float32
    [position_chunk, vocab_chunk] block of logits.
    """
    if position_chunk < 1 or vocab_chunk < 1:
        raise ValueError(f"position_chunk and vocab_chunk must be >= 1, got "
                         f"{position_chunk} and {vocab_chunk}")
    if weight.ndim != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden [..., d] and weight [V, d] disagree: hidden {tuple(hidden.shape)},"
                         f" weight {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(hidden.shape[:-1])}, got "
                         f"{tuple(targets.shape)}")
    vocab = weight.shape[0]
    h_all, y_all = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).long()
    if y_all.numel() and (y_all.min() < 0 or y_all.max() >= vocab):
        raise ValueError(f"targets must lie in [0, {vocab}), got [{int(y_all.min())}, "
                         f"{int(y_all.max())}]")
    parts = [_chunk_stats(h_all[i:i + position_chunk].float(), weight, y_all[i:i + position_chunk],
                          vocab_chunk)
             for i in range(0, len(y_all), position_chunk)]
    out = {k: torch.cat([p[k] for p in parts]) if parts else torch.empty(0)
           for k in ("nll", "confidence", "correct", "brier", "entropy")}
    shape = tuple(targets.shape)
    return TokenStats(
        nll=out["nll"].cpu().numpy().reshape(shape),
        confidence=out["confidence"].cpu().numpy().reshape(shape),
        correct=out["correct"].bool().cpu().numpy().reshape(shape),
        brier=out["brier"].cpu().numpy().reshape(shape),
        entropy=out["entropy"].cpu().numpy().reshape(shape),
        targets=y_all.cpu().numpy().reshape(shape),
    )


def _chunk_stats(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor,
                 vocab_chunk: int) -> dict[str, torch.Tensor]:
    """One position chunk (h float32 [P, d]): stream over vocabulary chunks."""
    rows = torch.arange(len(y), device=h.device)
    m = s = q = t = argmax = None
    z_y = torch.zeros(len(y), device=h.device)
    for v0 in range(0, weight.shape[0], vocab_chunk):
        z = h @ weight[v0:v0 + vocab_chunk].float().T
        z_max, z_arg = z.max(dim=1)
        inside = (y >= v0) & (y < v0 + z.shape[1])
        z_y[inside] = z[rows[inside], y[inside] - v0]
        m_new = z_max if m is None else torch.maximum(m, z_max)
        e = torch.exp(z - m_new[:, None])
        cs, cq, ct = e.sum(1), (e * e).sum(1), (e * (z - m_new[:, None])).sum(1)
        if m is None:
            s, q, t, argmax = cs, cq, ct, z_arg
        else:
            d = m - m_new  # <= 0: rescale the sums from the old max to the new one
            a = torch.exp(d)
            t = a * (t + s * d) + ct
            s = a * s + cs
            q = a * a * q + cq
            argmax = torch.where(z_max > m, z_arg + v0, argmax)
        m = m_new
    log_s = torch.log(s)
    nll = (m - z_y) + log_s  # m - z_y first: exact when close, so no rounding at |m|
    return {
        "nll": nll,
        "confidence": 1.0 / s,
        "correct": argmax == y,
        "brier": q / (s * s) - 2.0 * torch.exp(-nll) + 1.0,
        "entropy": log_s - t / s,
    }


# --- token-level suite --------------------------------------------------------------------


def byte_level_token_bytes(tokenizer: Any) -> np.ndarray:
    """``token_bytes[vocab]`` of a byte-level BPE ``tokenizers.Tokenizer``: each character of
    a byte-level token stands for one byte; special tokens count 0, other added tokens their
    UTF-8 length."""
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = tokenizer.get_added_tokens_decoder()
    table = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for i in range(len(table)):
        if i in added:
            table[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
            continue
        token = tokenizer.id_to_token(i)
        if not set(token) <= alphabet:
            raise ValueError(f"token {i} ({token!r}) is not made of byte-level characters; "
                             "byte_level_token_bytes needs a ByteLevel BPE tokenizer")
        table[i] = len(token)
    return table


def bits_per_byte(nll: Any, targets: Any, token_bytes: Any) -> float:
    """Σ NLL / (ln 2 · Σ bytes) over targets with a byte length > 0 (nanochat's rule: special
    tokens have 0 bytes in ``token_bytes[vocab]`` and are left out of both sums)."""
    table = np.asarray(token_bytes).reshape(-1)
    y = np.asarray(targets).reshape(-1)
    if table.dtype.kind not in "iu" or (table < 0).any():
        raise ValueError("token_bytes must be non-negative integers (bytes of each token id)")
    if y.size and y.max() >= len(table):
        raise ValueError(f"token_bytes has {len(table)} entries but a target id is {y.max()}")
    nbytes = table[y]
    if nbytes.sum() == 0:
        raise ValueError("no scored target has a byte length > 0; bpb is undefined")
    scored = nbytes > 0
    return float(np.asarray(nll, dtype=np.float64).reshape(-1)[scored].sum()
                 / (math.log(2) * nbytes.sum()))


def token_metrics(stats: TokenStats, token_bytes: Any = None, n_bins: int = 15) -> dict[str, float]:
    """Every token-level metric of one split, flat ``name -> value``.

    ``loss`` and ``nll`` are both the mean token NLL in nats (``nll`` shares its key with
    the classification suite); ``bpb`` needs ``token_bytes``.
    """
    if stats.nll.size == 0:
        raise ValueError("token_metrics needs at least one scored position")
    nll = stats.nll.reshape(-1).astype(np.float64)
    conf, ok = stats.confidence.reshape(-1), stats.correct.reshape(-1)
    loss = float(nll.mean())
    out = {
        "loss": loss,
        "nll": loss,
        "perplexity": math.exp(loss),
        "accuracy": float(ok.mean()),
        "brier": float(stats.brier.astype(np.float64).mean()),
        "entropy": float(stats.entropy.astype(np.float64).mean()),
        "ece": ece_from_confidence(conf, ok, n_bins),
        "ece_mass": ece_from_confidence(conf, ok, n_bins, binning="mass"),
        "aurc": aurc_from_confidence(conf, ok),
    }
    for c in SELECTIVE_COVERAGES:
        out[f"sel_acc_{round(c * 100)}"] = selective_accuracy_from_confidence(conf, ok, c)
    if token_bytes is not None:
        out["bpb"] = bits_per_byte(nll, stats.targets, token_bytes)
    return out


# --- sequence-level OOD -------------------------------------------------------------------


def sequence_scores(stats: TokenStats) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence (stats shaped [sequences, positions]): mean token NLL, mean max-prob."""
    if stats.nll.ndim != 2:
        raise ValueError(f"stats must be shaped [sequences, positions], got {stats.nll.shape}")
    return stats.nll.astype(np.float64).mean(1), stats.confidence.astype(np.float64).mean(1)


def sequence_ood_metrics(stats_id: TokenStats, stats_ood: TokenStats) -> dict[str, float]:
    """Held-out in-distribution vs OOD sequences (OOD = positive): scored by mean NLL
    (higher = more OOD) and by mean max-probability (lower = more OOD)."""
    nll_id, maxp_id = sequence_scores(stats_id)
    nll_ood, maxp_ood = sequence_scores(stats_ood)
    return {
        "ood_auroc_nll": ood_auroc(nll_id, nll_ood),
        "fpr95_nll": fpr_at_95_tpr(nll_id, nll_ood),
        "ood_auroc_maxprob": ood_auroc(-maxp_id, -maxp_ood),
        "fpr95_maxprob": fpr_at_95_tpr(-maxp_id, -maxp_ood),
    }
