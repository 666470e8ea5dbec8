"""Distillation losses: a teacher's scores of each query's positive and mined negatives teach the student.

Both losses read the student's similarities of query i to its own candidates (its positive, then its
mined negatives, as columns of the batch's document embeddings) and the teacher's scores of the same
pairs (e.g. a cross-encoder's, stored in the negatives file). A query with fewer negatives than the
batch's widest has its missing candidates masked out.

- :class:`MarginMSELoss` -- Hofstaetter et al., "Improving Efficient Neural Ranking Models with
  Cross-Architecture Knowledge Distillation", arXiv 2010.02666: mean squared error between the
  student's margins ``s(q, p) - s(q, n_j)`` and the teacher's ``t(q, p) - t(q, n_j)``. Equals
  sentence-transformers' ``MarginMSELoss`` (labels as ``[t_p, t_n1, ...]``).
- :class:`ListwiseKLLoss` -- listwise distillation (Lin et al., "In-Batch Negatives for Knowledge
  Distillation with Tightly-Coupled Teachers", arXiv 2010.11386): KL(teacher || student) between the
  softmax of the teacher's scores over [positive, negatives] (``teacher_temperature``) and the
  student's (``student_temperature``), averaged over queries and multiplied by the student
  temperature squared (Hinton et al.). Equals sentence-transformers' ``DistillKLDivLoss``.

Both take an optional ``scale`` that multiplies the student's similarities first (the trainer passes
the contrastive loss's 1/temperature, so a cosine student is compared in logit units; scale 1 is the
papers' and sentence-transformers' formula). The trainer uses each alone or added to InfoNCE with a
weight (:class:`densekit.retriever.train.objective.DistillObjective`).

Example::

    inputs = DistillInputs(columns=torch.tensor([[0, 2, 3], [1, 4, 5]]),
                           teacher=torch.tensor([[9.0, 2.0, 1.0], [7.0, 6.0, 0.0]]))
    loss = MarginMSELoss()(query_emb, doc_emb, inputs)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DistillInputs:
    """The candidates of each query and the teacher's scores of them.

    columns: (B, 1 + n) long; column 0 is the query's positive among the batch's documents, then its
        negatives; -1 where the query has fewer candidates.
    teacher: (B, 1 + n) float; the teacher's score of each (query, candidate) pair (ignored where
        `columns` is -1).
    """

    columns: torch.Tensor
    teacher: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        return self.columns >= 0

    def select(self, rows: slice) -> DistillInputs:
        """The inputs of the query rows `rows` (one process's share of a gathered batch)."""
        return DistillInputs(self.columns[rows], self.teacher[rows])


def student_scores(
    query_emb: torch.Tensor, doc_emb: torch.Tensor, inputs: DistillInputs, scale: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """(B, 1 + n) dot products of each query with its own candidates, times `scale` (0 where a
    candidate is missing)."""
    columns = inputs.columns.to(doc_emb.device).clamp(min=0)
    candidates = doc_emb.float()[columns]  # (B, 1 + n, d)
    return torch.einsum("bd,bkd->bk", query_emb.float(), candidates) * scale


class MarginMSELoss(nn.Module):
    """MSE between student and teacher margins of positive over each negative (see the module docstring)."""

    def forward(
        self,
        query_emb: torch.Tensor,
        doc_emb: torch.Tensor,
        inputs: DistillInputs,
        scale: torch.Tensor | float = 1.0,
        pairs: float | None = None,
    ) -> torch.Tensor:
        """Mean over the valid (query, negative) pairs; `pairs` replaces their count as the divisor
        (under DDP the whole batch's count, so that averaging the processes gives the global mean)."""
        scores = student_scores(query_emb, doc_emb, inputs, scale)
        teacher = inputs.teacher.to(scores.device).float()
        valid = margin_pairs(inputs).to(scores.device)
        student_margin = scores[:, :1] - scores[:, 1:]
        teacher_margin = teacher[:, :1] - teacher[:, 1:]
        if not bool(valid.any()):
            return scores.sum() * 0.0
        squared = (student_margin - teacher_margin)[valid] ** 2
        return squared.mean() if pairs is None else squared.sum() / pairs


def margin_pairs(inputs: DistillInputs) -> torch.Tensor:
    """(B, n) bool: the (query, negative) pairs that have a margin (both candidates present)."""
    return inputs.valid[:, 1:] & inputs.valid[:, :1]


class ListwiseKLLoss(nn.Module):
    """KL(teacher softmax || student softmax) over each query's [positive, negatives] (module docstring)."""

    def __init__(
        self,
        temperature: float = 1.0,
        student_temperature: float | None = None,
        teacher_temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.student_temperature = student_temperature or temperature
        self.teacher_temperature = teacher_temperature or temperature
        if self.student_temperature <= 0 or self.teacher_temperature <= 0:
            raise ValueError("distillation temperatures must be positive")

    def forward(
        self,
        query_emb: torch.Tensor,
        doc_emb: torch.Tensor,
        inputs: DistillInputs,
        scale: torch.Tensor | float = 1.0,
    ) -> torch.Tensor:
        scores = student_scores(query_emb, doc_emb, inputs, scale)
        valid = inputs.valid.to(scores.device)
        teacher = inputs.teacher.to(scores.device).float()
        student_log = torch.log_softmax((scores / self.student_temperature).masked_fill(~valid, float("-inf")), 1)
        teacher_prob = torch.softmax((teacher / self.teacher_temperature).masked_fill(~valid, float("-inf")), 1)
        terms = torch.xlogy(teacher_prob, teacher_prob) - teacher_prob * student_log.masked_fill(~valid, 0.0)
        return terms.sum() / scores.shape[0] * self.student_temperature**2
