"""DensekitHaystackRetriever in a real Haystack pipeline: retriever -> PromptBuilder -> an echo
generator, over a saved SciFact-subset index built by the CLI (tiny random BERT); documents, ids and
scores equal densekit's own search; filters (densekit's flat dict and Haystack's syntax, replace and
merge policies); the pipeline dumped to YAML and loaded back gives the same result; lazy warm-up,
async, errors, the missing-extra error."""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from haystack import Document, Pipeline, component
from haystack.components.builders import PromptBuilder
from haystack.core.errors import DeserializationError

from densekit.errors import DensekitError
from densekit.index.docstore import DocStore, StoredDocument, attach_documents
from densekit.integrations.haystack import DensekitHaystackRetriever
from densekit.retriever.dense import DenseRetriever

QUERY = "Vitamin D deficiency and the risk of multiple sclerosis"
TEMPLATE = "{% for d in documents %}[{{ d.id }}] {{ d.content }}\n{% endfor %}Question: {{ query }}"


@component
class EchoGenerator:
    """A generator that answers with its prompt (stands in for an LLM)."""

    @component.output_types(replies=list[str])
    def run(self, prompt: str) -> dict:
        return {"replies": [prompt]}


@pytest.fixture(scope="module")
def index(scifact_small: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`densekit index build` over the SciFact subset, texts re-attached with a `parity` to filter on."""
    out = tmp_path_factory.mktemp("haystack") / "scifact.idx"
    args = ["index", "build", str(scifact_small), "--model", str(tiny_model), "--out", str(out), "--quiet"]
    assert run_cli(args)[0] == 0
    documents = [
        StoredDocument(d.id, d.title, d.text, {"parity": "even" if i % 2 == 0 else "odd", "position": i})
        for i, d in enumerate(DocStore.open(out))
    ]
    attach_documents(out, documents)
    return out


@pytest.fixture(scope="module")
def dense(index: Path) -> DenseRetriever:
    return DenseRetriever.load(index, device="cpu")


@pytest.fixture(scope="module")
def store(index: Path) -> DocStore:
    return DocStore.open(index)


def densekit_hits(dense: DenseRetriever, k: int) -> list[tuple[str, float]]:
    return [(doc_id, float(score)) for doc_id, score in dense.search({"q": QUERY}, k)["q"]]


def ids_scores(documents: list[Document]) -> list[tuple[str, float]]:
    return [(d.id, d.score) for d in documents]


def rag_pipeline(retriever: DensekitHaystackRetriever) -> Pipeline:
    pipe = Pipeline()
    pipe.add_component("retriever", retriever)
    pipe.add_component("prompt", PromptBuilder(TEMPLATE, required_variables=["documents", "query"]))
    pipe.add_component("llm", EchoGenerator())
    pipe.connect("retriever.documents", "prompt.documents")
    pipe.connect("prompt.prompt", "llm.prompt")
    return pipe


def run_rag(pipe: Pipeline, **retriever_inputs) -> tuple[list[Document], str]:
    out = pipe.run(
        {"retriever": {"query": QUERY, **retriever_inputs}, "prompt": {"query": QUERY}},
        include_outputs_from={"retriever"},
    )
    return out["retriever"]["documents"], out["llm"]["replies"][0]


def test_pipeline_documents_are_densekit_top_hits(index: Path, dense: DenseRetriever, store: DocStore) -> None:
    pipe = rag_pipeline(DensekitHaystackRetriever(str(index), top_k=5, device="cpu"))
    documents, reply = run_rag(pipe)
    assert ids_scores(documents) == densekit_hits(dense, 5)
    for document in documents:
        stored = store.get(document.id)
        assert document.content == stored.content
        assert document.meta["title"] == stored.title
        assert document.meta["doc_id"] == stored.id
        assert document.meta["parity"] == stored.metadata["parity"]
        assert document.meta["index"] == "scifact.idx"
        assert f"[{document.id}] {stored.content}" in reply  # the texts reached the generator, in order
    assert reply.index(documents[0].id) < reply.index(documents[1].id)
    documents, _ = run_rag(pipe, top_k=2)
    assert ids_scores(documents) == densekit_hits(dense, 2)


def test_filters_flat_and_haystack_syntax(index: Path, dense: DenseRetriever, store: DocStore) -> None:
    ranked = densekit_hits(dense, len(store))
    even = [(d, s) for d, s in ranked if store.get(d).metadata["parity"] == "even"][:4]
    retriever = DensekitHaystackRetriever(str(index), top_k=4, device="cpu")
    haystack_filter = {"field": "meta.parity", "operator": "==", "value": "even"}
    for filters in ({"parity": "even"}, {"parity": ["even"]}, haystack_filter):
        documents = retriever.run(QUERY, filters=filters)["documents"]
        assert ids_scores(documents) == even
    # logical syntax on id and meta: even and among the first 100 positions, or one named document
    named = ranked[0][0]
    logical = {
        "operator": "OR",
        "conditions": [
            {
                "operator": "AND",
                "conditions": [haystack_filter, {"field": "meta.position", "operator": "<", "value": 100}],
            },
            {"field": "id", "operator": "==", "value": named},
        ],
    }
    for document in retriever.run(QUERY, top_k=10, filters=logical)["documents"]:
        meta = document.meta
        assert (meta["parity"] == "even" and meta["position"] < 100) or document.id == named


def test_filter_policy_replace_and_merge(index: Path, store: DocStore) -> None:
    odd = {"field": "meta.parity", "operator": "==", "value": "odd"}
    early = {"field": "meta.position", "operator": "<", "value": 50}
    replace = DensekitHaystackRetriever(str(index), top_k=6, filters=odd, device="cpu")
    merge = DensekitHaystackRetriever(str(index), top_k=6, filters=odd, filter_policy="merge", device="cpu")
    assert all(d.meta["parity"] == "odd" for d in replace.run(QUERY)["documents"])
    replaced = replace.run(QUERY, filters=early)["documents"]
    assert all(d.meta["position"] < 50 for d in replaced)
    assert {d.meta["parity"] for d in replaced} == {"odd", "even"}
    merged = merge.run(QUERY, filters=early)["documents"]
    assert merged and all(d.meta["parity"] == "odd" and d.meta["position"] < 50 for d in merged)


def test_pipeline_dumps_and_loads_to_the_same_result(index: Path) -> None:
    pipe = rag_pipeline(DensekitHaystackRetriever(str(index), top_k=3, filters={"parity": "odd"}, device="cpu"))
    documents, reply = run_rag(pipe)
    text = pipe.dumps()
    assert "densekit.integrations.haystack.DensekitHaystackRetriever" in text and str(index) in text
    with pytest.raises(DeserializationError):  # Haystack imports only modules it is told to trust
        Pipeline.loads(text)
    loaded = Pipeline.loads(text, allowed_modules=["densekit.*", EchoGenerator.__module__])
    retriever = loaded.get_component("retriever")
    assert retriever.source is None  # nothing opened until warm-up
    again, reply_again = run_rag(loaded)
    assert ids_scores(again) == ids_scores(documents) and reply_again == reply
    assert all(d.meta["parity"] == "odd" for d in again)
    assert DensekitHaystackRetriever.from_dict(retriever.to_dict()).to_dict() == retriever.to_dict()


def test_warm_up_async_and_errors(index: Path, dense: DenseRetriever, store: DocStore, tmp_path: Path) -> None:
    retriever = DensekitHaystackRetriever(str(index), top_k=3, device="cpu")
    assert retriever.source is None
    retriever.warm_up()
    source = retriever.source
    retriever.warm_up()
    assert retriever.source is source  # warm-up opens once

    async def run_async():
        pipe = Pipeline()  # Haystack 3: one Pipeline, run or run_async
        pipe.add_component("retriever", retriever)
        direct = await retriever.run_async(QUERY)
        return direct, await pipe.run_async({"retriever": {"query": QUERY}})

    direct, piped = asyncio.run(run_async())
    assert ids_scores(direct["documents"]) == ids_scores(piped["retriever"]["documents"]) == densekit_hits(dense, 3)

    live = DensekitHaystackRetriever(retriever=dense, docstore=store, top_k=2)
    assert ids_scores(live.run(QUERY)["documents"]) == densekit_hits(dense, 2)
    with pytest.raises(DensekitError, match="cannot be serialised"):
        live.to_dict()
    with pytest.raises(DensekitError, match="no such index directory"):
        DensekitHaystackRetriever(str(tmp_path / "missing.idx"))
    with pytest.raises(DensekitError, match="filter field 'content'"):
        DensekitHaystackRetriever(str(index), filters={"field": "content", "operator": "==", "value": "x"})
    with pytest.raises(DensekitError, match="a comparison needs"):
        retriever.run(QUERY, filters={"field": "meta.parity", "operator": "~", "value": "x"})
    with pytest.raises(DensekitError, match="top_k must be a positive integer"):
        retriever.run(QUERY, top_k=0)
    with pytest.raises(DensekitError, match="Unknown FilterPolicy"):
        DensekitHaystackRetriever(str(index), filter_policy="union")


def page_example(test: str) -> str:
    """The Python block of docs/rag.md marked as tested by `test` of this file."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "rag.md").read_text(encoding="utf-8")
    marker = page.index(f"tested-by: tests/test_haystack.py::{test} -->")
    start = page.index("```python\n", marker) + len("```python\n")
    return page[start : page.index("```\n", start)]


def test_the_rag_page_example_runs(
    index: Path, dense: DenseRetriever, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """docs/rag.md's haystack example runs as it stands and prints densekit's top 3 with their scores."""
    (tmp_path / "scifact.idx").symlink_to(index)
    monkeypatch.chdir(tmp_path)
    exec(compile(page_example("test_the_rag_page_example_runs"), "docs/rag.md", "exec"), {"__name__": "rag_page"})
    printed = capsys.readouterr().out.splitlines()
    expected = densekit_hits(dense, 3)
    assert [line.split()[0] for line in printed[:3]] == [doc_id for doc_id, _ in expected]
    assert [float(line.split()[1]) for line in printed[:3]] == [round(score, 4) for _, score in expected]
    assert printed[3].startswith(f"[{expected[0][0]}] ")  # the echo generator's reply: the prompt


def test_without_haystack_importing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "haystack", None)
    monkeypatch.delitem(sys.modules, "densekit.integrations.haystack")
    with pytest.raises(DensekitError, match=r"pip install 'densekit\[haystack\]'"):
        importlib.import_module("densekit.integrations.haystack")
