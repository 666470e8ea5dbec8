"""Metrics equal BEIR's EvaluateRetrieval.evaluate on the same run; hand-checked values; options."""

from __future__ import annotations

import copy
import math
import random

import pytest

from densekit.data import Run, load_dataset
from densekit.errors import DensekitError
from densekit.eval.metrics import evaluate, parse_metric

K_VALUES = [1, 3, 5, 10, 100]


@pytest.fixture(scope="module")
def scifact_run(scifact_dir):
    """A deterministic pseudo-random run over the real SciFact test qrels: relevant documents are
    scattered through 150-deep rankings with ties, so every cut-off and tie-break is exercised."""
    ds = load_dataset(scifact_dir, split="test")
    rng = random.Random(13)
    scores = {}
    for query_id, rels in ds.qrels.items():
        docs = rng.sample(ds.corpus.ids, 150)
        docs[rng.randrange(0, 150)] = next(iter(rels))
        scores[query_id] = {d: round(rng.random(), 2) for d in docs}  # rounding creates ties
    return ds.qrels, scores


def test_equal_to_beir(scifact_run) -> None:
    from beir.retrieval.evaluation import EvaluateRetrieval

    qrels, scores = scifact_run
    names = [f"{m}@{k}" for m in ("ndcg", "map", "recall", "p") for k in K_VALUES]
    ours = evaluate(qrels, Run.from_scores(scores), names).metrics
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(
        qrels, copy.deepcopy(scores), K_VALUES, ignore_identical_ids=False
    )
    theirs = {**ndcg, **_map, **recall, **precision}
    beir_name = {"ndcg": "NDCG", "map": "MAP", "recall": "Recall", "p": "P"}
    for name in names:
        kind, k = parse_metric(name)
        expected = theirs[f"{beir_name[kind]}@{k}"]
        # BEIR rounds its means to 5 decimals: agreement within 1e-6 means equality after that rounding.
        assert round(ours[name], 5) == pytest.approx(expected, abs=1e-6), name
        assert abs(ours[name] - expected) <= 5e-6 + 1e-9, name


def test_mrr_equal_to_beir_without_ties() -> None:
    from beir.retrieval.custom_metrics import mrr

    rng = random.Random(5)
    qrels = {f"q{i}": {f"d{rng.randrange(40)}": 1 for _ in range(2)} for i in range(30)}
    scores = {q: {f"d{j}": rng.random() for j in range(40)} for q in qrels}
    ours = evaluate(qrels, scores, ["mrr@1", "mrr@10", "mrr@100"]).metrics
    theirs = mrr(qrels, copy.deepcopy(scores), [1, 10, 100])
    for k in (1, 10, 100):
        assert round(ours[f"mrr@{k}"], 5) == pytest.approx(theirs[f"MRR@{k}"], abs=1e-6)


def test_hand_computed_values() -> None:
    qrels = {"q": {"a": 1, "c": 2}}
    run = Run.from_scores({"q": {"b": 3.0, "a": 2.0, "x": 1.5, "c": 1.0}})
    result = evaluate(qrels, run, ["ndcg@3", "mrr@10", "p@2", "recall@3", "map@10"])
    dcg = 1 / math.log2(3)                 # a at rank 2; c (gain 2) at rank 4 is cut off
    idcg = (2**2 - 1) / math.log2(2) + 1 / math.log2(3)
    # trec_eval's ndcg_cut uses gain = relevance (not 2^rel - 1)
    idcg_trec = 2 / math.log2(2) + 1 / math.log2(3)
    assert result.metrics["ndcg@3"] == pytest.approx(dcg / idcg_trec, abs=1e-9)
    assert result.metrics["ndcg@3"] != pytest.approx(dcg / idcg)
    assert result.metrics["mrr@10"] == pytest.approx(0.5)
    assert result.metrics["p@2"] == pytest.approx(0.5)
    assert result.metrics["recall@3"] == pytest.approx(0.5)
    assert result.metrics["map@10"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_ignore_identical_ids_drops_self_hits() -> None:
    qrels = {"q1": {"d1": 1}}
    run = Run.from_scores({"q1": {"q1": 9.0, "d1": 1.0}})
    plain = evaluate(qrels, run, ["mrr@10"])
    ignored = evaluate(qrels, run, ["mrr@10"], ignore_identical_ids=True)
    assert plain.metrics["mrr@10"] == pytest.approx(0.5)
    assert ignored.metrics["mrr@10"] == pytest.approx(1.0)
    assert ignored.removed_identical == 1


def test_per_query_and_missing_queries() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    run = Run.from_scores({"q1": {"d1": 1.0}, "q2": {"x": 1.0}})
    result = evaluate(qrels, run, ["ndcg@10"])
    assert result.per_query == {"q1": {"ndcg@10": 1.0}, "q2": {"ndcg@10": 0.0}}
    assert result.queries == 2 and result.missing_queries == 1
    assert result.metrics["ndcg@10"] == pytest.approx(0.5)


@pytest.mark.parametrize("bad", ["ndcg", "ndcg@0", "bleu@10", "ndcg@ten"])
def test_unknown_metric_is_an_error(bad: str) -> None:
    with pytest.raises(DensekitError, match="unknown metric"):
        parse_metric(bad)
