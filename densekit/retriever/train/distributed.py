"""torch.distributed helpers: process group from torchrun's environment, gathers with gradient.

Every rank embeds its shard of the batch; :func:`gather_with_grad` concatenates all shards so each
rank's loss sees every rank's negatives. Its backward sums the incoming gradients over ranks and
returns the local slice: rank r's embeddings get the gradient of every rank's loss, and after DDP
averages parameter gradients the update equals one process training on the combined batch
(the equivalence `tests/test_train_distributed.py` checks with 2 gloo processes).

Joining the group, barriers and broadcasts are the package's one implementation in
:mod:`densekit.distributed`, re-exported here for the trainer.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from densekit.distributed import DistributedContext, barrier, broadcast_object, init_distributed

__all__ = [
    "DistributedContext",
    "all_reduce_mean",
    "average_gradients",
    "barrier",
    "broadcast_object",
    "gather_with_grad",
    "init_distributed",
]


def _all_gather_padded(tensor: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """all_gather for tensors whose first dimension differs across ranks (padded, then cut)."""
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return [p[:n] for p, n in zip(parts, counts, strict=True)], counts


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts, counts = _all_gather_padded(tensor)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(counts[:rank]), sum(counts[: rank + 1])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def gather_with_grad(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """All ranks' `tensor` concatenated in rank order (row counts may differ), differentiable."""
    if not ctx.enabled:
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_reduce_mean(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Average of `tensor` over ranks (in place and returned)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= ctx.world_size
    return tensor


def average_gradients(parameters, ctx: DistributedContext) -> None:
    """Average the `.grad` of `parameters` over ranks with one all-reduce of their concatenation."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_mean(flat, ctx)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()
