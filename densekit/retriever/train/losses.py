"""Contrastive losses over query and document embeddings.

Every loss takes the embeddings of the whole (possibly gathered) batch and a :class:`LossInputs`
saying where each query's positive is, which columns are not negatives, and which query rows this
process is responsible for. They never call the model: GradCache (``gradcache.py``) and the plain
path both hand them finished embeddings, so one loss works under both and under DDP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from densekit.retriever.train.distill import DistillInputs


@dataclass
class LossInputs:
    """What a loss needs besides the embeddings.

    positive_index: (B,) column of each query's positive among the N documents.
    exclude: (B, N) bool, True where a document must not act as that query's negative
        (another labelled positive of the query).
    rows: the query rows whose loss this process computes (all rows on one process).
    guide_scores: (B, N) guide-model similarities of each query to each document (GIST only).
    distill: each query's candidate columns and their teacher scores (distillation only).
    """

    positive_index: torch.Tensor
    exclude: torch.Tensor
    rows: slice = field(default_factory=lambda: slice(None))
    guide_scores: torch.Tensor | None = None
    distill: DistillInputs | None = None


class InfoNCELoss(nn.Module):
    """InfoNCE with in-batch and mined negatives (sentence-transformers' MultipleNegativesRankingLoss).

    Inputs: query embeddings (B, d), document embeddings (N, d) holding every query's positive and
    the batch's mined negatives; each query's softmax runs over all N documents, so the other
    queries' positives and negatives are its in-batch negatives. Cosine similarity (embeddings are
    L2-normalised here), divided by the temperature.

    - temperature 0.05 equals sentence-transformers' default scale 20.
    - learnable: the log inverse temperature is a parameter (CLIP, arXiv 2103.00020), clamped to
      at most 100 as there.
    - symmetric: adds the document->query term, each positive against the batch's queries
      (MultipleNegativesSymmetricRankingLoss).

    Papers: van den Oord et al., arXiv 1807.03748 (InfoNCE); Henderson et al., arXiv 1705.00652
    (in-batch negatives); Karpukhin et al., arXiv 2004.04906 (DPR, mined + in-batch negatives).

    Example::

        loss = InfoNCELoss(temperature=0.05)
        value = loss(q, d, LossInputs(positive_index=torch.arange(4), exclude=torch.zeros(4, 8, dtype=bool)))
    """

    def __init__(self, temperature: float = 0.05, learnable: bool = False, symmetric: bool = False) -> None:
        super().__init__()
        scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(scale) if learnable else None
        if not learnable:
            self.register_buffer("fixed_log_scale", scale)
        self.symmetric = symmetric

    @property
    def scale(self) -> torch.Tensor:
        log_scale = self.log_scale if self.log_scale is not None else self.fixed_log_scale
        return log_scale.clamp(max=math.log(100.0)).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale.detach())

    def extra_mask(self, inputs: LossInputs, scores: torch.Tensor) -> torch.Tensor | None:
        """Further (B, N) columns to drop; GIST overrides this."""
        return None

    def forward(self, query_emb: torch.Tensor, doc_emb: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
        scores = query_emb.float() @ doc_emb.float().T
        drop = inputs.exclude.to(scores.device)
        extra = self.extra_mask(inputs, scores)
        if extra is not None:
            drop = drop | extra
        rows = torch.arange(scores.shape[0], device=scores.device)
        positives = inputs.positive_index.to(scores.device)
        drop = drop.clone()
        drop[rows, positives] = False  # a query's own positive is never masked
        logits = (scores * self.scale).masked_fill(drop, float("-inf"))
        loss = F.cross_entropy(logits[inputs.rows], positives[inputs.rows])
        if self.symmetric:
            # positive i against every query k; k != i counts as a negative unless doc i is k's positive too
            back = (scores[:, positives].T * self.scale).masked_fill(drop[:, positives].T, float("-inf"))
            loss = (loss + F.cross_entropy(back[inputs.rows], rows[inputs.rows])) / 2
        return loss


class GISTLoss(InfoNCELoss):
    """InfoNCE in which a frozen guide model masks probable false negatives (GISTEmbed).

    For query i with positive p_i, any document j (in-batch or mined) that the guide scores at or
    above its query-positive score, ``guide(q_i, d_j) >= guide(q_i, p_i) - margin``, is removed from
    query i's softmax. Inputs as :class:`InfoNCELoss`, plus ``LossInputs.guide_scores`` (B, N): the
    guide's similarities, computed from guide embeddings cached once before training
    (see ``trainer.GuideCache``), for any number of negatives per query.

    Paper: Solatorio, "GISTEmbed: Guided In-sample Selection of Training Negatives for Text
    Embedding Fine-tuning", arXiv 2402.16829 (sentence-transformers' GISTEmbedLoss).

    Example::

        loss = GISTLoss(temperature=0.05)
        value = loss(q, d, LossInputs(positive_index, exclude, guide_scores=guide_q @ guide_d.T))
    """

    def __init__(
        self, temperature: float = 0.05, learnable: bool = False, symmetric: bool = False, margin: float = 0.0
    ) -> None:
        super().__init__(temperature, learnable, symmetric)
        self.margin = margin

    def extra_mask(self, inputs: LossInputs, scores: torch.Tensor) -> torch.Tensor:
        if inputs.guide_scores is None:
            raise ValueError("GISTLoss needs LossInputs.guide_scores")
        guide = inputs.guide_scores.to(scores.device).float()
        rows = torch.arange(guide.shape[0], device=guide.device)
        positive = guide[rows, inputs.positive_index.to(guide.device)].unsqueeze(1)
        return guide >= positive - self.margin


def build_loss(name: str, temperature: float, learnable: bool, symmetric: bool, margin: float = 0.0) -> InfoNCELoss:
    """The loss a :class:`~densekit.retriever.train.config.LossConfig` names."""
    if name == "gist":
        return GISTLoss(temperature, learnable, symmetric, margin)
    if name == "infonce":
        return InfoNCELoss(temperature, learnable, symmetric)
    raise ValueError(f"unknown loss {name!r}")
