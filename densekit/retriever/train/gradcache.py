"""One training step's forward and backward, plain or with GradCache, for every loss.

GradCache (Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
arXiv 2101.06983):

1. embed the batch in chunks without building a graph (remembering each chunk's RNG state);
2. compute the loss on the whole batch's embeddings and its gradient with respect to them;
3. re-run each chunk with a graph, under the same RNG state (same dropout), and back-propagate
   the cached embedding gradient through it (``(emb * grad).sum().backward()``).

Peak activation memory is one chunk's instead of the whole batch's; the gradients equal the plain
path's (`tests/test_train_losses.py` checks 1e-5). Under DDP the chunks' backward passes run
under ``no_sync`` and the gradients are averaged once per step, as DDP would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from densekit.retriever.train.distributed import DistributedContext, average_gradients, gather_with_grad
from densekit.retriever.train.losses import LossInputs
from densekit.retriever.train.model import trim_padding


class RandContext:
    """Captures the CPU (and current CUDA device) RNG state; `with ctx:` replays it."""

    def __init__(self, device: torch.device) -> None:
        self.cpu_state = torch.get_rng_state()
        self.cuda = device.type == "cuda"
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device
        self._fork: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=[self.device] if self.cuda else [], device_type="cuda")
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)

    def __exit__(self, *exc) -> None:
        assert self._fork is not None
        self._fork.__exit__(*exc)
        self._fork = None


def split_features(features: dict[str, torch.Tensor], chunk_size: int) -> list[dict[str, torch.Tensor]]:
    """Split padded features into row chunks, trimming each chunk's padding to its longest row."""
    rows = features["input_ids"].shape[0]
    return [
        trim_padding({k: v[start : start + chunk_size] for k, v in features.items()})
        for start in range(0, rows, chunk_size)
    ]


@dataclass
class StepOutput:
    loss: torch.Tensor  # this process's loss (detached)
    query_emb: torch.Tensor  # the process's shard, detached
    doc_emb: torch.Tensor


def _to(features: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in features.items()}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def contrastive_step(
    model: nn.Module,
    loss_fn: nn.Module,
    queries: dict[str, torch.Tensor],
    documents: dict[str, torch.Tensor],
    inputs: LossInputs,
    ctx: DistributedContext,
    device: torch.device,
    chunk_size: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
) -> StepOutput:
    """Forward and backward for one step on this process's shard; gradients land in `.grad`.

    `model` is a :class:`~densekit.retriever.train.model.DualEncoder`, optionally DDP-wrapped.
    `inputs.rows` must select this process's queries in the gathered batch. With `chunk_size`,
    GradCache; without, one forward over the shard. `scale_loss` is the fp16 GradScaler's `scale`.
    """
    queries, documents = _to(queries, device), _to(documents, device)
    if chunk_size is None:
        with autocast():
            q_local, d_local = model(queries, documents)
        q_all, d_all = gather_with_grad(q_local, ctx), gather_with_grad(d_local, ctx)
        loss = loss_fn(q_all, d_all, inputs)
        scale_loss(loss).backward()
        return StepOutput(loss.detach(), q_local.detach(), d_local.detach())

    module = _unwrap(model)
    chunks = [("query", c) for c in split_features(queries, chunk_size)]
    chunks += [("document", c) for c in split_features(documents, chunk_size)]
    states, embedded = [], []
    with torch.no_grad():
        for role, chunk in chunks:
            states.append(RandContext(device))
            with autocast():
                embedded.append(module.embed(chunk, role))
    n_query_chunks = sum(1 for role, _ in chunks if role == "query")
    q_local = torch.cat(embedded[:n_query_chunks]).requires_grad_()
    d_local = torch.cat(embedded[n_query_chunks:]).requires_grad_()
    loss = loss_fn(gather_with_grad(q_local, ctx), gather_with_grad(d_local, ctx), inputs)
    scale_loss(loss).backward()
    grads = list(q_local.grad.split([len(e) for e in embedded[:n_query_chunks]]))
    grads += list(d_local.grad.split([len(e) for e in embedded[n_query_chunks:]]))
    # Under DDP every chunk runs under no_sync and the accumulated gradients are averaged once at
    # the end: ranks may hold different numbers of chunks (queries short of negatives), which a
    # per-backward DDP all-reduce could not match up.
    no_sync = model.no_sync if hasattr(model, "no_sync") else contextlib.nullcontext
    with no_sync():
        for (role, chunk), state, grad in zip(chunks, states, grads, strict=True):
            with state:
                with autocast():
                    q, d = model(chunk, None) if role == "query" else model(None, chunk)
                emb = q if role == "query" else d
                torch.dot(emb.flatten(), grad.flatten().to(emb.dtype)).backward()
    average_gradients(module.parameters(), ctx)
    return StepOutput(loss.detach(), q_local.detach(), d_local.detach())
