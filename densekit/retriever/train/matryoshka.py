"""Matryoshka representation learning: the training loss over nested prefixes of the embeddings.

Kusupati et al., "Matryoshka Representation Learning", arXiv 2205.13147 (NeurIPS 2022), as
sentence-transformers' ``MatryoshkaLoss``: the base loss is computed on the first m dimensions of
every query and document embedding for each m in ``dims``, each prefix re-normalised when the
model normalises its embeddings (so its dot products are cosines, as the full vectors' are), and
the terms are summed with their weights (default 1 each). A model trained this way keeps most of
its quality when its embeddings are cut to a prefix (``--truncate-dim``), so a 384-d model can
serve 128-d or 64-d vectors: smaller indexes, faster search.

It wraps any densekit objective (InfoNCE, GIST, distillation, their sum): they all take finished
embeddings and a :class:`~densekit.retriever.train.losses.LossInputs`, so the prefixes reach GIST's
masking (the guide's scores do not depend on the student's dimension) and distillation's student
scores alike, and GradCache and DDP see one loss whose gradient flows back through the slices.

Example::

    loss = MatryoshkaLoss(InfoNCELoss(0.05), dims=(384, 256, 128, 64))
    value = loss(q, d, LossInputs(positive_index, exclude))   # sum of InfoNCE over the 4 prefixes
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from densekit.errors import DensekitError


def parse_dims(text: str | None, what: str = "--matryoshka-dims") -> tuple[int, ...]:
    """'384,256,128,64' -> (384, 256, 128, 64): positive, distinct integers, largest first."""
    if text is None or not str(text).strip():
        return ()
    try:
        dims = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise DensekitError(f"{what} must be comma-separated integers, e.g. 384,256,128,64; got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise DensekitError(f"{what} must be positive integers, got {text!r}")
    if len(set(dims)) != len(dims):
        raise DensekitError(f"{what} lists a dimension twice: {text!r}")
    return tuple(sorted(dims, reverse=True))


def parse_weights(text: str | None, count: int) -> tuple[float, ...]:
    """Weights of the prefixes in the order of ``--matryoshka-dims`` as given (default 1 each)."""
    if text is None or not str(text).strip():
        return (1.0,) * count
    try:
        weights = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        raise DensekitError(f"--matryoshka-weights must be comma-separated numbers, got {text!r}") from None
    if len(weights) != count:
        raise DensekitError(f"--matryoshka-weights gives {len(weights)} weights for {count} --matryoshka-dims")
    if any(w <= 0 for w in weights):
        raise DensekitError(f"--matryoshka-weights must be positive, got {text!r}")
    return weights


def check_dims(dims: Sequence[int], model_dim: int) -> None:
    """Every prefix must fit in the model's embedding."""
    too_large = [d for d in dims if d > model_dim]
    if too_large:
        raise DensekitError(
            f"--matryoshka-dims {','.join(map(str, too_large))} exceeds the model's embedding dimension {model_dim}"
        )


class MatryoshkaLoss(nn.Module):
    """``sum_m weight_m * base(prefix_m(q), prefix_m(d), inputs)`` over the prefixes ``dims``.

    Inputs as the base loss: query embeddings (B, d), document embeddings (N, d) and
    :class:`~densekit.retriever.train.losses.LossInputs`. ``normalize`` re-normalises each prefix
    (set it as the model does). The base's parameters (a learnable temperature) are shared by all
    prefixes. See the module docstring for the paper and an example.
    """

    def __init__(
        self, base: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None, normalize: bool = True
    ) -> None:
        super().__init__()
        if not dims:
            raise ValueError("MatryoshkaLoss needs at least one dimension")
        self.base = base
        self.dims = tuple(int(d) for d in dims)
        self.weights = tuple(float(w) for w in weights) if weights is not None else (1.0,) * len(self.dims)
        if len(self.weights) != len(self.dims):
            raise ValueError(f"{len(self.weights)} weights for {len(self.dims)} dimensions")
        self.normalize = normalize

    @property
    def temperature(self) -> float:
        return self.base.temperature

    @property
    def scale(self) -> torch.Tensor:
        return self.base.scale

    def prefix(self, emb: torch.Tensor, dim: int) -> torch.Tensor:
        cut = emb[:, :dim]
        return nn.functional.normalize(cut.float(), p=2, dim=1) if self.normalize else cut

    def forward(self, query_emb: torch.Tensor, doc_emb: torch.Tensor, inputs) -> torch.Tensor:
        if max(self.dims) > query_emb.shape[1]:
            raise DensekitError(
                f"--matryoshka-dims {max(self.dims)} exceeds the embedding dimension {query_emb.shape[1]}"
            )
        total = query_emb.new_zeros((), dtype=torch.float32)
        for dim, weight in zip(self.dims, self.weights, strict=True):
            total = total + weight * self.base(self.prefix(query_emb, dim), self.prefix(doc_emb, dim), inputs)
        return total
