"""`DualEncoder`: the trainable module, a query tower and a document tower (shared by default).

It wraps the transformers model(s) of an :class:`~densekit.retriever.encoder.Encoder` and pools
exactly as the Encoder does, so trained weights embed identically once saved. One `forward` call
embeds queries and/or documents, which is what DDP expects of a training step.

Length-sorted sub-batches (`forward_batch_size`): inside that one forward, the texts are sorted
by token count and run through the transformer a few rows at a time, each group trimmed to its
own longest row, and the embeddings are put back in batch order. The loss and gradients are the
plain forward's (up to float rounding; `tests/test_train_losses.py`), with less padding computed
and much smaller intermediate tensors per call: one call over 64 x 256-token texts of MiniLM
builds 200 MB attention tensors per layer. On the 2-core CPU here a SciFact training step
(32 queries, 64 documents, a fresh batch each step) took 18.7 s in one call and 9.8 s in
length-sorted groups of 8; most of that is the group size, not the padding (8-row groups in
batch order: 11.9 s). Numbers and command: `benchmarks/RESULTS.md`. Not measured on a GPU, where
the default stays one call.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from densekit.retriever.encoder import pool


def freeze_unused_head(backbone: nn.Module) -> None:
    """Stop the backbone's pooler head (BERT/MPNet `pooler`, tanh over [CLS]) from asking for gradients.

    Sentence embeddings pool `last_hidden_state`; `pooler_output` never reaches a loss, so the
    head's parameters get no gradient. DDP (find_unused_parameters=False) waits for every
    parameter of a bucket before all-reducing it, and buckets go out in order; with the pooler in
    the first bucket no gradient was ever averaged and each rank stepped on its own gradients.
    Frozen, the head is left out of DDP's buckets and the optimizer, and is saved unchanged, so
    the sentence-transformers folder stays complete.
    """
    head = getattr(backbone, "pooler", None)
    if isinstance(head, nn.Module):
        head.requires_grad_(False)


def trim_padding(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the padded columns no row of `features` uses (right padding, as densekit pads)."""
    width = int(features["attention_mask"].sum(1).max())
    return {k: v[:, :width] if v.dim() == 2 else v for k, v in features.items()}


def length_sorted_groups(
    features: dict[str, torch.Tensor], group_size: int
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Rows sorted longest first, cut into groups of `group_size`, each trimmed to its longest row.

    Returns `order` (the batch rows in sorted order) and the groups; concatenating the groups'
    outputs gives rows `order`, and `out[torch.argsort(order)]` restores batch order.
    """
    lengths = features["attention_mask"].sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    groups = [trim_padding({k: v[rows] for k, v in features.items()}) for rows in order.split(group_size)]
    return order, groups


class DualEncoder(nn.Module):
    """Query and document towers over `backbone`; `separate_towers` gives the query side a copy.

    `forward_batch_size`: rows per transformer call inside one embedding (length-sorted groups,
    see the module docstring); None runs each side's rows in one call.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pooling: str,
        normalize: bool,
        separate_towers: bool = False,
        forward_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        freeze_unused_head(backbone)
        self.document_model = backbone
        self.query_model = copy.deepcopy(backbone) if separate_towers else None
        self.pooling = pooling
        self.normalize = normalize
        self.forward_batch_size = forward_batch_size

    def tower(self, role: str) -> nn.Module:
        if role == "query" and self.query_model is not None:
            return self.query_model
        return self.document_model

    def embed(self, features: dict[str, torch.Tensor], role: str) -> torch.Tensor:
        """Embeddings (float32, one row per text, in batch order) of padded `features`."""
        size = self.forward_batch_size
        if size is None or features["input_ids"].shape[0] <= size:
            return self._embed_rows(features, role)
        order, groups = length_sorted_groups(features, size)
        emb = torch.cat([self._embed_rows(group, role) for group in groups])
        return emb[torch.argsort(order)]

    def _embed_rows(self, features: dict[str, torch.Tensor], role: str) -> torch.Tensor:
        out = self.tower(role)(
            input_ids=features["input_ids"],
            attention_mask=features["attention_mask"],
            **({"token_type_ids": features["token_type_ids"]} if "token_type_ids" in features else {}),
        )
        emb = pool(out.last_hidden_state, features["attention_mask"], self.pooling)
        if self.normalize:
            emb = nn.functional.normalize(emb.float(), p=2, dim=1)
        return emb.float()

    def forward(
        self, queries: dict[str, torch.Tensor] | None = None, documents: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        q = self.embed(queries, "query") if queries is not None else None
        d = self.embed(documents, "document") if documents is not None else None
        return q, d
