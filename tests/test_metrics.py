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
    dcg = 1 / math.log2(3)  # a at rank 2; c (gain 2) at rank 4 is cut off
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


def _close(got: dict[str, dict[str, float]], expected: dict[str, dict[str, float]]) -> bool:
    return got.keys() == expected.keys() and all(got[q] == pytest.approx(expected[q], abs=1e-12) for q in got)


def _missing_query_case():
    """q3 is absent from the run and q4 is in it with no hits: both are judged queries without results.
    q9 is in the run but not judged, so it is never evaluated."""
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 2}, "q3": {"d4": 1}, "q4": {"d5": 1}}
    run = Run.from_scores({"q1": {"d1": 1.0, "x": 0.5}, "q2": {"x": 1.0, "d3": 0.5}, "q9": {"d1": 1.0}})
    run["q4"] = []
    # By hand (trec_eval's ndcg gain = relevance): q1 finds d1 at rank 1; q2 finds d3 (grade 2) at rank 2.
    ndcg_q2 = (2 / math.log2(3)) / (2 / math.log2(2) + 1 / math.log2(3))
    per_query = {
        "q1": {"ndcg@10": 1.0, "mrr@10": 1.0, "recall@100": 1.0},
        "q2": {"ndcg@10": ndcg_q2, "mrr@10": 0.5, "recall@100": 0.5},
    }
    return qrels, run, per_query


def test_missing_queries_count_as_zero_by_default() -> None:
    qrels, run, by_hand = _missing_query_case()
    result = evaluate(qrels, run, ["ndcg@10", "mrr@10", "recall@100"])
    zeros = {"ndcg@10": 0.0, "mrr@10": 0.0, "recall@100": 0.0}
    assert _close(result.per_query, {**by_hand, "q3": zeros, "q4": zeros})
    assert list(result.per_query) == ["q1", "q2", "q3", "q4"]  # qrels order, the unjudged q9 left out
    assert (result.queries, result.missing_queries, result.missing_query_rule) == (4, 2, "zero")
    assert result.metrics["ndcg@10"] == pytest.approx((1.0 + by_hand["q2"]["ndcg@10"]) / 4, abs=1e-12)
    assert result.metrics["mrr@10"] == pytest.approx(1.5 / 4)
    assert result.metrics["recall@100"] == pytest.approx(1.5 / 4)
    assert result.to_json()["missing_query_rule"] == "zero" and result.to_json()["queries"] == 4
    assert result.describe_queries() == "4 queries, 2 without results counted as 0"


def test_skip_missing_queries_averages_over_queries_with_results() -> None:
    qrels, run, by_hand = _missing_query_case()
    result = evaluate(qrels, run, ["ndcg@10", "mrr@10", "recall@100"], skip_missing_queries=True)
    assert _close(result.per_query, by_hand)
    assert (result.queries, result.missing_queries, result.missing_query_rule) == (2, 2, "skip")
    assert result.metrics["ndcg@10"] == pytest.approx((1.0 + by_hand["q2"]["ndcg@10"]) / 2, abs=1e-12)
    assert result.metrics["mrr@10"] == pytest.approx(0.75)
    assert result.to_json() == {**result.to_json(), "queries": 2, "missing_queries": 2, "missing_query_rule": "skip"}
    assert result.describe_queries() == "2 queries, 2 without results skipped"


def test_the_zero_rule_equals_the_skip_rule_scaled() -> None:
    """The issue's identity: mean_zero = mean_skip * with_results / judged (0.33746 * 308/323 = 0.32178)."""
    qrels, run, _ = _missing_query_case()
    zero = evaluate(qrels, run, ["ndcg@10"]).metrics["ndcg@10"]
    skip = evaluate(qrels, run, ["ndcg@10"], skip_missing_queries=True).metrics["ndcg@10"]
    assert zero == pytest.approx(skip * 2 / 4) and zero < skip


def test_a_run_file_and_the_same_run_in_memory_score_alike(tmp_path) -> None:
    """Writing a run loses the empty query (TREC has no line for it); the score must not change."""
    qrels, run, _ = _missing_query_case()
    path = tmp_path / "run.trec"
    run.write_trec(path)
    from_file = Run.read_trec(path)
    assert "q4" not in from_file and "q4" in run
    for skip in (False, True):
        a = evaluate(qrels, run, ["ndcg@10", "map@10"], skip_missing_queries=skip)
        b = evaluate(qrels, from_file, ["ndcg@10", "map@10"], skip_missing_queries=skip)
        assert a.metrics == pytest.approx(b.metrics) and a.queries == b.queries
        assert a.missing_queries == b.missing_queries == 2


@pytest.mark.parametrize("bad", ["ndcg", "ndcg@0", "bleu@10", "ndcg@ten"])
def test_unknown_metric_is_an_error(bad: str) -> None:
    with pytest.raises(DensekitError, match="unknown metric"):
        parse_metric(bad)
