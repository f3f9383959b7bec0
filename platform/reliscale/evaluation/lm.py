"""Language modelling's evaluation: token-level reliability on held-out text, OOD domains,
and downstream multiple-choice tasks.

Per split (`id`, each domain): loss, perplexity, bits per byte, next-token accuracy, calibration
(ECE, equal-mass ECE, Brier over the full vocabulary), entropy, selective prediction (AURC,
accuracy at 50/80/90 % coverage); on `id` the worst training domain's loss and the unigram
(and, for the synthetic language, the chain's floor) baselines; on a domain not trained on,
the detection of its sequences against `id` (AUROC and FPR at 95 % TPR, by mean NLL and by mean
max-probability). Each choice task: accuracy, length-normalised accuracy, the correct
continuation's bits per byte, and the calibration of the choice distribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reliscale.evaluation.choices import causal_lm_logprob_fn, choice_metrics, score_choices
from reliscale.evaluation.predict import predict_split, wanted
from reliscale.evaluation.token_metrics import TokenStats, sequence_ood_metrics, token_metrics
from reliscale.models.build import TOKEN_STATS


class LMEvaluator:
    def __init__(self, task, splits: tuple[str, ...], metrics: tuple[str, ...] | None,
                 tokenizer: Path | None = None):
        self.task, self.metrics = task, metrics
        # With one training domain, `id` is that domain's held-out text: evaluate it once.
        same_as_id = task.domains[0] if len(task.domains) == 1 and "id" in splits else None
        self.splits = {name: task.split(name) for name in splits if name != same_as_id}
        self.encode = None
        if task.choice_tasks:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(tokenizer))
            self.encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]

    def run(self, model, device, rank: int, world: int) -> dict[str, float]:
        stats = {}
        for name, split in self.splits.items():
            arrays = predict_split(model, {"tokens": split["tokens"]}, device, rank, world)
            if rank == 0:
                stats[name] = as_token_stats(arrays, split["tokens"][:, 1:])
        # Every rank scores every choice (under ZeRO-3 all ranks take part in each forward).
        logprobs = causal_lm_logprob_fn(model)
        max_len = self.task.seq_len
        choices = {name: score_choices(logprobs, self.encode, items, max_len)
                   for name, items in self.task.choice_tasks.items()}
        if rank != 0:
            return {}
        out: dict[str, float] = {}
        for name, st in stats.items():
            metrics = token_metrics(st, self.task.token_bytes)
            split = self.splits[name]
            for key in ("baseline_unigram", "baseline_floor"):
                if key in split and np.isfinite(split[key]):
                    metrics[key] = float(split[key])
            if name == "id":
                nll = st.nll.astype(np.float64).mean(1)
                metrics["worst_domain_loss"] = max(float(nll[split["group"] == g].mean())
                                                   for g in np.unique(split["group"]))
            elif name not in self.task.domains and "id" in stats:  # a domain training never saw
                metrics.update(sequence_ood_metrics(stats["id"], st))
            out.update({f"eval/{name}/{k}": v for k, v in metrics.items()})
        for name, lls in choices.items():
            out.update({f"eval/{name}/{k}": v for k, v in choice_metrics(self.task.choice_tasks[name], lls).items()})
        return {k: v for k, v in out.items() if wanted(k.rsplit("/", 1)[1], self.metrics)}

    def write_artifacts(self, folder: Path) -> list[Path]:
        return []


def as_token_stats(arrays: np.ndarray, targets: np.ndarray) -> TokenStats:
    """The [sequences, positions, 5] array `CausalLM.predict` returns, as `TokenStats`."""
    fields = {k: arrays[..., i] for i, k in enumerate(TOKEN_STATS)}
    fields["correct"] = fields["correct"] > 0.5
    return TokenStats(**fields, targets=targets)
