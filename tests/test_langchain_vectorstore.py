"""DensekitVectorStore and DensekitEmbeddings: langchain-tests' standard vector-store and embeddings suites,
then saving and reopening, filters, MMR, an index built by the CLI, BM25 and hybrid stores, model checks
and progress (real FAISS; the tiny random BERT, LangChain's fake embeddings and a SciFact subset)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, VectorStoreIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from densekit.data import load_dataset
from densekit.errors import DensekitError, IntegrityError
from densekit.index.docstore import attach_documents
from densekit.integrations.langchain import DensekitEmbeddings, DensekitRetriever, DensekitVectorStore
from densekit.progress import interactive
from densekit.retriever.dense import DenseRetriever
from densekit.retriever.encoder import Encoder

QUERY = "Vitamin D deficiency and the risk of multiple sclerosis"
ASYNC_MARKS = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .*is marked with '@pytest.mark.asyncio'"),
]


@pytest.fixture(scope="session")
def tiny_embeddings(tiny_model: Path) -> DensekitEmbeddings:
    return DensekitEmbeddings(str(tiny_model), device="cpu")


@pytest.fixture(scope="session")
def scifact_docs(scifact_small: Path) -> list[Document]:
    corpus = load_dataset(scifact_small).corpus
    return [
        Document(id=i, page_content=f"{t} {b}".strip(), metadata={"parity": ("even", "odd")[n % 2], "n": n})
        for n, (i, t, b) in enumerate(zip(corpus.ids, corpus.titles, corpus.body, strict=True))
    ]


@pytest.fixture(scope="session")
def tiny_store(tiny_embeddings: DensekitEmbeddings, scifact_docs: list[Document]) -> DensekitVectorStore:
    """The SciFact subset in an in-memory store (tiny BERT); shared, do not change it."""
    return DensekitVectorStore.from_documents(scifact_docs, tiny_embeddings)


# ---- the standard langchain-tests suites


class TestVectorStoreWithFakeEmbeddings(VectorStoreIntegrationTests):
    """The standard suite over an empty in-memory store with LangChain's fake embeddings (any
    `Embeddings` must work: their vectors are normalised into the inner-product FAISS index)."""

    pytestmark = ASYNC_MARKS

    @pytest.fixture
    def vectorstore(self) -> DensekitVectorStore:
        return DensekitVectorStore(self.get_embeddings())


class TestVectorStoreWithDensekitEmbeddings(VectorStoreIntegrationTests):
    """The same suite with a densekit model (the tiny BERT) embedding documents and queries."""

    pytestmark = ASYNC_MARKS

    @pytest.fixture
    def vectorstore(self, tiny_embeddings: DensekitEmbeddings) -> DensekitVectorStore:
        return DensekitVectorStore(tiny_embeddings)


class TestEmbeddingsUnit(EmbeddingsUnitTests):
    @pytest.fixture(autouse=True)
    def _model(self, tiny_model: Path) -> None:
        self.model_folder = tiny_model

    @property
    def embeddings_class(self) -> type[DensekitEmbeddings]:
        return DensekitEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": str(self.model_folder), "device": "cpu"}


class TestEmbeddingsIntegration(EmbeddingsIntegrationTests):
    """langchain-tests' embeddings integration suite (sync and async); offline with the tiny BERT."""

    pytestmark = ASYNC_MARKS

    @pytest.fixture(autouse=True)
    def _model(self, tiny_model: Path) -> None:
        self.model_folder = tiny_model

    @property
    def embeddings_class(self) -> type[DensekitEmbeddings]:
        return DensekitEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": str(self.model_folder), "device": "cpu"}


# ---- embeddings


