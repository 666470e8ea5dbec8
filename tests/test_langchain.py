"""DensekitRetriever: the langchain-tests standard retriever suite, documents, thresholds, filters,
native async, saving, and a fresh process reloading a saved index (real FAISS, real models, SciFact)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda
from langchain_tests.integration_tests import RetrieversIntegrationTests
from pydantic import ValidationError

from densekit.data import Run, join_title_text, load_dataset
from densekit.errors import DensekitError, IntegrityError
from densekit.index.docstore import DOCS_FILE, DocStore, attach_documents
from densekit.integrations.langchain import DensekitRetriever, documents_to_json, matches
from densekit.retriever.dense import DenseRetriever
from densekit.retriever.encoder import Encoder

QUERY = "Vitamin D deficiency and the risk of multiple sclerosis"


def scifact_documents(folder: Path) -> list[Document]:
    """SciFact subset documents as LangChain documents, with metadata to filter on."""
    corpus = load_dataset(folder).corpus
    return [
        Document(
            id=doc_id,
            page_content=text,
            metadata={"title": title, "parity": "even" if i % 2 == 0 else "odd", "position": i},
        )
        for i, (doc_id, title, text) in enumerate(zip(corpus.ids, corpus.titles, corpus.body, strict=True))
    ]


@pytest.fixture(scope="session")
def documents(scifact_small: Path) -> list[Document]:
    return scifact_documents(scifact_small)


@pytest.fixture(scope="session")
def tiny_index(tiny_model: Path, documents: list[Document], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved index of the SciFact subset encoded with the tiny random BERT (fast)."""
    path = tmp_path_factory.mktemp("lc") / "tiny.idx"
    DensekitRetriever.from_documents(documents, model=str(tiny_model), path=path)
    return path


@pytest.fixture(scope="session")
def minilm_retriever(
    minilm: Encoder, documents: list[Document], tmp_path_factory: pytest.TempPathFactory
) -> DensekitRetriever:
    """The SciFact subset encoded with the real all-MiniLM-L6-v2, saved to disk."""
    path = tmp_path_factory.mktemp("lc") / "minilm.idx"
    return DensekitRetriever.from_documents(documents, model=minilm, path=path, k=5)


# ---- the standard langchain-tests retriever suite


class TestDensekitRetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests' RetrieversIntegrationTests (the package's only retriever suite) over a saved
    dense index reopened through the constructor, as a user would. The asyncio mark lets
    pytest-asyncio (a langchain-tests dependency) run the suite's async test; the class-wide mark
    also lands on the sync tests, where pytest-asyncio only warns, so that warning is silenced."""

    pytestmark = [
        pytest.mark.asyncio,
        pytest.mark.filterwarnings("ignore:The test <Function .*is marked with '@pytest.mark.asyncio'"),
    ]

    @pytest.fixture(autouse=True)
    def _index(self, tiny_index: Path) -> None:
        self.index_path = tiny_index

    @property
    def retriever_constructor(self) -> type[DensekitRetriever]:
        return DensekitRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"index_path": str(self.index_path), "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


# ---- documents and ranking


def test_documents_carry_id_content_and_metadata(
    minilm_retriever: DensekitRetriever, documents: list[Document]
) -> None:
    by_id = {d.id: d for d in documents}
    found = minilm_retriever.invoke(QUERY)
    assert len(found) == 5
    assert [d.metadata["rank"] for d in found] == [1, 2, 3, 4, 5]
    scores = [d.metadata["score"] for d in found]
    assert scores == sorted(scores, reverse=True)
    for doc in found:
        source = by_id[doc.id]
        assert doc.page_content == source.page_content
        assert doc.metadata["doc_id"] == doc.id
        assert doc.metadata["title"] == source.metadata["title"]
        assert doc.metadata["index"] == "minilm.idx"
        assert doc.metadata["parity"] == source.metadata["parity"]


def test_minilm_finds_the_judged_scifact_documents(minilm_retriever: DensekitRetriever, scifact_small: Path) -> None:
    """Real retrieval, not just plumbing: most judged documents come back in the top 10."""
    ds = load_dataset(scifact_small, split="test")
    found = 0
    for query_id, text in ds.queries.items():
        ids = {d.id for d in minilm_retriever.invoke(text, k=10)}
        found += any(doc_id in ids for doc_id in ds.qrels[query_id])
    assert found >= 0.8 * len(ds.queries)


def test_page_content_joins_title_and_text_for_a_beir_corpus(
    tiny_model: Path, scifact_small: Path, tmp_path: Path
) -> None:
    """An index saved without texts (`--no-store-texts`); a BEIR corpus supplies them."""
    corpus = load_dataset(scifact_small).corpus
    encoder = Encoder(tiny_model, device="cpu")
    DenseRetriever.build(encoder, corpus, show_progress=False).save(tmp_path / "idx", store_texts=False)
    with pytest.raises(DensekitError, match="no document texts"):
        DensekitRetriever(index_path=str(tmp_path / "idx"))
    retriever = DensekitRetriever(index_path=str(tmp_path / "idx"), corpus=str(scifact_small), k=3)
    for doc in retriever.invoke(QUERY):
        stored = corpus.document(doc.id)
        assert doc.page_content == join_title_text(stored["title"], stored["text"])
        assert doc.metadata["title"] == stored["title"]

    attach_documents(tmp_path / "idx", corpus, index_ids=corpus.ids)
    self_contained = DensekitRetriever(index_path=str(tmp_path / "idx"), k=3)
    assert documents_to_json(self_contained.invoke(QUERY)) == documents_to_json(retriever.invoke(QUERY))


def test_k_in_invoke_overrides_the_default(minilm_retriever: DensekitRetriever) -> None:
    top10 = minilm_retriever.invoke(QUERY, k=10)
    assert len(top10) == 10
    assert [d.id for d in minilm_retriever.invoke(QUERY)] == [d.id for d in top10[:5]]


def test_score_threshold_drops_low_scores(minilm_retriever: DensekitRetriever) -> None:
    top = minilm_retriever.invoke(QUERY, k=20)
    cut = top[2].metadata["score"]
    kept = minilm_retriever.invoke(QUERY, k=20, score_threshold=cut)
    assert kept and all(d.metadata["score"] >= cut for d in kept)
    assert [d.id for d in kept] == [d.id for d in top if d.metadata["score"] >= cut]
    assert minilm_retriever.invoke(QUERY, score_threshold=1.01) == []


def test_metadata_filter_keeps_k_matching_documents(minilm_retriever: DensekitRetriever) -> None:
    unfiltered = minilm_retriever.invoke(QUERY, k=50)
    for condition in ({"parity": "odd"}, {"parity": ["odd"]}, lambda m: m["parity"] == "odd"):
        found = minilm_retriever.invoke(QUERY, k=5, filter=condition)
        assert len(found) == 5 and all(d.metadata["parity"] == "odd" for d in found)
        assert [d.metadata["rank"] for d in found] == [1, 2, 3, 4, 5]
        assert [d.id for d in found] == [d.id for d in unfiltered if d.metadata["parity"] == "odd"][:5]
    # A filter so selective that candidates must be fetched several times over (fetch_k grows).
    rare = minilm_retriever.invoke(QUERY, k=2, filter={"position": [200, 201]})
    assert sorted(d.metadata["position"] for d in rare) == [200, 201]
    assert minilm_retriever.invoke(QUERY, filter={"parity": "none"}) == []


def test_matches_semantics() -> None:
    meta = {"source": "a", "year": 2020}
    assert matches(meta, None) and matches(meta, {"source": "a"}) and matches(meta, {"year": [2019, 2020]})
    assert not matches(meta, {"source": "b"}) and not matches(meta, {"missing": 1})


# ---- async


def test_ainvoke_returns_what_invoke_returns(minilm_retriever: DensekitRetriever) -> None:
    sync = documents_to_json(minilm_retriever.invoke(QUERY, k=4))
    assert documents_to_json(asyncio.run(minilm_retriever.ainvoke(QUERY, k=4))) == sync


class GatedRetriever:
    """A real dense retriever whose search waits until the event loop has run another task."""

    def __init__(self, inner: DenseRetriever) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.release = threading.Event()

    def search(self, queries: dict[str, str], k: int) -> Run:
        self.started.set()
        if not self.release.wait(timeout=30):
            raise RuntimeError("the event loop never ran while the search was in progress")
        return self.inner.search(queries, k)


def test_ainvoke_does_not_block_the_event_loop(minilm_retriever: DensekitRetriever) -> None:
    """If ainvoke ran the search on the loop's thread, `release` could never be set and the search
    would fail; it succeeds only because the loop keeps running other coroutines meanwhile."""
    gated = GatedRetriever(minilm_retriever.retriever)
    retriever = DensekitRetriever(retriever=gated, docstore=minilm_retriever.docstore, k=3)

    async def main() -> list[Document]:
        task = asyncio.create_task(retriever.ainvoke(QUERY))
        while not gated.started.is_set():
            await asyncio.sleep(0.01)
        gated.release.set()
        return await task

    found = asyncio.run(main())
    assert [d.id for d in found] == [d.id for d in minilm_retriever.invoke(QUERY, k=3)]


# ---- composition


def test_retriever_composes_in_a_runnable_chain(minilm_retriever: DensekitRetriever) -> None:
    chain = minilm_retriever | RunnableLambda(lambda docs: [d.id for d in docs])
    assert chain.invoke(QUERY) == [d.id for d in minilm_retriever.invoke(QUERY)]
    assert len(minilm_retriever.batch([QUERY, "scurvy and vitamin C"])) == 2


# ---- saving and reloading


def test_saved_index_reloads_in_a_new_process(minilm_retriever: DensekitRetriever) -> None:
    """Documents in through LangChain, index saved, a fresh Python process loads it and returns the
    same documents (ids, texts, metadata, scores) for the same query."""
    expected = documents_to_json(minilm_retriever.invoke(QUERY))
    script = (
        "import json, sys\n"
        "from densekit.integrations.langchain import DensekitRetriever, documents_to_json\n"
        "r = DensekitRetriever(index_path=sys.argv[1], k=5)\n"
        "print(json.dumps(documents_to_json(r.invoke(sys.argv[2]))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, minilm_retriever.index_path, QUERY],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    reloaded = json.loads(done.stdout)
    assert [d["id"] for d in reloaded] == [d["id"] for d in expected]
    for got, want in zip(reloaded, expected, strict=True):
        assert got["page_content"] == want["page_content"]
        assert got["metadata"]["score"] == pytest.approx(want["metadata"]["score"], abs=1e-5)
        assert {k: v for k, v in got["metadata"].items() if k != "score"} == {
            k: v for k, v in want["metadata"].items() if k != "score"
        }


def test_in_memory_retriever_saves_and_reloads(tiny_model: Path, documents: list[Document], tmp_path: Path) -> None:
    memory = DensekitRetriever.from_documents(documents[:30], model=str(tiny_model), k=3)
    assert memory.index_path is None and memory.invoke(QUERY)[0].metadata["index"] == "memory"
    memory.save(tmp_path / "saved.idx")
    manifest = json.loads((tmp_path / "saved.idx" / "manifest.json").read_text())
    assert DOCS_FILE in manifest["files"] and manifest["documents"]["count"] == 30
    reloaded = DensekitRetriever(index_path=str(tmp_path / "saved.idx"), k=3)
    assert [d.id for d in reloaded.invoke(QUERY)] == [d.id for d in memory.invoke(QUERY)]


def test_documents_without_ids_get_positional_ids(tiny_model: Path) -> None:
    docs = [Document(page_content=t) for t in ("alpha beta", "gamma delta", "epsilon")]
    retriever = DensekitRetriever.from_documents(docs, model=str(tiny_model), k=3)
    assert sorted(d.id for d in retriever.invoke("alpha")) == ["doc-0", "doc-1", "doc-2"]


# ---- BM25 and hybrid indexes


@pytest.fixture(scope="module")
def bm25_index(scifact_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved bm25s index of the SciFact subset, with its texts attached."""
    from densekit.retriever.bm25 import BM25Retriever

    corpus = load_dataset(scifact_small).corpus
    path = tmp_path_factory.mktemp("lc") / "bm25.idx"
    BM25Retriever.build(corpus, backend="bm25s").save(path)
    attach_documents(path, corpus, index_ids=corpus.ids)
    return path


