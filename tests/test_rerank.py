"""Cross-encoder reranking. No pretrained cross-encoder is installable here, so these tests use a tiny
randomly initialised BERT sequence classifier (MiniLM's tokenizer): they check the mechanics
(candidates, scores equal to the model's logits, ordering, batching, the CLI), not ranking quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from densekit.data import Run, join_title_text, load_dataset
from densekit.errors import DensekitError
from densekit.retriever.base import Retriever
from densekit.retriever.bm25 import BM25Retriever
from densekit.retriever.rerank import CrossEncoderReranker, blend_runs


def _tiny_classifier(folder: Path, minilm_folder: Path, num_labels: int) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cross_encoder(minilm_folder, tmp_path_factory) -> Path:
    return _tiny_classifier(tmp_path_factory.mktemp("tiny_ce"), minilm_folder, num_labels=1)


@pytest.fixture(scope="module")
def small(scifact_small):
    ds = load_dataset(scifact_small, split="test")
    return ds, BM25Retriever.build(ds.corpus, backend="bm25s")


def _direct_scores(folder: Path, query: str, documents: list[str], label: int = -1) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    for doc in documents:  # one pair at a time: no padding involved
        with torch.no_grad():
            logits = model(**tokenizer(query, doc, truncation=True, max_length=512, return_tensors="pt")).logits
        out.append(float(logits[0, label]))
    return out


def test_reranker_rescores_the_first_stage_candidates(small, cross_encoder) -> None:
    ds, bm25 = small
    queries = dict(list(ds.queries.items())[:3])
    reranker = CrossEncoderReranker(bm25, cross_encoder, ds.corpus, depth=8, batch_size=3, device="cpu")
    assert isinstance(reranker, Retriever)
    run = reranker.search(queries, k=5)
    first = bm25.search(queries, 8)
    for query_id, text in queries.items():
        candidates = [d for d, _ in first[query_id]]
        docs = [join_title_text(ds.corpus.document(d)["title"], ds.corpus.document(d)["text"]) for d in candidates]
        direct = dict(zip(candidates, _direct_scores(cross_encoder, text, docs), strict=True))
        expected = sorted(direct.items(), key=lambda item: (-item[1], item[0]))[:5]
        assert [d for d, _ in run[query_id]] == [d for d, _ in expected]
        assert [s for _, s in run[query_id]] == pytest.approx([s for _, s in expected], abs=1e-4)


def test_batch_size_does_not_change_scores(small, cross_encoder) -> None:
    ds, bm25 = small
    queries = dict(list(ds.queries.items())[:2])
    one, many = (
        CrossEncoderReranker(bm25, cross_encoder, ds.corpus, depth=10, batch_size=size, device="cpu").search(
            queries, 10
        )
        for size in (1, 16)
    )
    for query_id in queries:
        assert [d for d, _ in one[query_id]] == [d for d, _ in many[query_id]]
        assert [s for _, s in one[query_id]] == pytest.approx([s for _, s in many[query_id]], abs=1e-4)


def test_two_label_classifier_uses_the_relevant_label(small, minilm_folder, tmp_path) -> None:
    ds, bm25 = small
    folder = _tiny_classifier(tmp_path / "ce2", minilm_folder, num_labels=2)
    query_id, text = next(iter(ds.queries.items()))
    run = CrossEncoderReranker(bm25, folder, ds.corpus, depth=4, device="cpu").search({query_id: text}, 4)
    docs = [join_title_text(ds.corpus.document(d)["title"], ds.corpus.document(d)["text"]) for d, _ in run[query_id]]
    assert [s for _, s in run[query_id]] == pytest.approx(_direct_scores(folder, text, docs, label=1), abs=1e-4)


def test_not_a_model_folder_is_an_error(small, tmp_path) -> None:
    ds, bm25 = small
    with pytest.raises(DensekitError, match="not a model folder"):
        CrossEncoderReranker(bm25, tmp_path, ds.corpus)
    with pytest.raises(DensekitError, match="must be positive"):
        CrossEncoderReranker(bm25, tmp_path, ds.corpus, depth=0)


def test_cli_eval_with_rerank(scifact_small, cross_encoder, monkeypatch, capsys) -> None:
    code, out, err = run_cli(
        [
            "eval",
            str(scifact_small),
            "--bm25",
            "--backend",
            "bm25s",
            "--rerank",
            str(cross_encoder),
            "--rerank-depth",
            "5",
            "--json",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["config"]["rerank_depth"] == 5 and result["config"]["first_stage"]["bm25_backend"] == "bm25s"
    # Reranking permutes BM25's top 5 only, so recall@100 is at most BM25's recall@5 (<= 1).
    assert 0 < result["metrics"]["recall@100"] <= 1


def test_blend_runs_against_hand_computation() -> None:
    first = Run({"q": [("a", 10.0), ("b", 8.0), ("c", 4.0)]})
    ce = Run({"q": [("a", -1.0), ("b", 3.0), ("c", 1.0)]})
    # minmax: first a=1, b=2/3, c=0; cross-encoder a=0, b=1, c=1/2.
    blended = blend_runs(first, ce, 0.4, "minmax")
    expected = {"a": 0.4 * 1.0, "b": 0.6 * 1.0 + 0.4 * (2 / 3), "c": 0.6 * 0.5}
    assert [d for d, _ in blended["q"]] == ["b", "a", "c"]
    assert dict(blended["q"]) == pytest.approx(expected)
    # Weight 0 is the cross-encoder's own order and scores; weight 1 the first stage's order.
    assert blend_runs(first, ce, 0.0, "minmax", k=2)["q"] == [("b", 3.0), ("c", 1.0)]
    assert [d for d, _ in blend_runs(first, ce, 1.0, "zscore")["q"]] == ["a", "b", "c"]
    with pytest.raises(DensekitError, match=r"in \[0, 1\]"):
        blend_runs(first, ce, 1.5)
    with pytest.raises(DensekitError, match="normalisation"):
        blend_runs(first, ce, 0.5, "rank")


def test_reranker_blends_the_first_stage_score(small, cross_encoder) -> None:
    ds, bm25 = small
    queries = dict(list(ds.queries.items())[:3])
    alone = CrossEncoderReranker(bm25, cross_encoder, ds.corpus, depth=8, device="cpu").search(queries, 8)
    first = bm25.search(queries, 8)
    blended = CrossEncoderReranker(
        bm25, cross_encoder, ds.corpus, depth=8, device="cpu", first_stage_weight=0.3, normalization="zscore"
    )
    assert blended.describe()["rerank_first_stage_weight"] == 0.3
    run = blended.search(queries, 5)
    expected = blend_runs(first, alone, 0.3, "zscore", k=5)
    for query_id in queries:
        assert [d for d, _ in run[query_id]] == [d for d, _ in expected[query_id]]
        assert [s for _, s in run[query_id]] == pytest.approx([s for _, s in expected[query_id]], abs=1e-5)
    with pytest.raises(DensekitError, match=r"in \[0, 1\]"):
        CrossEncoderReranker(bm25, cross_encoder, ds.corpus, first_stage_weight=-0.1)


def test_cli_blend_needs_rerank(scifact_small, monkeypatch, capsys) -> None:
    code, _, err = run_cli(
        ["eval", str(scifact_small), "--bm25", "--rerank-first-stage-weight", "0.5"], capsys, monkeypatch
    )
    assert code == 2 and "give --rerank" in err
