"""Next-token prediction on a prepared text dataset, or on a seeded synthetic language.

A dataset is a folder `reliscale data prepare` wrote: token shards per domain, held-out whole
documents (`TextDataset`). A trial trains on a weighted mixture of its domains (each training
sequence is a window of one domain, drawn by weight); its groups are those domains, so the
minimax objective is group DRO over domains. It evaluates on held-out windows: `id` (equal
shares of every trained domain, grouped by domain) and each domain of the dataset as a split of
its own; a domain not trained on is an OOD split. Downstream multiple-choice tasks (JSONL of
{context, choices, label}) are scored with the dataset's tokenizer.

The synthetic language is a first-order Markov chain over the vocabulary: every token
has a few possible successors with Dirichlet-drawn probabilities. The loss of a model
that knows the chain has a closed form; it is logged as `baseline_floor`, beside the
loss of a context-free (unigram) model, `baseline_unigram`.

Training sequences are a pure function of (seed, rank, step, micro-batch), like every other
task's batches.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from reliscale.data.text_dataset import TextDataset
from reliscale.tasks.base import TaskInfo, TaskKind
from reliscale.tasks.cache import cached_arrays
from reliscale.tasks.registry import register

SUCCESSORS = 8  # possible next tokens of each token in the synthetic language
DIRICHLET = 0.5  # concentration of each token's successor probabilities
LANGUAGE_SEED = 0  # one language per vocabulary size: every trial and seed sees the same one


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


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def unigram_loss(train: np.ndarray, held_out: np.ndarray, vocab_size: int) -> float:
    """Mean next-token loss of an add-one-smoothed unigram model of `train` on `held_out`'s targets."""
    counts = np.bincount(train[:, 1:].ravel(), minlength=vocab_size) + 1.0
    return float(-np.log(counts[held_out[:, 1:]] / counts.sum()).mean())


class LMTask:
    """The synthetic language: streams training sequences and holds the fixed eval split."""

    num_groups = 1
    group_names = ("all",)
    domains = ("all",)  # the id split's groups
    token_bytes = None

    def __init__(self, vocab_size: int, seq_len: int, seed: int, eval_examples: int, cache_dir: Path):
        self.choice_tasks: dict[str, list[dict]] = {}
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
        self.eval_examples, self.cache_dir = eval_examples, Path(cache_dir)
        self.source = MarkovLanguage(vocab_size)

    def train_batch(self, step: int, micro: int, rank: int, size: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1, rank, step, micro])
        return {"tokens": self.source.sample(rng, size, self.seq_len + 1), "group": np.zeros(size, np.int64)}

    def datasets(self) -> list[dict]:
        return []  # generated

    def split(self, name: str) -> dict[str, np.ndarray]:
        """The eval sequences and the two reference losses (unigram, floor) of split `name`."""
        if name != "id":
            raise ValueError(f"unknown split {name!r}; allowed: id")
        key = f"lm_{name}_markov2_V{self.vocab_size}_L{self.seq_len}_s{self.seed}_B{self.eval_examples}"

        def build() -> dict[str, np.ndarray]:
            length = self.seq_len + 1
            tokens = self.source.sample(np.random.default_rng([self.seed, 2]), self.eval_examples, length)
            train = self.source.sample(np.random.default_rng([self.seed, 3]), self.eval_examples, length)
            return {"tokens": tokens, "group": np.zeros(len(tokens), np.int64),
                    "baseline_unigram": np.array(unigram_loss(train, tokens, self.vocab_size)),
                    "baseline_floor": np.array(self.source.loss_floor(length))}

        return cached_arrays(self.cache_dir / f"{key}.npz", build)


