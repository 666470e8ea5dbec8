"""DensekitLlamaIndexRetriever in a real LlamaIndex pipeline: a RetrieverQueryEngine with LlamaIndex's
MockLLM (it echoes the prompt) over a saved SciFact-subset index built by the CLI (tiny random BERT);
source nodes, scores and order equal densekit's own search; filters (densekit dicts and LlamaIndex
MetadataFilters), score threshold, native async, BM25 + dense hybrid, the missing-extra error."""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from densekit.errors import DensekitError
from densekit.index.docstore import DocStore, StoredDocument, attach_documents
from densekit.integrations.common import open_source
from densekit.integrations.llamaindex import DensekitLlamaIndexRetriever
from densekit.retriever.bm25 import BM25Retriever
from densekit.retriever.compose import open_index
from densekit.retriever.dense import DenseRetriever
from densekit.retriever.hybrid import HybridRetriever

QUERY = "Vitamin D deficiency and the risk of multiple sclerosis"


def build_rag_index(scifact_small: Path, tiny_model: Path, out: Path) -> Path:
    """`densekit index build` over the SciFact subset, then texts re-attached with metadata to filter
    on: `parity` (even/odd position) and `position`."""
    args = ["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(out), "--quiet"]
    assert run_cli(args)[0] == 0
    store = DocStore.open(out)
    documents = [
        StoredDocument(d.id, d.title, d.text, {"parity": "even" if i % 2 == 0 else "odd", "position": i})
        for i, d in enumerate(store)
    ]
    attach_documents(out, documents)
    return out


@pytest.fixture(scope="module")
def index(scifact_small: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rag_index(scifact_small, tiny_model, tmp_path_factory.mktemp("llamaindex") / "scifact.idx")


@pytest.fixture(scope="module")
def dense(index: Path) -> DenseRetriever:
    return DenseRetriever.load(index, device="cpu")


@pytest.fixture(scope="module")
def store(index: Path) -> DocStore:
    return DocStore.open(index)


def densekit_hits(retriever, k: int) -> list[tuple[str, float]]:
    return [(doc_id, float(score)) for doc_id, score in retriever.search({"q": QUERY}, k)["q"]]


def ids_scores(nodes: list[NodeWithScore]) -> list[tuple[str, float]]:
    return [(n.node.node_id, n.score) for n in nodes]


def test_query_engine_sources_are_densekit_top_hits(index: Path, dense: DenseRetriever, store: DocStore) -> None:
    retriever = DensekitLlamaIndexRetriever(index, k=5, device="cpu")
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query(QUERY)
    assert ids_scores(response.source_nodes) == densekit_hits(dense, 5)
    for hit in response.source_nodes:
        assert isinstance(hit.node, TextNode)
        stored = store.get(hit.node.node_id)
        assert hit.node.text == stored.content
        assert hit.node.metadata["title"] == stored.title
        assert hit.node.metadata["doc_id"] == stored.id
        assert hit.node.metadata["parity"] == stored.metadata["parity"]
        assert hit.node.metadata["index"] == "scifact.idx"
    # MockLLM echoes its prompt: the retrieved texts reached the LLM, with user metadata but not doc_id/index
    top = response.source_nodes[0].node
    assert top.text[:200] in str(response)
    assert f"parity: {top.metadata['parity']}" in str(response)
    assert f"doc_id: {top.node_id}" not in str(response)


def test_async_query_engine_and_aretrieve_give_the_same_nodes(index: Path, dense: DenseRetriever) -> None:
    retriever = DensekitLlamaIndexRetriever(index, k=3, device="cpu")
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())

    async def both():
        return await asyncio.gather(engine.aquery(QUERY), retriever.aretrieve(QUERY))

    response, nodes = asyncio.run(both())
    expected = densekit_hits(dense, 3)
    assert ids_scores(response.source_nodes) == expected
    assert ids_scores(nodes) == expected


def test_dict_and_metadata_filters_keep_only_matching_documents(index: Path, dense: DenseRetriever, store) -> None:
    even = [(d, s) for d, s in densekit_hits(dense, len(store)) if store.get(d).metadata["parity"] == "even"][:4]
    retriever = DensekitLlamaIndexRetriever(index, k=4, filters={"parity": "even"}, device="cpu")
    assert ids_scores(retriever.retrieve(QUERY)) == even
    llama_eq = MetadataFilters(filters=[MetadataFilter(key="parity", value="even")])
    llama_in = MetadataFilters(filters=[MetadataFilter(key="parity", value=["even"], operator=FilterOperator.IN)])
    for filters in (llama_eq, llama_in):
        assert ids_scores(retriever.search(QUERY, filters=filters)) == even
    # nested, OR and a comparison: odd documents, or position < 10
    nested = MetadataFilters(
        filters=[
            MetadataFilter(key="parity", value="odd"),
            MetadataFilters(filters=[MetadataFilter(key="position", value=10, operator=FilterOperator.LT)]),
        ],
        condition=FilterCondition.OR,
    )
    for node in retriever.search(QUERY, k=8, filters=nested):
        assert node.node.metadata["parity"] == "odd" or node.node.metadata["position"] < 10


def test_bad_filters_and_options_are_clear_errors(index: Path) -> None:
    retriever = DensekitLlamaIndexRetriever(index, k=2, device="cpu")
    wrong_type = MetadataFilters(filters=[MetadataFilter(key="parity", value=3, operator=FilterOperator.GT)])
    with pytest.raises(DensekitError, match="metadata filter 'parity' > 3 cannot be applied"):
        retriever.search(QUERY, filters=wrong_type)
    with pytest.raises(DensekitError, match="filters must be"):
        DensekitLlamaIndexRetriever(index, filters=["parity"])
    with pytest.raises(DensekitError, match="k must be a positive integer"):
        DensekitLlamaIndexRetriever(index, k=0)
    with pytest.raises(DensekitError, match="index_path"):
        DensekitLlamaIndexRetriever()


def test_score_threshold_drops_lower_hits(index: Path, dense: DenseRetriever) -> None:
    expected = densekit_hits(dense, 5)
    retriever = DensekitLlamaIndexRetriever(index, k=5, score_threshold=expected[2][1], device="cpu")
    assert ids_scores(retriever.retrieve(QUERY)) == expected[:3]


def test_live_retriever_and_bm25_hybrid(
    index: Path, dense: DenseRetriever, store: DocStore, scifact_small: Path, tmp_path: Path
) -> None:
    live = DensekitLlamaIndexRetriever(retriever=dense, docstore=store, k=3)
    assert ids_scores(live.retrieve(QUERY)) == densekit_hits(dense, 3)
    assert live.retrieve(QUERY)[0].node.metadata["index"] == "memory"

    bm25 = tmp_path / "bm25.idx"
    args = ["index", "build", str(scifact_small), "--bm25", "--backend", "bm25s", "--out", str(bm25), "--quiet"]
    assert run_cli(args)[0] == 0
    hybrid = DensekitLlamaIndexRetriever([bm25, index], k=4, fusion="rrf", depth=50, device="cpu")
    fused = HybridRetriever([BM25Retriever.load(bm25), dense], fusion="rrf", depth=50)
    assert ids_scores(hybrid.retrieve(QUERY)) == densekit_hits(fused, 4)
    assert hybrid.retrieve(QUERY)[0].node.metadata["index"] == "bm25.idx+scifact.idx"
    assert open_source(bm25, corpus=scifact_small).name == "bm25.idx"  # texts from the BEIR folder


def test_passage_index_gives_documents_with_their_best_passage(
    scifact_small: Path, tiny_model: Path, index: Path, tmp_path: Path
) -> None:
    """An index of passages (first 40 SciFact-subset documents, 64-token passages): documents ranked
    by MaxP as densekit's PassageRetriever ranks them, each with its best passage as text; or passages."""
    folder = tmp_path / "forty"
    folder.mkdir()
    lines = (scifact_small / "corpus.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "corpus.jsonl").write_text("".join(lines[:40]), encoding="utf-8")
    (folder / "queries.jsonl").write_text('{"_id": "q", "text": "unused"}\n', encoding="utf-8")
    out = tmp_path / "passages.idx"
    args = ["index", "build", str(folder), "--model", str(tiny_model), "--out", str(out), "--quiet"]
    assert run_cli([*args, "--chunk-size", "64", "--chunk-overlap", "16"])[0] == 0
    backend = open_index(out, device="cpu")
    expected = densekit_hits(backend, 4)
    best = backend.best_passages["q"]
    store = DocStore.open(out)
    nodes = DensekitLlamaIndexRetriever(out, k=4, device="cpu").retrieve(QUERY)
    assert ids_scores(nodes) == expected
    for hit in nodes:
        passage = store.get(best[hit.node.node_id])
        assert hit.node.text == passage.content
        assert hit.node.metadata["passage_id"] == passage.id
        assert hit.node.metadata["parent_id"] == hit.node.node_id
    passages = DensekitLlamaIndexRetriever(out, k=4, passages=True, device="cpu").retrieve(QUERY)
    assert ids_scores(passages) == [(p, float(s)) for p, s in backend.search_passages({"q": QUERY}, 4)["q"]]
    with pytest.raises(DensekitError, match="passages=True needs an index of passages"):
        DensekitLlamaIndexRetriever(index, passages=True, device="cpu").retrieve(QUERY)


def page_example(test: str) -> str:
    """The Python block of docs/rag.md marked as tested by `test` of this file."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "rag.md").read_text(encoding="utf-8")
    marker = page.index(f"tested-by: tests/test_llamaindex.py::{test} -->")
    start = page.index("```python\n", marker) + len("```python\n")
    return page[start : page.index("```\n", start)]


def test_the_rag_page_example_runs(
    index: Path, dense: DenseRetriever, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """docs/rag.md's llamaindex example runs as it stands and prints densekit's top 3 with their scores."""
    (tmp_path / "scifact.idx").symlink_to(index)
    monkeypatch.chdir(tmp_path)
    exec(compile(page_example("test_the_rag_page_example_runs"), "docs/rag.md", "exec"), {"__name__": "rag_page"})
    printed = capsys.readouterr().out.splitlines()
    expected = densekit_hits(dense, 3)
    assert [line.split()[0] for line in printed[:3]] == [doc_id for doc_id, _ in expected]
    assert [float(line.split()[1]) for line in printed[:3]] == [round(score, 4) for _, score in expected]
    assert DocStore.open(index).get(expected[0][0]).content[:60] in "\n".join(printed[3:])  # MockLLM's echo


def test_without_llama_index_importing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_index.core.callbacks", None)
    monkeypatch.delitem(sys.modules, "densekit.integrations.llamaindex")
    with pytest.raises(DensekitError, match=r"pip install 'densekit\[llamaindex\]'"):
        importlib.import_module("densekit.integrations.llamaindex")
