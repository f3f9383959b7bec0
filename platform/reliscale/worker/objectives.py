"""How a batch's per-example losses become the loss to minimise.

`erm` averages. `minimax` is task-robust pre-training (Wang et al. 2023): keep a
weight per task group, raise the weights of groups with high loss by an
exponentiated-gradient step on every micro-batch (as group DRO's online algorithm
does on every batch, Sagawa et al. 2020: with gradient accumulation, an optimizer
step takes one step per micro-batch), and minimise the weighted loss, so the worst
group gets the weight. Group statistics are all-reduced, so every rank holds the
same weights.

`group_losses()` is what the loop logs: ERM's mean loss per group since the last call
(summed locally, reduced only there), minimax's group means of its last update.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from reliscale.worker.ranks import several_ranks


def global_group_means(losses: torch.Tensor, groups: torch.Tensor,
                       num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and example count of each group over every rank's batch (no gradient)."""
    sums = torch.zeros(num_groups, dtype=torch.float64, device=losses.device)
    sums.index_add_(0, groups, losses.detach().double())
    counts = torch.bincount(groups, minlength=num_groups).double()
    if several_ranks():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return sums / counts.clamp(min=1), counts


class ERM:
    def __init__(self, num_groups: int):
        self.num_groups = num_groups
        self.sums = self.counts = None

    def __call__(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        if self.num_groups > 1:  # one group's loss is the logged training loss already
            sums = torch.zeros(self.num_groups, dtype=torch.float64, device=losses.device)
            sums.index_add_(0, groups, losses.detach().double())
            counts = torch.bincount(groups, minlength=self.num_groups).double()
            self.sums = sums if self.sums is None else self.sums + sums
            self.counts = counts if self.counts is None else self.counts + counts
        return losses.mean()

    def group_losses(self) -> list[float]:
        """Mean loss per group over every rank's micro-batches since the last call (a collective)."""
        sums = torch.zeros(self.num_groups, dtype=torch.float64) if self.sums is None else self.sums
        counts = torch.zeros(self.num_groups, dtype=torch.float64) if self.counts is None else self.counts
        if several_ranks():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self.sums = self.counts = None
        return (sums / counts.clamp(min=1)).tolist()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def weights(self) -> list[float]:
        return [1.0 / self.num_groups] * self.num_groups


class Minimax:
    def __init__(self, num_groups: int, step_size: float):
        self.num_groups, self.step_size = num_groups, step_size
        self.log_q = torch.full((num_groups,), -math.log(num_groups), dtype=torch.float64)
        self.group_loss = torch.zeros(num_groups, dtype=torch.float64)

    def __call__(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        means, counts = global_group_means(losses, groups, self.num_groups)
        self.group_loss = means.cpu()
        step = torch.where(counts > 0, means, torch.zeros_like(means)).cpu()
        self.log_q = self.log_q + self.step_size * step
        self.log_q = self.log_q - torch.logsumexp(self.log_q, 0)
        q = self.log_q.exp().to(losses.device, losses.dtype)
        # This rank's share of sum_g q_g * mean_g; DeepSpeed averages gradients over ranks,
        # so scale by the world size to get the gradient of the sum.
        counts = counts.to(losses.device, losses.dtype)
        world = dist.get_world_size() if several_ranks() else 1
        return (q[groups] / counts[groups] * losses).sum() * world

    def group_losses(self) -> list[float]:
        return self.group_loss.tolist()

    def state_dict(self) -> dict:
        return {"log_q": self.log_q.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.log_q = torch.tensor(state["log_q"], dtype=torch.float64)

    def weights(self) -> list[float]:
        return self.log_q.exp().tolist()


def build_objective(name: str, num_groups: int, step_size: float) -> ERM | Minimax:
    if name == "erm":
        return ERM(num_groups)
    if name == "minimax":
        return Minimax(num_groups, step_size)
    raise ValueError(f"unknown objective {name!r}; allowed: erm, minimax")
