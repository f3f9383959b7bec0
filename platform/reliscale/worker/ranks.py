"""Whether there is anything to reduce across ranks."""

from __future__ import annotations

import torch.distributed as dist


def several_ranks() -> bool:
    """A default process group with more than one rank: a trial's workers, not a lone process
    (a 1-rank group has nothing to reduce, and no group at all is a test or a script)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
