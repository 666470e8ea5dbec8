"""Losses against hand computation, GIST masking, and GradCache gradients equal to the plain path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from densekit.retriever.train.distributed import DistributedContext
from densekit.retriever.train.gradcache import contrastive_step, split_features
from densekit.retriever.train.losses import GISTLoss, InfoNCELoss, LossInputs
from densekit.retriever.train.model import DualEncoder, length_sorted_groups


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=g), dim=1)


def _reference_infonce(q: torch.Tensor, d: torch.Tensor, pos: list[int], scale: float, drop=None) -> float:
    """-mean_i log softmax(scale * q_i . d)[pos_i], written out with python floats."""
    total = 0.0
    for i, p in enumerate(pos):
        logits = [scale * float(q[i] @ d[j]) for j in range(d.shape[0]) if drop is None or j == p or not drop[i][j]]
        target = scale * float(q[i] @ d[p])
        total += math.log(sum(math.exp(x) for x in logits)) - target
    return total / len(pos)


def test_infonce_matches_hand_computation() -> None:
    q, d = _unit(4, 8, 0), _unit(12, 8, 1)
    pos = [0, 1, 2, 3]
    inputs = LossInputs(torch.tensor(pos), torch.zeros(4, 12, dtype=torch.bool))
    loss = InfoNCELoss(temperature=0.05)(q, d, inputs)
    assert float(loss) == pytest.approx(_reference_infonce(q, d, pos, 20.0), rel=1e-5)


def test_infonce_equals_sentence_transformers_mnrl_formula() -> None:
    """MultipleNegativesRankingLoss: cross entropy of scale * cos(a, [p; n]) against arange."""
    from sentence_transformers.util import cos_sim

    q, p, n = _unit(5, 8, 2), _unit(5, 8, 3), _unit(5, 8, 4)
    docs = torch.cat([p, n])
    expected = F.cross_entropy(cos_sim(q, docs) * 20.0, torch.arange(5))
    got = InfoNCELoss(0.05)(q, docs, LossInputs(torch.arange(5), torch.zeros(5, 10, dtype=torch.bool)))
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_excluded_columns_do_not_count_but_positive_is_never_excluded() -> None:
    q, d = _unit(3, 8, 5), _unit(6, 8, 6)
    pos = [0, 1, 2]
    drop = torch.zeros(3, 6, dtype=torch.bool)
    drop[0, 4] = True
    drop[1, 1] = True  # the positive itself: must be ignored
    loss = InfoNCELoss(0.05)(q, d, LossInputs(torch.tensor(pos), drop))
    ref_drop = drop.clone()
    ref_drop[1, 1] = False
    assert float(loss) == pytest.approx(_reference_infonce(q, d, pos, 20.0, ref_drop.tolist()), rel=1e-5)


def test_symmetric_term_is_the_mean_of_both_directions() -> None:
    q, d = _unit(4, 8, 7), _unit(8, 8, 8)
    pos = torch.arange(4)
    inputs = LossInputs(pos, torch.zeros(4, 8, dtype=torch.bool))
    forward = InfoNCELoss(0.05)(q, d, inputs)
    backward = F.cross_entropy(20.0 * d[:4] @ q.T, torch.arange(4))
    both = InfoNCELoss(0.05, symmetric=True)(q, d, inputs)
    assert float(both) == pytest.approx((float(forward) + float(backward)) / 2, rel=1e-5)


def test_learnable_temperature_gets_a_gradient() -> None:
    q, d = _unit(4, 8, 9), _unit(8, 8, 10)
    loss_fn = InfoNCELoss(0.05, learnable=True)
    loss_fn(q, d, LossInputs(torch.arange(4), torch.zeros(4, 8, dtype=torch.bool))).backward()
    assert loss_fn.log_scale.grad is not None and float(loss_fn.log_scale.grad) != 0.0
    assert loss_fn.temperature == pytest.approx(0.05)


def test_gist_masks_what_the_guide_ranks_at_or_above_the_positive() -> None:
    q, d = _unit(2, 8, 11), _unit(6, 8, 12)
    pos = [0, 1]
    guide = torch.tensor(
        [
            [0.8, 0.1, 0.9, 0.8, 0.2, 0.79],  # cols 2 (above) and 3 (equal) masked
            [0.3, 0.5, 0.1, 0.2, 0.6, 0.0],
        ]
    )  # col 4 masked
    inputs = LossInputs(torch.tensor(pos), torch.zeros(2, 6, dtype=torch.bool), guide_scores=guide)
    loss = GISTLoss(0.05)(q, d, inputs)
    drop = [[False, False, True, True, False, False], [False, False, False, False, True, False]]
    assert float(loss) == pytest.approx(_reference_infonce(q, d, pos, 20.0, drop), rel=1e-5)
    # a margin masks candidates slightly below the positive too (col 5 of query 0)
    loss_margin = GISTLoss(0.05, margin=0.02)(q, d, inputs)
    drop[0][5] = True
    assert float(loss_margin) == pytest.approx(_reference_infonce(q, d, pos, 20.0, drop), rel=1e-5)


def test_gist_needs_guide_scores() -> None:
    with pytest.raises(ValueError, match="guide_scores"):
        GISTLoss()(_unit(2, 4, 0), _unit(4, 4, 1), LossInputs(torch.arange(2), torch.zeros(2, 4, dtype=torch.bool)))


# ---------------------------------------------------------------- GradCache


QUERIES = [
    "what causes scurvy",
    "is coffee bad for the heart",
    "how do vaccines work",
    "why is the sky blue",
    "can dogs eat chocolate",
    "what is dark matter",
    "effects of sleep deprivation",
]
DOCS = [
    f"document {i}: "
    + " ".join(
        [
            "vitamin c deficiency",
            "cardiovascular risk",
            "immune response",
            "rayleigh scattering",
            "theobromine toxicity",
            "galaxy rotation curves",
            "cognitive performance",
        ][i % 7 :]
        * (1 + i % 3)
    )
    for i in range(14)
]


def _features(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")


def _grads(model: DualEncoder, loss_fn: InfoNCELoss, chunk: int | None, inputs: LossInputs, tok) -> tuple:
    model.zero_grad(set_to_none=True)
    loss_fn.zero_grad(set_to_none=True)
    out = contrastive_step(
        model,
        loss_fn,
        _features(tok, QUERIES),
        _features(tok, DOCS),
        inputs,
        DistributedContext(),
        torch.device("cpu"),
        chunk,
    )
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    extra = [p.grad.clone() for p in loss_fn.parameters() if p.grad is not None]
    return float(out.loss), grads, extra


@pytest.fixture(scope="module")
def tiny_dual(tiny_model):
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    backbone = AutoModel.from_pretrained(tiny_model)
    return DualEncoder(backbone, "mean", True).eval(), AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("loss_name", ["infonce", "infonce-learnable-symmetric", "gist"])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_gradcache_gradients_equal_plain_path(tiny_dual, loss_name: str, chunk: int) -> None:
    model, tok = tiny_dual
    n = len(QUERIES)
    guide = _unit(n, 16, 20) @ _unit(len(DOCS), 16, 21).T if loss_name == "gist" else None
    exclude = torch.zeros(n, len(DOCS), dtype=torch.bool)
    exclude[0, 7] = True
    inputs = LossInputs(torch.arange(n), exclude, guide_scores=guide)

    def make():
        if loss_name == "gist":
            return GISTLoss(0.05)
        return InfoNCELoss(0.05, learnable=loss_name != "infonce", symmetric=loss_name != "infonce")

    loss_plain, grads_plain, extra_plain = _grads(model, make(), None, inputs, tok)
    loss_cached, grads_cached, extra_cached = _grads(model, make(), chunk, inputs, tok)
    assert loss_cached == pytest.approx(loss_plain, abs=1e-5)
    assert grads_plain.keys() == grads_cached.keys() and len(grads_plain) > 10
    for name, grad in grads_plain.items():
        assert torch.allclose(grads_cached[name], grad, atol=1e-5, rtol=1e-4), name
    assert any(g.abs().max() > 1e-4 for g in grads_plain.values())  # the comparison is not vacuous
    for a, b in zip(extra_plain, extra_cached, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_length_sorted_groups_cover_every_row_once_longest_first(tiny_dual) -> None:
    _, tok = tiny_dual
    features = _features(tok, DOCS)
    lengths = features["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 3  # the texts really differ in length
    order, groups = length_sorted_groups(features, 4)
    assert sorted(order.tolist()) == list(range(len(DOCS)))
    assert [len(g["input_ids"]) for g in groups] == [4, 4, 4, 2]
    assert lengths[order].tolist() == sorted(lengths.tolist(), reverse=True)
    for rows, group in zip(order.split(4), groups, strict=True):
        assert group["input_ids"].shape[1] == int(lengths[rows].max())  # trimmed to the group's longest
        for i, row in enumerate(rows.tolist()):
            n = int(lengths[row])
            assert torch.equal(group["input_ids"][i, :n], features["input_ids"][row, :n])


@pytest.mark.parametrize(("forward_batch_size", "chunk"), [(1, None), (3, None), (5, None), (2, 5)])
def test_length_sorted_forward_equals_one_forward(tiny_dual, forward_batch_size: int, chunk: int | None) -> None:
    """Same embeddings, loss and gradients with the rows run in length-sorted groups (and under GradCache)."""
    model, tok = tiny_dual
    n = len(QUERIES)
    inputs = LossInputs(torch.arange(n), torch.zeros(n, len(DOCS), dtype=torch.bool))
    with torch.no_grad():
        whole = model.embed(_features(tok, DOCS), "document")
    loss_plain, grads_plain, _ = _grads(model, InfoNCELoss(0.05, symmetric=True), None, inputs, tok)
    model.forward_batch_size = forward_batch_size
    try:
        with torch.no_grad():
            grouped = model.embed(_features(tok, DOCS), "document")
        loss_grouped, grads_grouped, _ = _grads(model, InfoNCELoss(0.05, symmetric=True), chunk, inputs, tok)
    finally:
        model.forward_batch_size = None
    assert torch.allclose(grouped, whole, atol=1e-5)
    assert not torch.allclose(grouped[1:], whole[:-1], atol=1e-3)  # rows came back in batch order
    assert loss_grouped == pytest.approx(loss_plain, abs=1e-5)
    assert grads_plain.keys() == grads_grouped.keys() and len(grads_plain) > 10
    for name, grad in grads_plain.items():
        assert torch.allclose(grads_grouped[name], grad, atol=1e-5, rtol=1e-4), name


def test_forward_batch_size_defaults_to_groups_of_8_on_cpu_and_one_call_on_cuda() -> None:
    from densekit.retriever.train.trainer import resolve_forward_batch_size

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_forward_batch_size(None, cpu) == 8
    assert resolve_forward_batch_size(None, cuda) is None
    assert resolve_forward_batch_size(0, cpu) is None  # 0: one call, as asked
    assert resolve_forward_batch_size(16, cuda) == 16


@pytest.mark.parametrize("forward_batch_size", [None, 3])
def test_gradcache_replays_dropout(tiny_model, forward_batch_size: int | None) -> None:
    """In train mode the graph-free pass and the re-run must see the same dropout masks."""
    from transformers import AutoModel, AutoTokenizer

    backbone = AutoModel.from_pretrained(tiny_model, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    model = DualEncoder(backbone, "mean", True, forward_batch_size=forward_batch_size).train()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    inputs = LossInputs(torch.arange(len(QUERIES)), torch.zeros(len(QUERIES), len(DOCS), dtype=torch.bool))
    captured: list[torch.Tensor] = []
    original = model.embed

    def spy(features, role):
        emb = original(features, role)
        captured.append(emb.detach().clone())
        return emb

    model.embed = spy
    torch.manual_seed(3)
    contrastive_step(
        model,
        InfoNCELoss(),
        _features(tok, QUERIES),
        _features(tok, DOCS),
        inputs,
        DistributedContext(),
        torch.device("cpu"),
        chunk_size=4,
    )
    half = len(captured) // 2
    assert half == 2 + 4  # 7 queries -> 2 chunks, 14 docs -> 4 chunks; each embedded twice
    for first, second in zip(captured[:half], captured[half:], strict=True):
        assert torch.equal(first, second)
    with torch.no_grad():
        again = original(split_features(_features(tok, QUERIES), 4)[0], "query")
    assert not torch.allclose(again, captured[0])  # dropout really is active: a fresh pass differs