def test_bm25_index_returns_documents_with_bm25_scores(bm25_index: Path, scifact_small: Path) -> None:
    from densekit.retriever.bm25 import BM25Retriever

    retriever = DensekitRetriever(index_path=str(bm25_index), k=4)
    found = retriever.invoke(QUERY)
    expected = BM25Retriever.load(bm25_index).search({"q": QUERY}, 4)["q"]
    assert [(d.id, d.metadata["score"]) for d in found] == [(i, pytest.approx(s)) for i, s in expected]
    corpus = load_dataset(scifact_small).corpus
    assert found[0].page_content == join_title_text(
        corpus.document(found[0].id)["title"], corpus.document(found[0].id)["text"]
    )
    assert found[0].metadata["index"] == "bm25.idx"


def test_hybrid_fuses_bm25_and_dense_indexes(bm25_index: Path, tiny_index: Path) -> None:
    from densekit.retriever.hybrid import reciprocal_rank_fusion

    hybrid = DensekitRetriever.hybrid([bm25_index, tiny_index], fusion="rrf", depth=50, k=5)
    found = hybrid.invoke(QUERY)
    bm25 = DensekitRetriever(index_path=str(bm25_index)).retriever.search({"q": QUERY}, 50)
    dense = DensekitRetriever(index_path=str(tiny_index)).retriever.search({"q": QUERY}, 50)
    fused = reciprocal_rank_fusion([bm25, dense], k=60, weights=[1.0, 1.0], depth=5)["q"]
    assert [d.id for d in found] == [doc_id for doc_id, _ in fused]
    assert found[0].metadata["index"] == "bm25.idx+tiny.idx"
    with pytest.raises(DensekitError, match="BM25 index has no encoder"):
        DensekitRetriever(index_path=str(bm25_index), model="all-MiniLM-L6-v2")


