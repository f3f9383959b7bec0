"""Multiple-choice scoring of a causal LM, as the OLMo ladder's downstream evals do it.

An item is ``{"context": str, "choices": [str, ...], "label": int}``. Context and choice are
encoded separately; the model reads ``ctx + cont[:-1]`` (left-truncated to ``max_len``
tokens) and a choice's log-likelihood ``ll`` is the sum of the log-probabilities of its
continuation tokens, i.e. of positions ``[ctx_len − 1 : ctx_len + cont_len − 1]`` of the
next-token log-probs. Choice strings are scored exactly as given (a leading space, if any,
is part of the continuation and of its length).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from reliscale.evaluation.metrics import ece_from_confidence
from reliscale.evaluation.token_metrics import token_stats

# tokens [B, L] (CPU, right-padded) -> [B, L-1] log p(tokens[:, 1:] | prefix)
LogprobFn = Callable[[torch.Tensor], torch.Tensor]
# text -> token ids, no special tokens; for a tokenizers.Tokenizer:
# lambda s: tok.encode(s, add_special_tokens=False).ids
Encode = Callable[[str], list[int]]


def causal_lm_logprob_fn(model: torch.nn.Module, vocab_chunk: int = 8192) -> LogprobFn:
    """A `LogprobFn` for `models.build.CausalLM` (``backbone`` then a bias-free ``lm_head``)
    that streams over the vocabulary instead of building [B, L, V] logits."""
    weight = model.lm_head.weight

    @torch.no_grad()
    def logprobs(tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(weight.device)
        hidden = model.backbone(input_ids=tokens[:, :-1]).last_hidden_state
        stats = token_stats(hidden, weight, tokens[:, 1:], vocab_chunk=vocab_chunk)
        return -torch.from_numpy(stats.nll)

    return logprobs


def _sequences(encode: Encode, items: Sequence[dict], max_len: int) -> list[tuple[list[int], int]]:
    """(tokens, continuation length) per item and choice, in order; tokens = ctx + cont,
    cut to the last ``max_len + 1`` so that the model's input is at most ``max_len``."""
    out = []
    for i, item in enumerate(items):
        ctx = encode(item["context"])
        if not ctx:
            raise ValueError(f"item {i}: the context encodes to no tokens, so the first "
                             "continuation token has nothing to be predicted from")
        for j, choice in enumerate(item["choices"]):
            cont = encode(choice)
            if not cont or len(cont) > max_len:
                raise ValueError(f"item {i} choice {j}: the continuation has {len(cont)} tokens;"
                                 f" it must have between 1 and max_len={max_len}")
            out.append(((ctx + cont)[-(max_len + 1):], len(cont)))
    return out


def score_choices(logprob_fn: LogprobFn, encode: Encode, items: Sequence[dict], max_len: int,
                  batch_size: int = 32) -> list[np.ndarray]:
    """Per item, the log-likelihood (nats, float64) of each choice's continuation.

    Sequences of all items are scored in batches of ``batch_size``, right-padded with token
    0; padding sits after every scored position, so a causal model never sees it.
    """
    if max_len < 1 or batch_size < 1:
        raise ValueError(f"max_len and batch_size must be >= 1, got {max_len} and {batch_size}")
    seqs = _sequences(encode, items, max_len)
    lls = np.empty(len(seqs))
    for b0 in range(0, len(seqs), batch_size):
        batch = seqs[b0:b0 + batch_size]
        width = max(len(toks) for toks, _ in batch)
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        for r, (toks, _) in enumerate(batch):
            tokens[r, :len(toks)] = torch.tensor(toks)
        logp = logprob_fn(tokens).double().cpu().numpy()
        if logp.shape != (len(batch), width - 1):
            raise ValueError(f"logprob_fn must return shape {(len(batch), width - 1)} for tokens"
                             f" of shape {tuple(tokens.shape)}, got {logp.shape}")
        for r, (toks, n_cont) in enumerate(batch):
            n = len(toks)
            lls[b0 + r] = logp[r, n - n_cont - 1:n - 1].sum()
    bounds = np.cumsum([0] + [len(item["choices"]) for item in items])
    return [lls[a:b] for a, b in itertools.pairwise(bounds)]


def choice_metrics(items: Sequence[dict], lls: Sequence[Any], n_bins: int = 15) -> dict[str, float]:
    """Task metrics from the choices' log-likelihoods (one array per item).

    ``accuracy``: argmax ll; ``accuracy_len_norm``: argmax ll / characters of the choice
    (OLMo ``len_norm``, lm-eval ``acc_norm``); ``bpb``: the gold choice's
    −ll / (ln 2 · UTF-8 bytes), averaged over items (OLMo in-loop ``bpb``); ``ece``
    (top-1, equal-width bins) and ``brier`` of the softmax over each item's choices.
    Ties go to the lowest choice index.
    """
    if len(items) != len(lls) or not items:
        raise ValueError(f"need one ll array per item and at least one item, got {len(items)} "
                         f"items and {len(lls)} ll arrays")
    hit, hit_norm, bpb, conf, brier = [], [], [], [], []
    for i, (item, ll) in enumerate(zip(items, lls, strict=True)):
        ll = np.asarray(ll, dtype=np.float64)
        choices, label = item["choices"], item["label"]
        if ll.shape != (len(choices),):
            raise ValueError(f"item {i}: {len(choices)} choices but lls of shape {ll.shape}")
        chars = np.array([len(c) for c in choices])
        p = np.exp(ll - ll.max())
        p /= p.sum()
        hit.append(ll.argmax() == label)
        hit_norm.append((ll / chars).argmax() == label)
        bpb.append(-ll[label] / (math.log(2) * len(choices[label].encode("utf-8"))))
        conf.append(p.max())
        brier.append(np.sum(p**2) - 2 * p[label] + 1)
    return {
        "accuracy": float(np.mean(hit)),
        "accuracy_len_norm": float(np.mean(hit_norm)),
        "bpb": float(np.mean(bpb)),
        "ece": ece_from_confidence(conf, hit, n_bins),
        "brier": float(np.mean(brier)),
    }
