"""Ray Train backend that tells each worker its ranks and where rank 0 listens; nothing more.

The worker's DeepSpeed joins the process group itself (`engine.init_deepspeed_comm`, the
env:// rendezvous torchrun uses). Ray's TorchConfig would create the group for us, but it
lives in `ray.train.torch`, which imports torch into the Tune trial actor, where the Train
controller runs and no tensor is ever touched: ~2 CPU-s per trial (bench/platform.md).
"""

from __future__ import annotations

import os
import socket

import ray
from ray.train.backend import Backend, BackendConfig


def _address_and_port() -> tuple[str, int]:
    """This node's IP and a port free on it now (rank 0 binds it when the group forms)."""
    addr = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family) as s:
        s.bind(("", 0))
        return addr, s.getsockname()[1]


def _set_rank_env(addr: str, port: int) -> None:
    ctx = ray.train.get_context()
    os.environ.update(
        MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(ctx.get_world_rank()),
        WORLD_SIZE=str(ctx.get_world_size()), LOCAL_RANK=str(ctx.get_local_rank()),
        LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()), NODE_RANK=str(ctx.get_node_rank()),
    )


class _EnvRendezvous(Backend):
    # As TorchConfig: every worker sees all the GPUs Ray gave the workers on its node, and
    # LOCAL_RANK picks its own (NCCL can then use peer-to-peer between them).
    share_cuda_visible_devices = True

    def on_start(self, worker_group, backend_config: BackendConfig) -> None:
        addr, port = worker_group.execute_single(0, _address_and_port)
        worker_group.execute(_set_rank_env, addr=addr, port=port)


class EnvRendezvous(BackendConfig):
    """Backend config for a DataParallelTrainer whose workers form their own process group."""

    @property
    def backend_cls(self):
        return _EnvRendezvous