# ---- bad input


def test_bad_construction_is_a_clear_error(tiny_index: Path, tiny_model: Path) -> None:
    with pytest.raises(DensekitError, match="needs index_path"):
        DensekitRetriever()
    with pytest.raises(DensekitError, match="no such index directory"):
        DensekitRetriever(index_path="/nonexistent/index")
    with pytest.raises(DensekitError, match="k must be positive"):
        DensekitRetriever(index_path=str(tiny_index), k=0)
    with pytest.raises(ValidationError, match="extra"):
        DensekitRetriever(index_path=str(tiny_index), top_k=3)
    with pytest.raises(DensekitError, match="Retriever protocol"):
        DensekitRetriever(retriever=object(), docstore=DocStore())
    with pytest.raises(DensekitError, match="k must be a positive integer"):
        DensekitRetriever(index_path=str(tiny_index)).invoke(QUERY, k=-1)
    with pytest.raises(TypeError):
        DensekitRetriever(index_path=str(tiny_index)).invoke(QUERY, top_k=3)
    with pytest.raises(DensekitError, match="JSON-serialisable"):
        DensekitRetriever.from_documents([Document(page_content="x", metadata={"f": object()})], model=str(tiny_model))
    with pytest.raises(DensekitError, match="duplicate document id"):
        twins = [Document(id="a", page_content="x"), Document(id="a", page_content="y")]
        DensekitRetriever.from_documents(twins, model=str(tiny_model))


def test_texts_that_do_not_match_the_index_are_refused(tiny_index: Path, tmp_path: Path, scifact_small: Path) -> None:
    other = tmp_path / "corpus.jsonl"
    other.write_text(json.dumps({"_id": "x1", "title": "", "text": "unrelated"}) + "\n")
    with pytest.raises(DensekitError, match="have no text in the document store"):
        DensekitRetriever(index_path=str(tiny_index), corpus=str(other))


def test_altered_docs_file_is_refused(tiny_index: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy.idx"
    shutil.copytree(tiny_index, copy)
    with open(copy / DOCS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "intruder", "title": "", "text": "x"}) + "\n")
    with pytest.raises(IntegrityError, match="docs.jsonl"):
        DensekitRetriever(index_path=str(copy))


def test_malformed_docs_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / DOCS_FILE
    path.write_text(json.dumps({"_id": "a", "text": "ok"}) + "\n" + '{"_id": "b", "text": 3}\n')
    with pytest.raises(DensekitError, match=r"docs.jsonl:2: \"text\" must be a string"):
        DocStore.read(path)
