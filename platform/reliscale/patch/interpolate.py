"""PAINT (Ilharco et al. 2022): patch a model by interpolating its weights with a fine-tuned copy.

θ(α) = (1-α)·θ_base + α·θ_ft is evaluated for every α of a grid on the task the base model
supports and on the patching tasks. α is chosen on held-out prompts (a second, independent
draw of every task's eval split), never on the prompts whose numbers are reported.

Predictions are made exactly as a trial's evaluator makes them (same shards, same chunks,
same thread count), so α = 0 and α = 1 reproduce the endpoint trials' logged metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from reliscale.spec.schema import Mixture, TrialConfig, mixture_name
from reliscale.worker.checkpoints import checkpoint_weights

HELDOUT_SEED = 7919  # held-out prompts are the eval split of seed + HELDOUT_SEED
REPORTED = ("mse", "mse_first", "mse_mid", "mse_last", "ls_ratio")  # depend on the weights

# ---------------------------------------------------------------- weights


def interpolate(base: dict[str, torch.Tensor], ft: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """θ(α) = (1-α)·θ_base + α·θ_ft; torch.lerp is exact at both ends (α=0: base, α=1: ft)."""
    if base.keys() != ft.keys():
        raise ValueError(f"the checkpoints hold different tensors: {sorted(base.keys() ^ ft.keys())[:5]}")
    out = {}
    for k, b in base.items():
        f = ft[k]
        if b.shape != f.shape:
            raise ValueError(f"{k}: shapes {tuple(b.shape)} and {tuple(f.shape)} differ; allowed: one architecture")
        out[k] = torch.lerp(b, f, alpha) if b.is_floating_point() else b
    return out


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of several fine-tuned copies (parallel patching); one copy is returned as is."""
    if len(states) == 1:
        return states[0]
    return {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
            for k, v in states[0].items()}


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalTask:
    """One task of a sweep: the split its numbers are reported on and the held-out split."""

    name: str
    report: object  # tasks.icl.ICLSplit
    heldout: object


def eval_tasks(trial: TrialConfig, mixtures: list[Mixture], cache_dir: str | Path | None = None) -> list[EvalTask]:
    """The `id` split of every mixture as a trial of `trial`'s seed draws it, and a held-out draw."""
    from reliscale.tasks import build_task

    def split(mix: Mixture, seed: int):
        return build_task(replace(trial, mixture=tuple(mix.items()), seed=seed), 1, cache_dir).split("id")

    return [EvalTask(mixture_name(mix), split(mix, trial.seed), split(mix, trial.seed + HELDOUT_SEED))
            for mix in mixtures]


def predict_like_trial(model: torch.nn.Module, split, workers: int) -> np.ndarray:
    """The trial evaluator's predictions: the split padded and cut into one shard per worker."""
    from reliscale.evaluation.predict import predict_split

    n = len(split.x)
    device = next(model.parameters()).device
    shards = [predict_split(model, {"x": split.x, "y": split.y}, device, r, workers) for r in range(workers)]
    return np.concatenate(shards)[:n]


@dataclass
class Curve:
    """Metrics of every task at every α; the α chosen on held-out prompts."""

    alphas: tuple[float, ...]
    tasks: list[str]
    metric: str
    report: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # task -> metric -> by α
    heldout: dict[str, list[float]] = field(default_factory=dict)  # task -> selection metric by α
    chosen: float = float("nan")

    def heldout_average(self) -> np.ndarray:
        return np.mean([self.heldout[t] for t in self.tasks], axis=0)

    def report_average(self, metric: str | None = None) -> np.ndarray:
        return np.mean([self.report[t][metric or self.metric] for t in self.tasks], axis=0)