class TextTask:
    """A prepared text dataset: a trial's weighted mixture of its domains, and its held-out splits."""

    def __init__(self, dataset: TextDataset, mixture: dict[str, float], seq_len: int, seed: int,
                 eval_examples: int, choice_files: dict[str, tuple[Path, list[dict]]]):
        self.dataset, self.seq_len, self.seed, self.eval_examples = dataset, seq_len, seed, eval_examples
        self.domains = tuple(mixture)
        weights = np.array(list(mixture.values()), dtype=np.float64)
        self.weights = weights / weights.sum()
        self.num_groups, self.group_names = len(self.domains), list(self.domains)
        self.vocab_size = dataset.vocab_size
        self.token_bytes = dataset.token_bytes
        self.choice_files = choice_files
        self.choice_tasks = {name: items for name, (_, items) in choice_files.items()}

    def datasets(self) -> list[dict]:
        """What the trial reads, for MLflow's dataset inputs: the training domains, each choice task."""
        ds, manifest = self.dataset, self.dataset.manifest
        profile = {d: {"weight": float(w), "train_tokens": manifest["domains"][d]["splits"]["train"]["tokens"]}
                   for d, w in zip(self.domains, self.weights, strict=True)}
        out = [{"name": f"{ds.path.name}[{'+'.join(self.domains)}]", "digest": ds.digest, "source": str(ds.path),
                "context": "training", "profile": profile}]
        for name, (path, items) in self.choice_files.items():
            out.append({"name": name, "digest": file_digest(path), "source": str(path), "context": "evaluation",
                        "profile": {"items": len(items)}})
        return out

    def train_batch(self, step: int, micro: int, rank: int, size: int) -> dict[str, np.ndarray]:
        """Each sequence a window of one training domain, drawn by the mixture's weights."""
        rng = np.random.default_rng([self.seed, 1, rank, step, micro])
        group = rng.choice(len(self.domains), size=size, p=self.weights)
        tokens = np.empty((size, self.seq_len + 1), dtype=np.int64)
        for g, domain in enumerate(self.domains):
            rows = np.flatnonzero(group == g)
            if len(rows):
                tokens[rows] = self.dataset.sample_windows(domain, "train", rng, len(rows), self.seq_len + 1)
        return {"tokens": tokens, "group": group.astype(np.int64)}

    def split(self, name: str) -> dict[str, np.ndarray]:
        """Held-out windows: `id` (an equal share of every training domain), or one domain's."""
        length = self.seq_len + 1
        if name == "id":
            per = -(-self.eval_examples // len(self.domains))
            parts = [self.dataset.eval_windows(d, "heldout", per, length) for d in self.domains]
            tokens = np.concatenate(parts)[:self.eval_examples]
            group = np.repeat(np.arange(len(self.domains)), per)[:self.eval_examples]
            rng = np.random.default_rng([self.seed, 3])
            train = np.concatenate([self.dataset.sample_windows(d, "train", rng, per, length) for d in self.domains])
            return {"tokens": tokens, "group": group,
                    "baseline_unigram": np.array(unigram_loss(train, tokens, self.vocab_size))}
        if name not in self.dataset.domains:
            raise ValueError(f"unknown split {name!r}; allowed: id, {', '.join(self.dataset.domains)}")
        tokens = self.dataset.eval_windows(name, "heldout", self.eval_examples, length)
        return {"tokens": tokens, "group": np.zeros(len(tokens), np.int64)}


LM_METRICS = (
    "loss", "perplexity", "nll", "bpb", "accuracy", "ece", "ece_mass", "brier", "entropy", "aurc",
    "sel_acc_50", "sel_acc_80", "sel_acc_90", "ood_auroc_nll", "fpr95_nll", "ood_auroc_maxprob",
    "fpr95_maxprob", "worst_domain_loss", "baseline_unigram", "baseline_floor", "accuracy_len_norm",
)


@lru_cache(maxsize=8)
def _manifest_domains(path: str) -> tuple[str, ...] | None:
    """The domains of a prepared dataset, or None when the folder holds none (not on this machine)."""
    from reliscale.data.manifest import MANIFEST, read_manifest

    if not (Path(path) / MANIFEST).is_file():
        return None
    return tuple(sorted(read_manifest(path)["domains"]))


@register
class LM(TaskKind):
    """Next-token prediction on a prepared text dataset or a seeded synthetic language."""

    name = "lm"
    info = TaskInfo(kind="lm", unit="tokens", families=("decoder",), techniques=("none",),
                    splits=("id",), metrics=LM_METRICS)

    def build(self, trial, world: int, cache_dir: Path) -> LMTask | TextTask:
        data, spec = trial.spec.data, trial.spec
        if not data.path:
            return LMTask(data.vocab_size, data.seq_len, trial.seed, spec.eval.examples, cache_dir)
        from reliscale.tasks.next_line import read_choice_task

        choices = {Path(p).stem: (Path(p), read_choice_task(p)) for p in spec.eval.choice_tasks}
        return TextTask(TextDataset(data.path), dict(trial.mixture), data.seq_len, trial.seed,
                        spec.eval.examples, choices)

    def model(self, trial):
        from reliscale.models.build import CausalLM

        return CausalLM(trial.size.enc, self.vocab_size(trial.spec), trial.spec.data.seq_len)

    def evaluator(self, task, trial):
        from reliscale.evaluation.lm import LMEvaluator

        tokenizer = TextDataset(trial.spec.data.path).tokenizer_path if trial.spec.data.path else None
        return LMEvaluator(task, trial.spec.splits(), trial.spec.eval.metrics, tokenizer)

    def sequence_lengths(self, trial) -> tuple[int, int]:
        return trial.spec.data.seq_len, 0

    def vocab_size(self, spec) -> int:
        """The dataset's vocabulary when its folder is here, else `data.vocab_size`."""
        if spec.data.path and _manifest_domains(spec.data.path) is not None:
            return TextDataset(spec.data.path).vocab_size
        return spec.data.vocab_size

    def default_mixture(self, data) -> dict[str, float]:
        """Every domain of the dataset, equally weighted (nothing held out as OOD)."""
        domains = _manifest_domains(data.path) if data.path else None
        return {d: 1.0 for d in domains or ()}

    def domain_names(self, data) -> tuple[str, ...] | None:
        return _manifest_domains(data.path) if data.path else ()

    def splits(self, spec) -> tuple[str, ...]:
        domains = _manifest_domains(spec.data.path) if spec.data.path else None
        return ("id", *(domains or ()))

    def allows_split(self, spec, name: str) -> bool:
        domains = _manifest_domains(spec.data.path) if spec.data.path else ()
        return name == "id" or domains is None or name in domains

    def check(self, spec) -> tuple[str, str] | None:
        data = spec.data
        if data.domains is not None and not data.path:
            return "data.domains", "weighs the domains of a dataset, but data.path is not set; allowed: with data.path"
        if spec.eval.choice_tasks and not data.path:
            return ("eval.choice_tasks", "are scored with a dataset's tokenizer, but data.path is not set; "
                    "allowed: with data.path")
        names = {Path(p).stem for p in spec.eval.choice_tasks}
        clash = sorted(names & {"id", *(_manifest_domains(data.path) or ())}) if data.path else []
        if clash:
            return "eval.choice_tasks", f"{clash[0]!r} names a split already; allowed: a file stem that is no domain"
        return None

    def preflight(self, spec) -> str | None:
        data = spec.data
        if not data.path:
            return None
        if _manifest_domains(data.path) is None:
            return (f"data.path: {data.path!r} is not a prepared dataset on this machine (no manifest.json); "
                    "allowed: a folder `reliscale data prepare` wrote, readable by every node")
        for mix in data.mixtures():
            missing = sorted(set(mix) - set(_manifest_domains(data.path)))
            if missing:
                return f"data.domains: {missing[0]!r} is not a domain of {data.path}"
        ds, length = TextDataset(data.path), data.seq_len + 1
        trained = {d for mix in data.mixtures() for d in mix}
        for domain in sorted(trained | set(spec.splits()) - {"id"}):  # every held-out split evaluated
            if ds.num_tokens(domain, "heldout") < length:
                return (f"data.path: domain {domain!r} of {data.path} has {ds.num_tokens(domain, 'heldout')} "
                        f"held-out tokens, fewer than one window (data.seq_len + 1 = {length}); allowed: "
                        "a dataset prepared with a larger --heldout-fraction, or a split list without it")
        from reliscale.tasks.next_line import read_choice_task

        for path in spec.eval.choice_tasks:
            try:
                read_choice_task(path)
            except (OSError, ValueError) as e:
                return f"eval.choice_tasks: {e}"
        return None
