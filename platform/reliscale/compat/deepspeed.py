"""DeepSpeed's internals that reliscale relies on, written for deepspeed 0.19.8.

The installed DeepSpeed is checked at import. DeepSpeed itself is imported only inside the
functions: importing it picks the accelerator, which `worker.engine` names first (DS_ACCELERATOR),
and the driver can check the version without importing torch.
"""

from __future__ import annotations

from reliscale.compat.version import require

SUPPORTED = "0.19.8"
require("deepspeed", SUPPORTED, "reliscale/compat/deepspeed.py")


def disable_shm_comm_op() -> None:
    """Keep `deepspeed.init_distributed` from compiling its shared-memory collective op with g++
    on first use (~34 s per fresh TORCH_EXTENSIONS_DIR)."""
    import deepspeed

    # DeepSpeed's private table of usable ops is the only switch for this op.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def skip_gradient_allreduce(engine) -> None:
    """Make `engine.backward` leave the gradients as they are instead of all-reducing them."""
    # an attribute of the engine, set in its constructor; no config key or argument sets it
    engine.enable_backward_allreduce = False
