"""`DualEncoder`: the trainable module, a query tower and a document tower (shared by default).

It wraps the transformers model(s) of an :class:`~densekit.retriever.encoder.Encoder` and pools
exactly as the Encoder does, so trained weights embed identically once saved. One `forward` call
embeds queries and/or documents, which is what DDP expects of a training step.
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


class DualEncoder(nn.Module):
    """Query and document towers over `backbone`; `separate_towers` gives the query side a copy."""

    def __init__(
        self, backbone: nn.Module, pooling: str, normalize: bool, separate_towers: bool = False
    ) -> None:
        super().__init__()
        freeze_unused_head(backbone)
        self.document_model = backbone
        self.query_model = copy.deepcopy(backbone) if separate_towers else None
        self.pooling = pooling
        self.normalize = normalize

    def tower(self, role: str) -> nn.Module:
        if role == "query" and self.query_model is not None:
            return self.query_model
        return self.document_model

    def embed(self, features: dict[str, torch.Tensor], role: str) -> torch.Tensor:
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
