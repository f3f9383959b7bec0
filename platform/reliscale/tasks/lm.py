"""Next-token prediction on a local token file or on a seeded synthetic language.

The synthetic language is a first-order Markov chain over the vocabulary: every token
has a few possible successors with Dirichlet-drawn probabilities. The loss of a model
that knows the chain has a closed form; it is logged as `baseline_floor`, beside the
loss of a context-free (unigram) model, `baseline_unigram`.

A token file is a flat array of uint16 token ids (nanoGPT's `.bin` layout); its last
EVAL_FRACTION is held out for evaluation. Training sequences start at offsets that are
a pure function of (seed, rank, step, micro-batch), like every other task's batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reliscale.tasks.cache import cached_arrays

SUCCESSORS = 8  # possible next tokens of each token in the synthetic language
DIRICHLET = 0.5  # concentration of each token's successor probabilities
LANGUAGE_SEED = 0  # one language per vocabulary size: every trial and seed sees the same one
EVAL_FRACTION = 0.01


class MarkovLanguage:
    """A seeded first-order Markov chain: `succ[v]` are v's successors, `cum[v]` their cumulative probs."""

    def __init__(self, vocab_size: int, successors: int = SUCCESSORS):
        rng = np.random.default_rng([LANGUAGE_SEED, vocab_size])
        k = min(successors, vocab_size)
        self.vocab_size = vocab_size
        # k distinct successors per token: increasing offsets in (0, vocab_size) from the token itself
        gaps = rng.integers(1, max(2, vocab_size // k), (vocab_size, k))
        self.succ = (np.arange(vocab_size)[:, None] + np.cumsum(gaps, axis=1)) % vocab_size
        self.probs = rng.dirichlet(np.full(k, DIRICHLET), size=vocab_size)
        self.cum = np.cumsum(self.probs, axis=1)

    def sample(self, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        """n sequences of `length` tokens, each started from a uniformly drawn token."""
        out = np.empty((n, length), dtype=np.int64)
        out[:, 0] = rng.integers(0, self.vocab_size, n)
        for t in range(1, length):
            u = rng.random(n)[:, None]
            choice = np.minimum((self.cum[out[:, t - 1]] < u).sum(axis=1), self.succ.shape[1] - 1)
            out[:, t] = self.succ[out[:, t - 1], choice]
        return out

    def loss_floor(self, length: int) -> float:
        """The mean next-token loss (nats) of a model that knows the chain, over positions 1..length-1
        of sequences sampled as above: Σ_t p_t·h / (length-1), p_0 uniform, p_{t+1} = p_t P."""
        h = -(self.probs * np.log(np.where(self.probs > 0, self.probs, 1))).sum(axis=1)
        p, total = np.full(self.vocab_size, 1.0 / self.vocab_size), 0.0
        for _ in range(length - 1):
            total += p @ h
            nxt = np.zeros_like(p)
            np.add.at(nxt, self.succ.ravel(), (p[:, None] * self.probs).ravel())
            p = nxt
        return total / (length - 1)


class TokenFile:
    """A flat uint16 token file, read through a memory map."""

    def __init__(self, path: str | Path, vocab_size: int):
        self.path = Path(path)
        self.tokens = np.memmap(self.path, dtype=np.uint16, mode="r")
        self.vocab_size = vocab_size
        self.split_at = int(len(self.tokens) * (1 - EVAL_FRACTION))

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        return np.stack([np.asarray(self.tokens[s:s + length], dtype=np.int64) for s in starts])


class LMTask:
    """Streams training sequences and holds the fixed eval split of one trial."""

    num_groups = 1
    group_names = ("all",)

    def __init__(self, vocab_size: int, seq_len: int, seed: int, eval_examples: int, cache_dir: Path,
                 path: str | None = None):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
        self.eval_examples, self.cache_dir = eval_examples, Path(cache_dir)
        self.source = TokenFile(path, vocab_size) if path else MarkovLanguage(vocab_size)

    def _sequences(self, rng: np.random.Generator, n: int, held_out: bool) -> np.ndarray:
        length = self.seq_len + 1  # inputs and shifted targets
        src = self.source
        if isinstance(src, MarkovLanguage):
            return src.sample(rng, n, length)
        lo, hi = (src.split_at, len(src.tokens)) if held_out else (0, src.split_at)
        if hi - lo < length:
            raise ValueError(f"{src.path}: {hi - lo} tokens in the {'eval' if held_out else 'train'} part, "
                             f"fewer than seq_len + 1 = {length}")
        return src.windows(rng.integers(lo, hi - length + 1, n), length)

    def train_batch(self, step: int, micro: int, rank: int, size: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1, rank, step, micro])
        return {"tokens": self._sequences(rng, size, held_out=False), "group": np.zeros(size, np.int64)}

    def split(self, name: str) -> dict[str, np.ndarray]:
        """The eval sequences and the two reference losses (unigram, floor) of split `name`."""
        if name != "id":
            raise ValueError(f"unknown split {name!r}; allowed: id")
        where = self.source.path.name if isinstance(self.source, TokenFile) else "markov"
        key = f"lm_{name}_{where}_V{self.vocab_size}_L{self.seq_len}_s{self.seed}_B{self.eval_examples}"

        def build() -> dict[str, np.ndarray]:
            rng = np.random.default_rng([self.seed, 2])
            tokens = self._sequences(rng, self.eval_examples, held_out=True)
            train = self._sequences(np.random.default_rng([self.seed, 3]), self.eval_examples, held_out=False)
            counts = np.bincount(train[:, 1:].ravel(), minlength=self.vocab_size) + 1.0  # add-one smoothing
            unigram = float(-np.log(counts[tokens[:, 1:]] / counts.sum()).mean())
            floor = (self.source.loss_floor(self.seq_len + 1) if isinstance(self.source, MarkovLanguage)
                     else np.nan)
            return {"tokens": tokens, "baseline_unigram": np.array(unigram), "baseline_floor": np.array(floor)}

        return cached_arrays(self.cache_dir / f"{key}.npz", build)


def lm_metrics(per_example_loss: np.ndarray, split: dict[str, np.ndarray]) -> dict[str, float]:
    loss = float(per_example_loss.mean())
    metrics = {"loss": loss, "perplexity": float(np.exp(loss)),
               "baseline_unigram": float(split["baseline_unigram"])}
    if np.isfinite(split["baseline_floor"]):
        metrics["baseline_floor"] = float(split["baseline_floor"])
    return metrics
