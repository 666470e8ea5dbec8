"""Distillation losses against hand computation and sentence-transformers' MarginMSELoss / DistillKLDivLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from densekit.retriever.train.distill import DistillInputs, ListwiseKLLoss, MarginMSELoss, WeightedSum
from densekit.retriever.train.losses import InfoNCELoss, LossInputs


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=g), dim=1)


@pytest.fixture
def batch():
    """3 queries; documents laid out as the collator does: positives 0..2, then 2 negatives per query."""
    q, d = _unit(3, 8, 0), _unit(9, 8, 1)
    columns = torch.tensor([[0, 3, 4], [1, 5, 6], [2, 7, 8]])
    teacher = torch.tensor([[8.0, 3.0, -1.0], [2.0, 4.0, 1.5], [5.0, 5.0, 0.0]])
    return q, d, DistillInputs(columns, teacher)


def test_margin_mse_by_hand(batch) -> None:
    q, d, inputs = batch
    total, count = 0.0, 0
    for i, row in enumerate(inputs.columns.tolist()):
        s = [float(q[i] @ d[j]) for j in row]
        t = inputs.teacher[i].tolist()
        for k in (1, 2):
            total += ((s[0] - s[k]) - (t[0] - t[k])) ** 2
            count += 1
    assert float(MarginMSELoss()(q, d, inputs)) == pytest.approx(total / count, rel=1e-5)


def test_margin_mse_equals_sentence_transformers(batch) -> None:
    from sentence_transformers.util import pairwise_dot_score

    q, d, inputs = batch
    pos, negs = d[inputs.columns[:, 0]], [d[inputs.columns[:, k]] for k in (1, 2)]
    margins = torch.stack([pairwise_dot_score(q, pos) - pairwise_dot_score(q, n) for n in negs], dim=1)
    labels = inputs.teacher[:, :1] - inputs.teacher[:, 1:]  # ST's label conversion for [t_p, t_n...]
    expected = torch.nn.MSELoss()(margins, labels)
    assert float(MarginMSELoss()(q, d, inputs)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("ts,tt", [(1.0, 1.0), (0.5, 2.0)])
def test_listwise_kl_by_hand(batch, ts, tt) -> None:
    q, d, inputs = batch
    total = 0.0
    for i, row in enumerate(inputs.columns.tolist()):
        s = [float(q[i] @ d[j]) / ts for j in row]
        t = [x / tt for x in inputs.teacher[i].tolist()]
        log_zs = math.log(sum(math.exp(x) for x in s))
        zt = sum(math.exp(x) for x in t)
        for sk, tk in zip(s, t, strict=True):
            p = math.exp(tk) / zt
            total += p * (math.log(p) - (sk - log_zs))
    expected = total / 3 * ts**2
    got = ListwiseKLLoss(student_temperature=ts, teacher_temperature=tt)(q, d, inputs)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_listwise_kl_equals_sentence_transformers(batch) -> None:
    from sentence_transformers.util import pairwise_dot_score

    q, d, inputs = batch
    student = torch.stack([pairwise_dot_score(q, d[inputs.columns[:, k]]) for k in range(3)], dim=1) / 2.0
    teacher = torch.softmax(inputs.teacher / 2.0, dim=1)
    expected = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(student, dim=1), teacher) * 4.0
    assert float(ListwiseKLLoss(temperature=2.0)(q, d, inputs)) == pytest.approx(float(expected), rel=1e-6)


def test_missing_candidates_are_masked(batch) -> None:
    q, d, inputs = batch
    short = DistillInputs(inputs.columns.clone(), inputs.teacher.clone())
    short.columns[1, 2] = -1
    short.teacher[1, 2] = 1e6  # must not matter
    only_two = DistillInputs(inputs.columns[:, :2], inputs.teacher[:, :2])
    # query 1 with one negative scores like its first two columns alone
    kl = ListwiseKLLoss()
    rows = [kl(q[i : i + 1], d, DistillInputs(short.columns[i : i + 1], short.teacher[i : i + 1])) for i in range(3)]
    assert float(rows[1]) == pytest.approx(
        float(kl(q[1:2], d, DistillInputs(only_two.columns[1:2], only_two.teacher[1:2]))), rel=1e-6
    )
    assert math.isfinite(float(MarginMSELoss()(q, d, short)))
    assert math.isfinite(float(kl(q, d, short)))


def test_gradients_flow_and_weighted_sum(batch) -> None:
    q, d, inputs = batch
    q = q.clone().requires_grad_()
    infonce = InfoNCELoss(0.05)
    contrastive = LossInputs(torch.arange(3), torch.zeros(3, 9, dtype=torch.bool))
    combined = WeightedSum(infonce, MarginMSELoss(), weight=0.5)(q, d, contrastive, inputs)
    expected = infonce(q, d, contrastive) + 0.5 * MarginMSELoss()(q, d, inputs)
    assert float(combined.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    combined.backward()
    assert q.grad is not None and float(q.grad.abs().sum()) > 0
