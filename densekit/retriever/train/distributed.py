"""torch.distributed helpers: process group from torchrun's environment, gathers with gradient.

Every rank embeds its shard of the batch; :func:`gather_with_grad` concatenates all shards so each
rank's loss sees every rank's negatives. Its backward sums the incoming gradients over ranks and
returns the local slice: rank r's embeddings get the gradient of every rank's loss, and after DDP
averages parameter gradients the update equals one process training on the combined batch
(the equivalence `tests/test_train_distributed.py` checks with 2 gloo processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); a no-op alone.

    Backend: NCCL on CUDA, gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """All ranks' `tensor` (equal shapes) concatenated in rank order, differentiable."""
    if not ctx.enabled:
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_reduce_mean(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Average of `tensor` over ranks (in place and returned)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= ctx.world_size
    return tensor


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(obj, ctx: DistributedContext):
    """Rank 0's `obj` on every rank."""
    if not ctx.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
