"""Passages of long documents: windows, sentence ends, ids, aggregation, and a fact past the window.

The end-to-end test puts one fact after 300+ tokens of unrelated text: whole-document encoding
(all-MiniLM-L6-v2's 256-token window) cannot find it, an index of 128-token passages finds it first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from transformers import AutoTokenizer

from densekit.chunking import ChunkConfig, chunk_corpus, parent_id, passage_number, token_windows
from densekit.data import Corpus
from densekit.errors import DensekitError
from densekit.retriever.compose import open_index
from densekit.retriever.passages import PassageRetriever, aggregate

FACT = "The capital of Zorbania is Quelltown, a city built around a salt lake."
QUERY = "Which city is the capital of Zorbania?"


def _filler(n: int) -> str:
    dishes = ["risotto", "ratatouille", "goulash", "paella", "moussaka", "biryani", "tagine"]
    return " ".join(
        f"Step {i}: stir the {dishes[i % len(dishes)]} gently and add a pinch of salt before simmering."
        for i in range(n)
    )


@pytest.fixture(scope="module")
def tokenizer(minilm_folder: Path):
    return AutoTokenizer.from_pretrained(minilm_folder)


@pytest.fixture(scope="module")
def long_fact_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder: a long recipe whose last sentence is the fact, and short distractors about capitals."""
    root = tmp_path_factory.mktemp("long_fact")
    docs = [{"_id": "recipe", "title": "A slow kitchen", "text": _filler(30) + " " + FACT}]
    countries = ["Freedonia", "Sylvania", "Latveria", "Genovia", "Elbonia", "Ruritania", "Grand Fenwick", "Kasnia"]
    for i, country in enumerate(countries):
        docs.append(
            {"_id": f"geo{i}", "title": country, "text": f"{country} is a small country with a long coastline."}
        )
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for doc in docs:
            handle.write(json.dumps(doc) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "q1", "text": QUERY}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\trecipe\t1\n", encoding="utf-8")
    return root


def test_windows_respect_size_overlap_and_sentence_ends(tokenizer) -> None:
    text = " ".join(f"Sentence number {i} says something about topic {i % 7}." for i in range(60))
    passages, meta = chunk_corpus(Corpus(["d#1"], ["T"], [text]), tokenizer, ChunkConfig(64, 16))
    assert len(passages) > 5
    for pid, body, m in zip(passages.ids, passages.body, meta, strict=True):
        assert parent_id(pid) == "d#1" and m["parent_id"] == "d#1"  # a '#' inside a document id is kept
        assert body == text[m["start"] : m["end"]]
        assert len(tokenizer(body, add_special_tokens=False)["input_ids"]) <= 64
        assert body.endswith(".")  # cut at a sentence end, not mid-sentence
        assert body.startswith("Sentence")  # and started at a sentence start inside the overlap
    starts = [m["start"] for m in meta]
    ends = [m["end"] for m in meta]
    assert all(s < e for s, e in zip(starts[1:], ends[:-1], strict=True))  # consecutive passages overlap
    assert [passage_number(p) for p in passages.ids] == list(range(len(passages)))
    assert ends[-1] == len(text)


