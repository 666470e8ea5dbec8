"""torchrun process-group handling, once for the package: join, wait, share an object, leave.

torchrun (``python -m torch.distributed.run``) starts one process per rank and describes the group in
the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, the rendezvous address). Alone
(``WORLD_SIZE`` unset or 1) every helper here is a no-op, so callers never branch on it.

Users: sharded corpus encoding (each rank encodes its shards, then all wait at a barrier; see
:mod:`densekit.index.shards`) and the contrastive trainer (DDP-style gradient averaging and gathers
with gradient in :mod:`densekit.retriever.train.distributed`). torch is imported only inside the
functions, so importing this module (and :mod:`densekit.index`) stays torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the torchrun group (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str = "cpu") -> DistributedContext:
    """Join the process group torchrun describes; a no-op alone.

    `device_type` is where collective tensors live: "cuda" uses NCCL, anything else gloo. Sharded
    encoding only needs barriers, so it passes "cpu" (gloo) even when it encodes on GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(ctx: DistributedContext) -> None:
    """Wait until every rank reaches this point."""
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: T, ctx: DistributedContext) -> T:
    """Rank 0's `obj` on every rank (picklable objects of this run only, never from a file)."""
    if not ctx.enabled:
        return obj
    import torch.distributed as dist

    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_object(obj: T, ctx: DistributedContext) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (``[obj]`` alone; picklable objects of this run only)."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def finish_distributed(ctx: DistributedContext) -> None:
    """Leave the process group (after the last collective), so that work left to rank 0 alone cannot hit
    a barrier timeout and the process exits cleanly."""
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