def test_embeddings_use_the_models_prompts_and_normalisation(tiny_model: Path) -> None:
    options = {"query_prompt": "query: ", "document_prompt": "passage: "}
    embeddings = DensekitEmbeddings(str(tiny_model), device="cpu", **options)
    encoder = Encoder(tiny_model, device="cpu", **options)
    query = np.array(embeddings.embed_query("scurvy"))
    assert query == pytest.approx(encoder.encode_queries(["scurvy"], show_progress=False)[0], abs=1e-6)
    assert np.linalg.norm(query) == pytest.approx(1.0, abs=1e-5)
    docs = np.array(embeddings.embed_documents(["scurvy", "vitamin C"]))
    assert docs == pytest.approx(encoder.encode_documents(["scurvy", "vitamin C"], show_progress=False), abs=1e-6)
    assert not np.allclose(docs[0], query)  # the prompts differ, so do the vectors
    assert DensekitEmbeddings(encoder).embed_query("scurvy") == pytest.approx(query.tolist(), abs=1e-6)
    assert embeddings.embed_documents([]) == []
    with pytest.raises(DensekitError, match="not to an Encoder"):
        DensekitEmbeddings(encoder, device="cpu")


# ---- searching, filters, MMR


def test_filtered_search_returns_only_matching_documents(tiny_store: DensekitVectorStore) -> None:
    unfiltered = tiny_store.similarity_search(QUERY, k=60)
    for condition in ({"parity": "odd"}, {"parity": ["odd"]}, lambda m: m["parity"] == "odd"):
        found = tiny_store.similarity_search(QUERY, k=5, filter=condition)
        assert len(found) == 5 and all(d.metadata["parity"] == "odd" for d in found)
        assert [d.id for d in found] == [d.id for d in unfiltered if d.metadata["parity"] == "odd"][:5]
    rare = tiny_store.similarity_search(QUERY, k=3, filter={"n": [5, 150]})  # fetches grow until found
    assert sorted(d.metadata["n"] for d in rare) == [5, 150]
    assert tiny_store.similarity_search(QUERY, filter={"parity": "none"}) == []
    vector = tiny_store.embeddings.embed_query(QUERY)
    by_vector = tiny_store.similarity_search_by_vector(vector, k=5, filter={"parity": "odd"})
    assert [d.id for d in by_vector] == [d.id for d in found]


class TableEmbeddings(Embeddings):
    """Fixed vectors per text, to construct an MMR example whose answer is known."""

    table = {
        "query": [1.0, 0.0, 0.0],
        "sun a": [0.95, 0.31, 0.0],
        "sun b": [0.94, 0.34, 0.0],  # almost the same as "sun a"
        "moon": [0.8, -0.2, 0.57],  # less similar to the query, but different from both suns
    }

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[text]


def test_mmr_prefers_a_diverse_second_document() -> None:
    store = DensekitVectorStore.from_texts(["sun a", "sun b", "moon"], TableEmbeddings(), ids=["a", "b", "m"])
    assert [d.id for d in store.similarity_search("query", k=2)] == ["a", "b"]
    assert [d.id for d in store.max_marginal_relevance_search("query", k=2, fetch_k=3, lambda_mult=0.5)] == ["a", "m"]
    assert [d.id for d in store.max_marginal_relevance_search("query", k=2, fetch_k=3, lambda_mult=1.0)] == ["a", "b"]
    vector = TableEmbeddings.table["query"]
    assert [d.id for d in store.max_marginal_relevance_search_by_vector(vector, k=2, fetch_k=3)] == ["a", "m"]
    retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 3})
    assert [d.id for d in retriever.invoke("query")] == ["a", "m"]
    assert [d.id for d in store.max_marginal_relevance_search("query", k=2, filter={"x": 1})] == []