def test_token_windows_without_sentences_and_short_texts() -> None:
    assert token_windows(10, [], 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert token_windows(3, [], 8, 2) == [(0, 3)]
    assert token_windows(10, [], 4, 0) == [(0, 4), (4, 8), (8, 10)]


def test_config_is_checked() -> None:
    with pytest.raises(DensekitError, match="window of 256"):
        ChunkConfig(300).validate(256)
    with pytest.raises(DensekitError, match="--chunk-overlap"):
        ChunkConfig(64, 40).validate()
    with pytest.raises(DensekitError, match="--aggregate"):
        ChunkConfig(64, aggregate="maxq").validate()
    with pytest.raises(DensekitError, match="needs --chunk-size"):
        ChunkConfig(None, 8).validate()


def test_aggregation_rules_by_hand() -> None:
    hits = [("a#2", 0.9), ("b#0", 0.8), ("a#0", 0.7), ("c#1", 0.6), ("b#1", 0.5)]
    docs, best = aggregate(hits, "maxp")
    assert docs == [("a", 0.9), ("b", 0.8), ("c", 0.6)] and best == {"a": "a#2", "b": "b#0", "c": "c#1"}
    docs, _ = aggregate(hits, "firstp")
    assert docs == [("b", 0.8), ("a", 0.7)]
    docs, _ = aggregate(hits, "sump")
    assert [d for d, _ in docs] == ["a", "b", "c"] and docs[0][1] == pytest.approx(1.6)


class _FixedPassages:
    """A passage retriever with fixed hits (records the depths asked for)."""

    def __init__(self, hits: list[tuple[str, float]]) -> None:
        self.hits, self.asked = hits, []

    def search(self, queries: dict[str, str], k: int):
        from densekit.data import Run

        self.asked.append(k)
        return Run({q: self.hits[:k] for q in queries})


def test_passage_retriever_fetches_deeper_until_k_documents() -> None:
    hits = [(f"a#{i}", 1 - i / 100) for i in range(20)] + [("b#0", 0.5), ("c#0", 0.4)]
    inner = _FixedPassages(hits)
    run = PassageRetriever(inner, depth_factor=2, total=len(hits)).search({"q": "x"}, 3)
    assert [d for d, _ in run["q"]] == ["a", "b", "c"]
    assert inner.asked == [6, 22]  # 2 k first, then fourfold (capped at the index size)


def test_a_fact_beyond_the_window_is_found_only_with_passages(long_fact_data, minilm_folder, tmp_path, capsys) -> None:
    whole, chunked = tmp_path / "whole.idx", tmp_path / "chunked.idx"
    code, _, err = run_cli(["index", "build", str(long_fact_data), "-m", str(minilm_folder), "-o", str(whole)], capsys)
    assert code == 0
    assert "1 of 9 texts are longer than" in err  # the cut is announced, with the count
    args = ["index", "build", str(long_fact_data), "-m", str(minilm_folder), "-o", str(chunked)]
    code, out, _ = run_cli([*args, "--chunk-size", "128", "--chunk-overlap", "32", "--json"], capsys)
    assert code == 0
    built = json.loads(out)
    assert built["documents"] == 9 and built["passages"] > 9 and built["chunking"]["chunk_size"] == 128

    run_whole = open_index(whole).search({"q1": QUERY}, 9)["q1"]
    assert run_whole[0][0] != "recipe"  # the fact lies past the window: whole-document search misses it
    retriever = open_index(chunked)
    assert isinstance(retriever, PassageRetriever)
    run = retriever.search({"q1": QUERY}, 5)["q1"]
    assert run[0][0] == "recipe" and len({d for d, _ in run}) == len(run)  # documents, each once
    best = retriever.best_passages["q1"]["recipe"]
    assert passage_number(best) > 0

    code, out, _ = run_cli(["search", str(chunked), QUERY, "-k", "3", "--json"], capsys)
    top = json.loads(out)["hits"][0]
    assert top["doc_id"] == "recipe" and top["passage"] == best and FACT in top["text"]
    code, out, _ = run_cli(["search", str(chunked), QUERY, "-k", "3", "--passages", "--json"], capsys)
    assert json.loads(out)["hits"][0]["doc_id"] == best

    from densekit.integrations.langchain import DensekitRetriever

    found = DensekitRetriever(index_path=str(chunked), k=2).invoke(QUERY)  # documents, quoting their best passage
    assert found[0].id == "recipe" and FACT in found[0].page_content and found[0].metadata["passage_id"] == best
    assert len(found[0].page_content) < len(_filler(30))

    code, out, _ = run_cli(["eval", str(long_fact_data), "--index", str(chunked), "--json"], capsys)
    assert code == 0 and json.loads(out)["metrics"]["ndcg@10"] == pytest.approx(1.0)
    code, _, err = run_cli(["eval", str(long_fact_data), "--index", str(whole), "--aggregate", "maxp"], capsys)
    assert code == 2 and "index of passages" in err


def test_update_and_remove_keep_passages_in_step(long_fact_data, minilm_folder, tmp_path, capsys) -> None:
    out = tmp_path / "chunked.idx"
    args = ["index", "build", str(long_fact_data), "-m", str(minilm_folder), "-o", str(out), "--chunk-size", "64"]
    assert run_cli(args, capsys)[0] == 0
    before = open_index(out).passages.index.ids
    recipe_passages = [p for p in before if parent_id(p) == "recipe"]
    assert len(recipe_passages) > 3

    corpus = tmp_path / "new.jsonl"
    corpus.write_text(json.dumps({"_id": "recipe", "title": "Short now", "text": FACT}) + "\n", encoding="utf-8")
    code, _, err = run_cli(["index", "update", str(out), str(corpus)], capsys)
    assert code == 0, err
    after = open_index(out)
    assert [p for p in after.passages.index.ids if parent_id(p) == "recipe"] == ["recipe#0"]
    assert after.search({"q1": QUERY}, 1)["q1"][0][0] == "recipe"

    code, _, err = run_cli(["index", "remove", str(out), "recipe"], capsys)
    assert code == 0, err
    assert not [p for p in open_index(out).passages.index.ids if parent_id(p) == "recipe"]
