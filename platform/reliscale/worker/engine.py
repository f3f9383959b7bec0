"""DeepSpeed set-up for one trial worker: the config from the spec, and the engine.

On CPU DeepSpeed picks its CPU accelerator and talks over gloo; on GPUs the same
code gets CUDA and NCCL. The client optimizer is torch's fused AdamW (one kernel per
tensor, no temporaries: 2-9x faster than torch's default per-tensor loop on one CPU thread,
see bench/optimizer.md), so no compiled op is needed (DeepSpeed's FusedAdam and
DeepSpeedCPUAdam would each compile for ~50 s).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch

from reliscale.compat.deepspeed import disable_shm_comm_op, skip_gradient_allreduce


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_config(spec) -> dict[str, Any]:
    """The DeepSpeed config of a study: batch geometry, ZeRO stage, precision, then overrides."""
    train = spec.train
    zero = {"stage": train.zero_stage}
    if train.zero_stage in (1, 2) and not spec.resources.gpus_per_worker:
        # On CPU ZeRO-1/2 reduce faster without first copying every gradient into a contiguous
        # bucket (28M, 2 workers: 1.27 -> 1.18x and 1.18 -> 1.08x DDP's step in two A/Bs, and
        # 4 bytes/param less; bench/step.md).
        zero["contiguous_gradients"] = False
    cfg = {
        "train_batch_size": spec.data.batch_size,
        "train_micro_batch_size_per_gpu": spec.micro_batch(),
        "gradient_accumulation_steps": spec.grad_accumulation(),
        "gradient_clipping": train.optimizer.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return merge(cfg, train.deepspeed)


def lr_lambda(steps: int, warmup_frac: float, min_lr_frac: float):
    """Linear warmup over warmup_frac·steps, then cosine decay to min_lr_frac over the rest."""
    warmup = max(1, round(warmup_frac * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def init_deepspeed_comm() -> str:
    """Form the process group from the env:// variables (RANK, WORLD_SIZE, MASTER_ADDR, ...):
    `rendezvous.EnvRendezvous` sets them on trial workers, the benchmarks by hand. Returns the backend."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo":
        # Named, DeepSpeed takes the CPU accelerator without warning every worker of every
        # trial that it "was unable to detect" a GPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    disable_shm_comm_op()
    # DeepSpeed's ZeRO still calls collectives torch deprecates: a warning per worker per trial
    # about DeepSpeed's code, in the middle of the study's progress view.
    warnings.filterwarnings(
        "ignore", r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
        FutureWarning)
    if backend == "nccl":  # Ray shows each worker its node's GPUs: LOCAL_RANK picks its own
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return backend


def build_engine(model: torch.nn.Module, spec, steps: int, lr: float):
    """Wrap a model with DeepSpeed: AdamW at peak `lr` + warmup/cosine schedule over `steps` steps."""
    import deepspeed

    opt = spec.train.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=opt.betas,
                                  weight_decay=opt.weight_decay, fused=True)
    schedule = spec.train.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(steps, schedule.warmup_frac, schedule.min_lr_frac))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(spec))
    if spec.train.zero_stage == 0 and torch.distributed.get_world_size() == 1:
        # Without ZeRO DeepSpeed all-reduces the gradients even when it is alone: it flattens
        # them, reduces over one rank and copies them back, ~4 ms of a 55 ms S1 step for an
        # identity. (ZeRO stages need that call: it moves gradients into their partitions.)
        skip_gradient_allreduce(engine)
    return engine
