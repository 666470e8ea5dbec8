"""Reproducibility matrix: expected-scores data, grading, builder registry, CLI; slow: the real grades."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from densekit.data import Run, load_dataset
from densekit.errors import InputError
from densekit.eval.reproduce import (
    RETRIEVER_BUILDERS,
    ExpectedScore,
    ExpectedTable,
    grade_score,
    load_expected,
    register_builder,
    reproduce,
)


def test_expected_scores_hold_the_published_numbers_with_sources() -> None:
    table = load_expected()
    values = {(s.retriever, s.dataset, s.metric): s.value for s in table.scores}
    assert values == {
        ("all-MiniLM-L6-v2", "scifact", "ndcg@10"): 0.6451,
        ("all-MiniLM-L6-v2", "nfcorpus", "ndcg@10"): 0.3159,
        ("all-mpnet-base-v2", "scifact", "ndcg@10"): 0.6557,
        ("all-mpnet-base-v2", "nfcorpus", "ndcg@10"): 0.3329,
        ("bm25-flat", "scifact", "ndcg@10"): 0.6789,
        ("bm25-flat", "nfcorpus", "ndcg@10"): 0.3218,
    }
    assert all(s.source and s.split == "test" for s in table.scores)
    assert {spec["kind"] for spec in table.retrievers.values()} <= set(RETRIEVER_BUILDERS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "malformed JSON"),
        ('{"retrievers": {}}', 'and "expected"'),
        ('{"retrievers": {"r": {"kind": "dense"}}, "expected": [{"retriever": "r"}]}', "lacks dataset"),
        (
            '{"retrievers": {"r": {"kind": "dense"}}, "expected": [{"retriever": "x", "dataset": "d", '
            '"metric": "ndcg@10", "value": 1, "source": "s"}]}',
            "unknown retriever 'x'",
        ),
        ('{"retrievers": {"r": {"model": "m"}}, "expected": []}', 'needs a "kind"'),
    ],
)
def test_bad_expected_files_name_the_file(tmp_path, content, message) -> None:
    path = tmp_path / "expected.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        load_expected(path)
    assert str(path) in str(info.value)


def test_grade_boundaries() -> None:
    entry = ExpectedScore("r", "d", "test", "ndcg@10", 0.6451, "src", tolerance=0.001)
    assert grade_score(entry, 0.6461) == "OK"
    assert grade_score(entry, 0.6441) == "OK"
    assert grade_score(entry, 0.6462) == "OFF"
    assert grade_score(entry, 0.6) == "OFF"


@pytest.fixture(scope="module")
def tiny_measured(tiny_model: Path, scifact_small: Path) -> float:
    from densekit.eval.harness import evaluate_retriever
    from densekit.retriever.dense import DenseRetriever
    from densekit.retriever.encoder import Encoder

    ds = load_dataset(scifact_small, split="test")
    retriever = DenseRetriever.build(Encoder(tiny_model, device="cpu"), ds.corpus, show_progress=False)
    return evaluate_retriever(retriever, ds, ["ndcg@10"]).result.metrics["ndcg@10"]


def _table(tiny_model: Path, scifact_small: Path, tiny_value: float) -> ExpectedTable:
    data = str(scifact_small)
    return ExpectedTable(
        retrievers={
            "tiny": {"kind": "dense", "model": str(tiny_model)},
            "absent-model": {"kind": "dense", "model": str(scifact_small / "no-such-model")},
            "mystery": {"kind": "quantum"},
            "bm25-flat": {"kind": "bm25", "backend": "lucene", "k1": 0.9, "b": 0.4},
        },
        scores=[
            ExpectedScore("tiny", data, "test", "ndcg@10", tiny_value, "measured here"),
            ExpectedScore("tiny", data, "test", "recall@100", 0.0, "deliberately wrong"),
            ExpectedScore("absent-model", data, "test", "ndcg@10", 0.5, "s"),
            ExpectedScore("mystery", data, "test", "ndcg@10", 0.5, "s"),
            ExpectedScore("bm25-flat", data, "test", "ndcg@10", 0.5, "s"),
        ],
    )


def test_reproduce_grades_ok_off_skipped_and_error(tiny_model, scifact_small, tiny_measured, monkeypatch) -> None:
    # BM25 without Java (or without the BM25 module) is skipped with a reason, never OK.
    try:
        import densekit.retriever.java as java

        monkeypatch.setattr(java, "lucene_problem", lambda: "no Java runtime (test)")
        # A JVM started by an earlier test in this process would short-circuit start_jvm().
        monkeypatch.setattr(java, "_started", False)
    except ImportError:
        pass
    grades = reproduce(_table(tiny_model, scifact_small, tiny_measured))
    by_key = {(g.retriever, g.metric): g for g in grades}
    ok = by_key[("tiny", "ndcg@10")]
    assert ok.grade == "OK" and ok.measured == pytest.approx(tiny_measured) and ok.difference == pytest.approx(0)
    off = by_key[("tiny", "recall@100")]
    assert off.grade == "OFF" and off.measured > 0.1
    skipped = by_key[("absent-model", "ndcg@10")]
    assert skipped.grade == "SKIPPED" and "no-such-model" in skipped.reason and skipped.measured is None
    error = by_key[("mystery", "ndcg@10")]
    assert error.grade == "ERROR" and "quantum" in error.reason
    bm25 = by_key[("bm25-flat", "ndcg@10")]
    assert bm25.grade == "SKIPPED" and bm25.reason


def test_bm25_module_missing_is_skipped(tiny_model, scifact_small, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "densekit.retriever.bm25", None)
    table = _table(tiny_model, scifact_small, 0.5)
    (grade,) = reproduce(table, only=["bm25-*"])
    assert grade.grade == "SKIPPED" and "densekit.retriever.bm25" in grade.reason


def test_registered_builder_is_used(scifact_small, monkeypatch) -> None:
    class FirstJudged:
        """Returns each query's first judged document at rank 1: a perfect run."""

        def __init__(self, qrels):
            self.qrels = qrels

        def search(self, queries, k):
            return Run.from_scores({q: {next(iter(self.qrels[q])): 1.0} for q in queries})

    monkeypatch.setitem(RETRIEVER_BUILDERS, "oracle", None)
    register_builder("oracle", lambda spec, ds, options: (FirstJudged(ds.qrels), {"kind": "oracle"}))
    table = ExpectedTable(
        {"oracle": {"kind": "oracle"}},
        [ExpectedScore("oracle", str(scifact_small), "test", "mrr@10", 1.0, "by construction")],
    )
    (grade,) = reproduce(table)
    assert (
        grade.grade == "OK"
        and grade.measured == 1.0
        and grade.config == {"kind": "oracle", "ignore_identical_ids": False, "depth": 1000}
    )