def sweep(model: torch.nn.Module, base: dict[str, torch.Tensor], ft: dict[str, torch.Tensor],
          alphas: tuple[float, ...], tasks: list[EvalTask], workers: int, metric: str = "mse",
          threads: int = 1) -> Curve:
    """Evaluate θ(α) for every α on every task; choose α by the lowest held-out average."""
    from reliscale.evaluation.icl import icl_metrics

    torch.set_num_threads(threads)  # as the trial's workers: same kernels, same float bits
    model.eval()
    curve = Curve(alphas, [t.name for t in tasks], metric)
    for alpha in alphas:
        model.load_state_dict(interpolate(base, ft, alpha))  # copies onto the model's device
        for task in tasks:
            reported, _ = icl_metrics(predict_like_trial(model, task.report, workers), task.report)
            held, _ = icl_metrics(predict_like_trial(model, task.heldout, workers), task.heldout)
            for k in REPORTED:
                curve.report.setdefault(task.name, {}).setdefault(k, []).append(reported[k])
            curve.heldout.setdefault(task.name, []).append(held[metric])
    curve.chosen = alphas[int(np.argmin(curve.heldout_average()))]  # ties: the α nearest the base
    return curve


def tradeoff_plot(path: Path, curve: Curve, supported: str) -> Path:
    """Left: each task's reported metric vs α (chosen α marked). Right: supported vs patching tasks."""
    from reliscale.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    a = np.array(curve.alphas)
    for t in curve.tasks:
        left.plot(a, curve.report[t][curve.metric], "-o", ms=3, label=t)
    left.plot(a, curve.report_average(), "k--", label="average")
    left.axvline(curve.chosen, color="grey", ls=":", label=f"chosen α={curve.chosen:g} (held out)")
    left.set(xlabel="α (0 = base, 1 = fine-tuned)", ylabel=curve.metric, title="metric vs α")
    left.legend(fontsize=8)
    patch = [t for t in curve.tasks if t != supported]
    x = np.array(curve.report[supported][curve.metric])
    y = np.mean([curve.report[t][curve.metric] for t in patch], axis=0)
    right.plot(x, y, "-o", ms=3)
    for xi, yi, ai in zip(x, y, a, strict=True):
        right.annotate(f"{ai:g}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    right.set(xlabel=f"supported ({supported}) {curve.metric}",
              ylabel=f"patching ({', '.join(patch)}) {curve.metric}", title="trade-off")
    return _save(fig, path)


def write_csv(path: Path, curve: Curve) -> Path:
    cols = ["alpha"] + [f"{t}/{k}" for t in curve.tasks for k in REPORTED] + [f"heldout/{t}/{curve.metric}"
                                                                             for t in curve.tasks]
    rows = [[a] + [curve.report[t][k][i] for t in curve.tasks for k in REPORTED]
            + [curve.heldout[t][i] for t in curve.tasks] for i, a in enumerate(curve.alphas)]
    np.savetxt(path, np.array(rows), delimiter=",", header=",".join(cols), comments="", fmt="%.9g")
    return path


def sweep_checkpoints(trial: TrialConfig, base_path: str, ft_paths: list[str], mixtures: list[Mixture],
                      alphas: tuple[float, ...], metric: str = "mse", save_to: str | None = None) -> Curve:
    """The whole PAINT step for one model: load, average the fine-tuned copies, sweep, pick α.

    `mixtures[0]` is the supported task. With `save_to`, the patched weights θ(chosen α) are
    saved there (sequential patching fine-tunes them next).
    """
    from reliscale.tasks import build_model

    base = checkpoint_weights(base_path)
    ft = average([checkpoint_weights(p) for p in ft_paths])
    torch.manual_seed(trial.seed)
    model = build_model(trial).to("cuda" if torch.cuda.is_available() else "cpu")
    r = trial.spec.resources
    curve = sweep(model, base, ft, alphas, eval_tasks(trial, mixtures), r.workers, metric,
                  threads=r.threads_per_worker)
    if save_to:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        torch.save(interpolate(base, ft, curve.chosen), save_to)
    return curve
