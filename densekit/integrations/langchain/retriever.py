"""`DensekitRetriever`: a LangChain retriever over a saved densekit index (dense, BM25 or hybrid).

It wraps any object keeping densekit's Retriever protocol (`search({id: text}, k) -> Run`) and a
:class:`~densekit.index.docstore.DocStore` that turns the hit ids back into texts, and returns
LangChain `Document`s::

    Document(id="4983", page_content="<title> <text>",
             metadata={...stored metadata, "score": 0.71, "rank": 1, "doc_id": "4983",
                       "title": "<title>", "index": "scifact.idx"})

`page_content` is the title and text joined as the encoder saw them (for documents that came in
through LangChain, exactly their `page_content`). Scores are the backend's: cosine similarity for the
dense retrievers densekit builds, BM25 scores for BM25, fused scores for hybrid; `score_threshold`
is compared with them (a hit scoring below it is dropped).

The retriever is a regular langchain-core Runnable: `invoke`, `ainvoke` (a native coroutine that runs
the search on a worker thread, so the event loop keeps serving other tasks), `batch`, and
composition with `|`.

Example::

    retriever = DensekitRetriever(index_path="scifact.idx", k=5)
    retriever.invoke("vitamin D and multiple sclerosis")

    retriever = DensekitRetriever(index_path="scifact-bm25.idx")             # a BM25 index
    retriever = DensekitRetriever.hybrid(["scifact-bm25.idx", "scifact.idx"], fusion="rrf")

    retriever = DensekitRetriever.from_documents(docs, model="all-MiniLM-L6-v2", path="my.idx")
    DensekitRetriever(index_path="my.idx").invoke("query", k=2, filter={"source": "faq"})
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from densekit.data import Corpus
from densekit.errors import DensekitError
from densekit.index.docstore import DocStore, StoredDocument, save_with_documents
from densekit.integrations.common import (
    Hit,
    MetadataFilter,
    Source,
    indexed_ids,
    open_source,
    search_hits,
)
from densekit.progress import interactive

_QUERY_ID = "q"


def stored_from_langchain(document: Document, position: int) -> StoredDocument:
    """A LangChain document as a stored one: its id (or `doc-<position>`), page_content, metadata."""
    doc_id = document.id if document.id else f"doc-{position}"
    metadata = dict(document.metadata or {})
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise DensekitError(f"document {doc_id!r}: metadata must be JSON-serialisable ({exc})") from None
    return StoredDocument(str(doc_id), "", document.page_content, metadata)


class DensekitRetriever(BaseRetriever):
    """LangChain retriever over a densekit index and its document texts.

    Build it from a saved index directory (`index_path`, whose `docs.jsonl` holds the texts, or give
    `corpus` for an index saved without them), from LangChain documents
    (:meth:`from_documents`), or from a live Retriever and DocStore (`retriever=`, `docstore=`).

    `k`, `score_threshold` and `filter` are defaults that `invoke(query, k=..., score_threshold=...,
    filter=...)` can override per call. With a filter, candidates are fetched `fetch_k` at a time
    (4 k by default, growing fourfold) until `k` documents pass or the index is exhausted.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    index_path: str | None = None
    """A saved index directory (dense, BM25 or hybrid)."""
    corpus: str | None = None
    """Texts for an index saved without `docs.jsonl`: a BEIR folder, dataset name or corpus.jsonl."""
    model: str | None = None
    """Override the encoder that the index manifest names."""
    device: str | None = None
    """Torch device for the query encoder (default: cuda when available)."""
    k: int = 4
    """Documents returned per query."""
    score_threshold: float | None = None
    """Drop hits scoring below this (in the backend's score scale)."""
    filter: MetadataFilter | None = None
    """Keep only documents whose metadata matches (see :func:`matches`)."""
    fetch_k: int | None = None
    """Candidates fetched per round when filtering (default 4 k)."""
    index_name: str | None = None
    """Name reported as `metadata["index"]` (default: the index directory's name, or "memory")."""
    aggregate: str | None = None
    """An index of passages: how passage scores make a document's (maxp, firstp, sump; default the index's)."""
    passages: bool = False
    """An index of passages: return the passages themselves instead of documents."""
    retriever: Any = Field(default=None, exclude=True)
    """The backend keeping the Retriever protocol (opened from `index_path` when not given)."""
    docstore: Any = Field(default=None, exclude=True)
    """The DocStore for the backend's ids (opened with the index when not given)."""

    _source: Source | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _open(self) -> DensekitRetriever:
        if self.k <= 0:
            raise DensekitError(f"k must be positive, got {self.k}")
        if self.fetch_k is not None and self.fetch_k <= 0:
            raise DensekitError(f"fetch_k must be positive, got {self.fetch_k}")
        if self.retriever is None and self.index_path is None:
            raise DensekitError("DensekitRetriever needs index_path=<saved index> or retriever=<Retriever>")
        # One opening path for every face (integrations.common): texts checked against the index, and an
        # index of passages answered with documents (each with its best passage's text) or passages.
        source = open_source(
            self.index_path if self.retriever is None else None,
            retriever=self.retriever,
            docstore=self.docstore,
            corpus=self.corpus,
            model=self.model,
            device=self.device,
            aggregate=self.aggregate,
            name=self.index_name,
        )
        if self.index_name is None:
            source.name = Path(self.index_path).name if self.index_path else "memory"
        self.retriever, self.docstore, self.index_name = source.retriever, source.docstore, source.name
        self._source = source
        return self

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[Document],
        model: Any = "all-MiniLM-L6-v2",
        path: str | Path | None = None,
        *,
        factory: str = "Flat",
        device: str | None = None,
        cache: bool = True,
        show_progress: bool | None = None,
        **kwargs: Any,
    ) -> DensekitRetriever:
        """Encode LangChain documents into a dense index; keep it in memory, or save it to `path`.

        `model` is a model name or folder, or an :class:`~densekit.retriever.encoder.Encoder`.
        Documents keep their `id` (else `doc-<position>` is given) and metadata; the page_content is
        what gets encoded. `factory` is the FAISS factory string. Progress shows by default at a
        terminal only (:func:`densekit.progress.interactive`). Other keyword arguments (`k`,
        `score_threshold`, `filter`, ...) configure the returned retriever.
        """
        from densekit.retriever.dense import DenseRetriever
        from densekit.retriever.encoder import Encoder

        stored = [stored_from_langchain(doc, i) for i, doc in enumerate(documents)]
        if not stored:
            raise DensekitError("from_documents needs at least one document")
        docstore = DocStore.from_documents(stored)
        encoder = model if isinstance(model, Encoder) else Encoder(str(model), device=device)
        corpus = Corpus([d.id for d in stored], [d.title for d in stored], [d.text for d in stored])
        backend = DenseRetriever.build(
            encoder, corpus, factory=factory, cache=cache, show_progress=interactive(show_progress)
        )
        if path is not None:
            save_with_documents(backend.save, stored, path)
            kwargs.setdefault("index_name", Path(path).name)
        return cls(retriever=backend, docstore=docstore, index_path=str(path) if path else None, **kwargs)

    @classmethod
    def hybrid(
        cls,
        index_paths: Sequence[str | Path],
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        depth: int = 100,
        corpus: str | Path | Corpus | None = None,
        model: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> DensekitRetriever:
        """Fuse several saved indexes (e.g. a BM25 and a dense one over the same corpus).

        Each index is searched to `depth` and the runs are fused with
        :class:`~densekit.retriever.hybrid.HybridRetriever` (`fusion` "rrf" or "interpolate",
        `weights` one per index). The texts come from the first index that stores them, or from
        `corpus`. `model` overrides the encoder of the dense indexes. Scores are the fused ones.
        """
        source = open_source(
            list(index_paths),
            corpus=corpus,
            model=model,
            device=device,
            fusion=fusion,
            weights=weights,
            depth=depth,
            name=kwargs.pop("index_name", None),
        )
        return cls(retriever=source.retriever, docstore=source.docstore, index_name=source.name, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Save the backend index and the document texts as one index directory (atomically)."""
        save = getattr(self.retriever, "save", None)
        if save is None:
            raise DensekitError(f"{type(self.retriever).__name__} cannot be saved (it has no save method)")
        ids = indexed_ids(self.retriever) or self.docstore.ids()
        return save_with_documents(save, (self.docstore.get(i) for i in ids), path)

    def _to_document(self, hit: Hit) -> Document:
        return Document(id=hit.id, page_content=hit.document.content, metadata=hit.metadata(index=self.index_name))

    def search(
        self,
        query: str,
        k: int | None = None,
        score_threshold: float | None = None,
        filter: MetadataFilter | None = None,
    ) -> list[Document]:
        """The top documents for `query`, best first (what `invoke` returns, without callbacks)."""
        k = self.k if k is None else k
        threshold = self.score_threshold if score_threshold is None else score_threshold
        condition = self.filter if filter is None else filter
        assert self._source is not None  # set by the validator
        hits = search_hits(self._source, query, k, threshold, condition, self.fetch_k, passages=self.passages)
        return [self._to_document(hit) for hit in hits]

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        score_threshold: float | None = None,
        filter: MetadataFilter | None = None,
    ) -> list[Document]:
        return self.search(query, k=k, score_threshold=score_threshold, filter=filter)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        score_threshold: float | None = None,
        filter: MetadataFilter | None = None,
    ) -> list[Document]:
        # Encoding and FAISS search are CPU-bound and release the GIL: run them on a worker thread
        # so the event loop stays free while the query is answered.
        return await run_in_executor(None, self.search, query, k, score_threshold, filter)


def documents_to_json(documents: Sequence[Document]) -> list[dict[str, Any]]:
    """Plain JSON for a list of LangChain documents (id, page_content, metadata), e.g. to compare runs."""
    return [{"id": d.id, "page_content": d.page_content, "metadata": d.metadata} for d in documents]