def test_judged_queries_without_results_follow_the_one_rule(scifact_small, monkeypatch) -> None:
    """A retriever perfect on half the queries and silent on the rest: 0.5 under the zero rule, 1.0 when
    skipping; each grade records the rule and the count."""

    class HalfSilent:
        def __init__(self, qrels):
            self.qrels = qrels

        def search(self, queries, k):
            answered = list(queries)[::2]
            return Run.from_scores({q: {next(iter(self.qrels[q])): 1.0} for q in answered})

    monkeypatch.setitem(RETRIEVER_BUILDERS, "half", None)
    register_builder("half", lambda spec, ds, options: (HalfSilent(ds.qrels), {"kind": "half"}))
    table = ExpectedTable(
        {"half": {"kind": "half"}},
        [ExpectedScore("half", str(scifact_small), "test", "mrr@10", 0.5, "by construction")],
    )
    (zero,) = reproduce(table)
    assert (zero.grade, zero.measured, zero.missing_queries, zero.missing_query_rule) == ("OK", 0.5, 10, "zero")
    (skip,) = reproduce(table, skip_missing_queries=True)
    assert (skip.grade, skip.measured, skip.missing_queries, skip.missing_query_rule) == ("OFF", 1.0, 10, "skip")
    assert skip.to_json()["missing_query_rule"] == "skip"


def test_cli_reproduce_exit_codes_and_formats(
    tiny_model, scifact_small, tiny_measured, tmp_path, capsys, monkeypatch
) -> None:
    table = {
        "retrievers": {"tiny": {"kind": "dense", "model": str(tiny_model)}},
        "expected": [
            {
                "retriever": "tiny",
                "dataset": str(scifact_small),
                "metric": "ndcg@10",
                "value": round(tiny_measured, 4),
                "source": "measured here",
            }
        ],
    }
    path = tmp_path / "expected.json"
    path.write_text(json.dumps(table))
    code, out, _ = run_cli(
        ["reproduce", "--expected", str(path), "--json", "--out", str(tmp_path / "g.json")],
        capsys,
        monkeypatch,
    )
    result = json.loads(out)
    assert code == 0 and result["counts"]["OK"] == 1
    assert json.loads((tmp_path / "g.json").read_text())["grades"][0]["grade"] == "OK"
    code, out, _ = run_cli(["reproduce", "--expected", str(path), "--format", "markdown"], capsys, monkeypatch)
    assert code == 0 and out.startswith("| retriever |") and "| OK |" in out
    table["expected"][0]["value"] = 0.0
    path.write_text(json.dumps(table))
    code, out, _ = run_cli(["reproduce", "--expected", str(path)], capsys, monkeypatch)
    assert code == 1 and "OFF" in out
    code, _, err = run_cli(["reproduce", "--expected", str(path), "--only", "nothing-matches"], capsys, monkeypatch)
    assert code == 2 and "no expected score matches" in err


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["scifact", "nfcorpus"])  # two tests: two workers can take them
def test_reproduce_minilm_and_bm25(dataset: str, beir_root) -> None:
    """all-MiniLM-L6-v2 reproduces MTEB on SciFact and NFCorpus; Lucene BM25 reproduces Pyserini where Java runs."""
    grades = reproduce(load_expected(), only=["all-MiniLM-L6-v2", "bm25-flat"], datasets=[dataset])
    by_key = {(g.retriever, g.dataset): g for g in grades}
    assert {d for _, d in by_key} == {dataset}
    minilm = by_key[("all-MiniLM-L6-v2", dataset)]
    assert minilm.grade == "OK", minilm
    bm25 = by_key[("bm25-flat", dataset)]
    assert bm25.grade in ("OK", "SKIPPED"), bm25
    if bm25.grade == "SKIPPED":
        assert bm25.reason
