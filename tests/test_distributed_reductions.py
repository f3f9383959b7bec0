"""Cross-rank reductions, two gloo processes: a batch split over ranks gives the full batch's
minimax weights, per-example gradient and GP posterior precision.

The study tests see these all-reduces only through their effects (and some run one worker per
trial); here they are compared exactly with the single-process result.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reliscale.models.heads import GPHead
from reliscale.worker.objectives import Minimax

from conftest import free_port

WORLD, NUM_GROUPS, STEPS = 2, 3, 3


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses, groups (group 2 only in the second half: absent from rank 0) and
    hidden features of one global batch."""
    gen = torch.Generator().manual_seed(step)
    losses = torch.rand(16, generator=gen, dtype=torch.float64) + 0.1
    groups = torch.cat([torch.randint(0, 2, (8,), generator=gen), torch.randint(0, 3, (8,), generator=gen)])
    return losses, groups, torch.randn(16, 8, generator=gen)


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return t.chunk(world)[rank]


def minimax_and_precision(rank: int, world: int) -> dict[str, torch.Tensor]:
    """Run both reductions on this rank's shard; world 1 = the whole batch in one process."""
    objective = Minimax(NUM_GROUPS, step_size=0.5)
    grads = []
    for step in range(STEPS):
        losses, groups, _ = batch(step)
        losses = shard(losses, rank, world).clone().requires_grad_()
        objective(losses, shard(groups, rank, world)).backward()
        grads.append(losses.grad / world)  # DeepSpeed averages gradients over ranks
    head = GPHead(8, 4, num_features=32, ridge=0.5)
    head.reset_precision()
    head.update_precision(shard(batch(0)[2], rank, world))
    head.sync_precision()
    return {"log_q": objective.log_q, "grad": torch.cat(grads), "precision": head.precision.clone()}


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.save(minimax_and_precision(rank, WORLD), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_reduce_to_the_single_process_result_on_the_whole_batch(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    whole = minimax_and_precision(0, 1)

    for r in ranks:
        torch.testing.assert_close(r["log_q"], whole["log_q"])
        torch.testing.assert_close(r["precision"], whole["precision"])
    # each example's gradient is the one it gets in the whole batch, whichever rank holds it
    per_rank = torch.stack([r["grad"].view(STEPS, -1) for r in ranks], 1).flatten()
    torch.testing.assert_close(per_rank, whole["grad"])
    assert not torch.allclose(whole["log_q"], torch.full_like(whole["log_q"], whole["log_q"][0]))