def test_concurrent_async_adds_searches_and_deletes_stay_consistent() -> None:
    """Writers and readers on the default executor's threads at once: every search sees a consistent
    index (no error, no deleted document), and the end state is exactly what was added minus deleted."""
    import asyncio

    store = DensekitVectorStore(DeterministicFakeEmbedding(size=8))

    async def main() -> None:
        writes = [store.aadd_texts([f"text {i}", f"other {i}"], ids=[f"t{i}", f"o{i}"]) for i in range(20)]
        await asyncio.gather(*writes, *(store.asimilarity_search(f"text {i}", k=3) for i in range(20)))
        deletes = [store.adelete([f"o{i}"]) for i in range(20)]
        await asyncio.gather(*deletes, *(store.asimilarity_search(f"other {i}", k=2) for i in range(20)))
        found = await asyncio.gather(*(store.asimilarity_search(f"text {i}", k=1) for i in range(20)))
        assert [docs[0].id for docs in found] == [f"t{i}" for i in range(20)]

    asyncio.run(main())
    assert len(store) == 20 and store.get_by_ids(["o3"]) == []


# ---- saving and reopening


def test_save_and_load_give_the_same_hits_and_scores(
    tiny_store: DensekitVectorStore, tiny_embeddings: DensekitEmbeddings, tmp_path: Path
) -> None:
    path = tiny_store.save(tmp_path / "store.idx")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] == tiny_embeddings.encoder.fingerprint()
    assert manifest["documents"]["count"] == len(tiny_store)
    expected = tiny_store.similarity_search_with_score(QUERY, k=10)
    for reopened in (DensekitVectorStore.load(path), DensekitVectorStore.load(path, tiny_embeddings)):
        got = reopened.similarity_search_with_score(QUERY, k=10)
        assert [d for d, _ in got] == [d for d, _ in expected]
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-6)
    # The saved store is a densekit index: the retriever faces open it as it is.
    run = DenseRetriever.load(path).search({"q": QUERY}, 10)["q"]
    assert [i for i, _ in run] == [d.id for d, _ in expected]
    assert DensekitRetriever(index_path=str(path), k=3).invoke(QUERY)[0].id == expected[0][0].id


def test_a_loaded_store_changes_and_saves_back(
    tiny_store: DensekitVectorStore, scifact_docs: list[Document], tmp_path: Path
) -> None:
    path = tiny_store.save(tmp_path / "edit.idx")
    store = DensekitVectorStore.load(path)
    gone = scifact_docs[0].id
    store.delete([gone])
    store.add_documents([Document(page_content="scurvy is caused by a lack of vitamin C", metadata={"new": True})])
    store.save()  # back to where it came from
    reopened = DensekitVectorStore.load(path)
    assert len(reopened) == len(scifact_docs) and reopened.get_by_ids([gone]) == []
    top = reopened.similarity_search("scurvy is caused by a lack of vitamin C", k=1)[0]
    assert top.metadata == {"new": True}


def test_other_embeddings_are_refused(tiny_model: Path, tiny_store: DensekitVectorStore, tmp_path: Path) -> None:
    path = tiny_store.save(tmp_path / "tiny.idx")
    other = DensekitEmbeddings(str(tiny_model), device="cpu", query_prompt="query: ")  # another fingerprint
    with pytest.raises(IntegrityError, match="not the one that built this index"):
        DensekitVectorStore.load(path, other)
    with pytest.raises(DensekitError, match="made by the densekit model"):
        DensekitVectorStore.load(path, DeterministicFakeEmbedding(size=32))
    fake_embeddings = DeterministicFakeEmbedding(size=6)
    fake = DensekitVectorStore.from_texts(["foo", "bar"], fake_embeddings, path=tmp_path / "fake.idx")
    recorded = json.loads((tmp_path / "fake.idx" / "manifest.json").read_text())["model"]
    assert recorded["embeddings"].endswith("DeterministicFakeEmbedding") and recorded["normalize"] is True
    with pytest.raises(DensekitError, match="pass the same embeddings"):
        DensekitVectorStore.load(tmp_path / "fake.idx")
    with pytest.raises(IntegrityError, match="not by the given"):
        DensekitVectorStore.load(tmp_path / "fake.idx", TableEmbeddings())
    with pytest.raises(DensekitError, match="names no model"):
        DenseRetriever.load(tmp_path / "fake.idx")
    reopened = DensekitVectorStore.load(tmp_path / "fake.idx", DeterministicFakeEmbedding(size=6))
    assert reopened.similarity_search("bar", k=1)[0].page_content == "bar"
    assert fake.similarity_search_with_score("bar", k=2) == reopened.similarity_search_with_score("bar", k=2)


