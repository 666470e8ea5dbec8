"""The training objective: a contrastive loss, a distillation loss, or their weighted sum.

``loss = contrastive + weight * distill`` (``--loss infonce|gist`` with ``--distill margin-mse|kl``),
or ``weight * distill`` alone (``--loss none``). Without distillation the trainer uses the
contrastive loss module itself, so checkpoints of plain runs keep their layout. ``--matryoshka-dims``
wraps whichever of these in :class:`~densekit.retriever.train.matryoshka.MatryoshkaLoss` (the same
objective summed over prefixes of the embeddings).

The student's scores in the distillation term are its InfoNCE logits, similarity / temperature (the
contrastive loss's temperature, learnable with it): a cosine similarity lies in [-1, 1] and could
neither match a cross-encoder's logit margins (MarginMSE) nor express a peaked distribution
(KL) at scale 1. The teacher's scores are divided by ``distill_temperature``. With both temperatures
1 the terms are exactly Hofstaetter et al.'s MarginMSE and sentence-transformers' DistillKLDivLoss at
temperature 1; the KL term is not multiplied by a squared temperature (BGE/FlagEmbedding's listwise
distillation does the same; the student's logits already carry InfoNCE's scale).
"""

from __future__ import annotations

import torch
from torch import nn

from densekit.retriever.train.config import LossConfig
from densekit.retriever.train.distill import DistillInputs, ListwiseKLLoss, MarginMSELoss, margin_pairs
from densekit.retriever.train.losses import InfoNCELoss, LossInputs, build_loss
from densekit.retriever.train.matryoshka import MatryoshkaLoss, check_dims, parse_dims, parse_weights


class DistillObjective(nn.Module):
    """``contrastive(q, d, inputs) + weight * distill(q, d, inputs.distill)`` (the contrastive term
    dropped when `contrastive_term` is False; its module still gives the student's temperature).

    Inputs as :class:`~densekit.retriever.train.losses.LossInputs`, with ``inputs.distill`` set; the
    distillation term is computed over this process's query rows (``inputs.rows``), like InfoNCE.

    Example::

        objective = DistillObjective(InfoNCELoss(0.05), ListwiseKLLoss(), weight=0.5)
        value = objective(q, d, LossInputs(positive_index, exclude, distill=DistillInputs(columns, teacher)))
    """

    def __init__(
        self,
        contrastive: InfoNCELoss,
        distill: nn.Module,
        weight: float = 1.0,
        teacher_temperature: float = 1.0,
        contrastive_term: bool = True,
    ) -> None:
        super().__init__()
        self.contrastive = contrastive
        self.distill = distill
        self.weight = weight
        self.teacher_temperature = teacher_temperature
        self.contrastive_term = contrastive_term

    @property
    def temperature(self) -> float:
        return self.contrastive.temperature

    def distill_loss(self, query_emb: torch.Tensor, doc_emb: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
        """The unweighted distillation term of this process's rows."""
        if inputs.distill is None:
            raise ValueError("distillation needs LossInputs.distill (teacher scores of each query's candidates)")
        own = inputs.distill.select(inputs.rows)
        teacher = DistillInputs(own.columns, own.teacher / self.teacher_temperature)
        extra = {}
        if isinstance(self.distill, MarginMSELoss):
            # The batch's pair count, scaled to this process's share of rows: the processes' mean
            # (DDP averages gradients) is then the mean over all pairs, however unevenly they fall.
            share = own.columns.shape[0] / inputs.distill.columns.shape[0]
            extra["pairs"] = max(int(margin_pairs(inputs.distill).sum()), 1) * share
        return self.distill(query_emb[inputs.rows], doc_emb, teacher, scale=self.contrastive.scale, **extra)

    def forward(self, query_emb: torch.Tensor, doc_emb: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
        loss = self.weight * self.distill_loss(query_emb, doc_emb, inputs)
        if self.contrastive_term:
            loss = self.contrastive(query_emb, doc_emb, inputs) + loss
        return loss


def build_objective(config: LossConfig, normalize: bool = True, dim: int | None = None) -> nn.Module:
    """The loss module a :class:`LossConfig` describes (the contrastive loss itself without distillation),
    summed over Matryoshka prefixes when ``matryoshka_dims`` is set: each re-normalised when `normalize`
    (as the model's embeddings are), each checked against the model's dimension `dim` when given."""
    objective = _build_objective(config)
    dims = parse_dims(config.matryoshka_dims)
    if not dims:
        return objective
    if dim is not None:
        check_dims(dims, dim)
    # weights are given in the order of --matryoshka-dims as typed; dims come back largest first
    typed = [int(part) for part in str(config.matryoshka_dims).split(",") if part.strip()]
    weights = dict(zip(typed, parse_weights(config.matryoshka_weights, len(typed)), strict=True))
    return MatryoshkaLoss(objective, dims, [weights[d] for d in dims], normalize=normalize)


def _build_objective(config: LossConfig) -> InfoNCELoss | DistillObjective:
    contrastive = build_loss(
        "infonce" if config.name == "none" else config.name,
        config.temperature,
        config.learnable_temperature,
        config.symmetric,
        config.gist_margin,
    )
    if config.distill == "none":
        return contrastive
    distill = MarginMSELoss() if config.distill == "margin-mse" else ListwiseKLLoss(temperature=1.0)
    return DistillObjective(
        contrastive, distill, config.distill_weight, config.distill_temperature, contrastive_term=config.name != "none"
    )
