"""Predictions of a fixed eval split across ranks.

Every rank predicts an equal shard of each fixed eval split (under ZeRO-3 all ranks must
run the same forward passes); rank 0 gathers the predictions and computes the metrics,
logged as `eval/<split>/<metric>`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from reliscale.worker.ranks import several_ranks

EVAL_CHUNK = 128


def eval_schedule(steps: int, points: int) -> list[int]:
    """Optimizer steps (1-based counts) after which to evaluate: log-spaced, ending at `steps`."""
    marks = np.unique(np.round(np.geomspace(1, steps, points)).astype(int))
    return sorted(set(marks.tolist()) | {steps})


def _gather(rows: np.ndarray, n: int) -> np.ndarray | None:
    """Concatenate every rank's rows on rank 0 (in rank order), trimmed to n rows."""
    if not several_ranks():
        return rows[:n]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return np.concatenate(parts)[:n] if dist.get_rank() == 0 else None


def _shard(arrays: dict[str, np.ndarray], rank: int, world: int) -> dict[str, np.ndarray]:
    """Rank `rank`'s contiguous shard of rows, the split padded to a multiple of `world` by
    repeating its last row. Only these rows are read: a split that decodes rows when they are
    indexed (`data.image_sources.EvalImages`) decodes this rank's shard only."""
    n = len(next(iter(arrays.values())))
    per = -(-n // world)
    rows = np.minimum(np.arange(rank * per, (rank + 1) * per), n - 1)
    return {k: np.asarray(a[rows]) for k, a in arrays.items()}


@torch.no_grad()
def predict_split(model, arrays: dict[str, np.ndarray], device, rank: int, world: int,
                  method: str = "predict") -> np.ndarray | dict[str, np.ndarray] | None:
    """`model.<method>` of the whole split on rank 0 (None elsewhere)."""
    n = len(next(iter(arrays.values())))
    shard = _shard(arrays, rank, world)
    outs = []
    m = len(next(iter(shard.values())))
    fn = getattr(model, method)
    for i in range(0, m, EVAL_CHUNK):
        batch = {k: torch.as_tensor(v[i:i + EVAL_CHUNK], device=device) for k, v in shard.items()}
        outs.append(fn(batch))
    if isinstance(outs[0], torch.Tensor):
        return _gather(torch.cat(outs).float().cpu().numpy(), n)
    # A head's Prediction(probs, variance): gather each field.
    fields = {}
    for name in ("probs", "variance"):
        values = [getattr(o, name) for o in outs]
        if values[0] is not None:
            fields[name] = _gather(torch.cat(values).float().cpu().numpy(), n)
    return fields if rank == 0 else None


def wanted(key: str, metrics: tuple[str, ...] | None) -> bool:
    """Metrics the spec asked for; derived ones (per group, gaps, worst cases) always."""
    return metrics is None or key in metrics or key.startswith(("mse_", "worst", "gap_", "mean_var"))