def test_cli_index_gives_the_dense_retrievers_hits_and_scores(
    scifact_small: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "cli.idx"
    code, _, err = run_cli(["index", "build", str(scifact_small), "-m", str(tiny_model), "-o", str(path)], capsys)
    assert code == 0, err
    store = DensekitVectorStore.load(path)
    dense = DenseRetriever.load(path)
    corpus = load_dataset(scifact_small).corpus
    for query in (QUERY, "scurvy and vitamin C"):
        expected = dense.search({"q": query}, 10)["q"]
        got = store.similarity_search_with_score(query, k=10)
        assert [d.id for d, _ in got] == [i for i, _ in expected]
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-6)
    top = got[0][0]
    assert top.metadata["title"] == corpus.document(top.id)["title"]
    assert top.page_content.startswith(corpus.document(top.id)["title"])
    relevance = store.similarity_search_with_relevance_scores(query, k=3)
    assert all(0.0 <= r <= 1.0 for _, r in relevance)


def test_an_index_of_passages_gives_passages_and_is_not_edited_here(
    scifact_small: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "passages.idx"
    args = ["index", "build", str(scifact_small), "-m", str(tiny_model), "--chunk-size", "64", "--chunk-overlap", "16"]
    code, _, err = run_cli([*args, "-o", str(path), "--quiet"], capsys)
    assert code == 0, err
    store = DensekitVectorStore.load(path)
    found = store.similarity_search(QUERY, k=5, filter=lambda m: m["passage"] > 0)
    assert len(found) == 5 and all(d.id.startswith(d.metadata["parent_id"]) for d in found)
    assert all(d.metadata["passage"] > 0 and d.metadata["end"] > d.metadata["start"] for d in found)
    for change in (lambda s: s.add_texts(["x"]), lambda s: s.delete([found[0].id]), lambda s: s.save()):
        with pytest.raises(DensekitError, match="index of passages"):
            change(store)


# ---- BM25 and hybrid stores


@pytest.fixture(scope="module")
def bm25_index(scifact_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from densekit.retriever.bm25 import BM25Retriever

    corpus = load_dataset(scifact_small).corpus
    path = tmp_path_factory.mktemp("vs") / "bm25.idx"
    BM25Retriever.build(corpus, backend="bm25s").save(path)
    attach_documents(path, corpus, index_ids=corpus.ids)
    return path


def test_bm25_and_hybrid_stores_search_by_text_and_refuse_changes(
    bm25_index: Path, tiny_store: DensekitVectorStore, tmp_path: Path
) -> None:
    from densekit.retriever.bm25 import BM25Retriever

    store = DensekitVectorStore.load(bm25_index)
    expected = BM25Retriever.load(bm25_index).search({"q": QUERY}, 4)["q"]
    got = store.similarity_search_with_score(QUERY, k=4)
    assert [(d.id, s) for d, s in got] == [(i, pytest.approx(s)) for i, s in expected]
    assert store.get_by_ids([expected[0][0], "nope"])[0].id == expected[0][0]
    for change in (
        lambda s: s.add_texts(["x"]),
        lambda s: s.delete([expected[0][0]]),
        lambda s: s.max_marginal_relevance_search(QUERY),
        lambda s: s.similarity_search_by_vector([0.0] * 32),
        lambda s: s.similarity_search_with_relevance_scores(QUERY),
    ):
        with pytest.raises(DensekitError, match="bm25"):
            change(store)
    dense_path = tiny_store.save(tmp_path / "dense.idx")
    hybrid = DensekitVectorStore.hybrid([bm25_index, dense_path], fusion="rrf", depth=50)
    fused = DensekitRetriever.hybrid([bm25_index, dense_path], fusion="rrf", depth=50, k=5).invoke(QUERY)
    assert [d.id for d in hybrid.similarity_search(QUERY, k=5)] == [d.id for d in fused]
    with pytest.raises(DensekitError, match="hybrid store"):
        hybrid.add_texts(["x"])


def test_milvus_store_searches_like_the_milvus_retriever(
    scifact_small: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from densekit.retriever.compose import open_index

    path = tmp_path / "milvus.idx"
    args = ["index", "build", str(scifact_small), "-m", str(tiny_model), "--backend", "milvus"]
    code, _, err = run_cli([*args, "--uri", str(tmp_path / "lite.db"), "-o", str(path), "--quiet"], capsys)
    assert code == 0, err
    store = DensekitVectorStore.load(path)
    expected = open_index(path).search({"q": QUERY}, 5)["q"]
    got = store.similarity_search_with_score(QUERY, k=5)
    assert [(d.id, s) for d, s in got] == [(i, pytest.approx(s, abs=1e-5)) for i, s in expected]
    with pytest.raises(DensekitError, match="milvus store"):
        store.delete([expected[0][0]])


# ---- progress and bad input


def test_progress_shows_only_when_interactive(
    tiny_embeddings: DensekitEmbeddings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import densekit.progress

    monkeypatch.setattr(densekit.progress, "_quiet", False)  # the test session silences progress
    docs = [Document(page_content=f"text {i}") for i in range(3)]
    DensekitVectorStore.from_documents(docs, tiny_embeddings)  # stderr is captured, not a terminal
    assert capsys.readouterr().err == ""
    DensekitVectorStore.from_documents(docs, DeterministicFakeEmbedding(size=4), show_progress=True)
    assert "embedding documents" in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert interactive() is True and interactive(False) is False
    densekit.progress.set_quiet(True)
    assert interactive() is False and interactive(True) is True


def test_bad_input_is_a_clear_error(tiny_embeddings: DensekitEmbeddings, tmp_path: Path) -> None:
    store = DensekitVectorStore(tiny_embeddings)
    with pytest.raises(DensekitError, match="JSON-serialisable"):
        store.add_texts(["x"], [{"f": object()}])
    with pytest.raises(DensekitError, match="unique"):
        store.add_texts(["x", "y"], ids=["a", "a"])
    with pytest.raises(DensekitError, match="2 ids for 1 documents"):
        store.add_texts(["x"], ids=["a", "b"])
    with pytest.raises(DensekitError, match="k must be a positive integer"):
        store.similarity_search("x", k=0)
    with pytest.raises(DensekitError, match="needs ids"):
        store.delete()
    with pytest.raises(DensekitError, match="empty"):
        store.save(tmp_path / "empty.idx")
    with pytest.raises(DensekitError, match="needs embedding"):
        DensekitVectorStore()
    with pytest.raises(DensekitError, match="no such index directory"):
        DensekitVectorStore.load(tmp_path / "missing.idx")


# ---- the documentation's example


def test_the_rag_page_example_runs(
    minilm_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The Python block of docs/rag.md that names this test runs as it stands (real MiniLM)."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "rag.md").read_text(encoding="utf-8")
    marker = page.index("tested-by: tests/test_langchain_vectorstore.py::test_the_rag_page_example_runs -->")
    start = page.index("```python\n", marker) + len("```python\n")
    code = page[start : page.index("```\n", start)]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/rag.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[(Document(id='c'")  # scurvy is answered by the scurvy document
    assert "id='b'" not in printed[1]  # the filter keeps the faq documents only
    assert printed[-1].startswith("[Document(id='c'")
    store = namespace["store"]
    assert store.path == Path("vitamins.idx") and len(store) == 3 and store.get_by_ids(["b"]) == []
