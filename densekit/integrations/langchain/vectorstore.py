"""`DensekitVectorStore`: a langchain-core `VectorStore` over a densekit index directory or in memory.

Three kinds of store, one class:

- **dense** (in memory, or a saved dense index opened with :meth:`DensekitVectorStore.load`): a FAISS
  index (:class:`~densekit.index.dense.DenseIndex`) plus the document texts. It takes every
  operation: `add_documents`/`add_texts` (ids kept or generated; an existing id is replaced),
  `delete`, `get_by_ids`, similarity search (with scores, by vector, with a metadata `filter`),
  maximal marginal relevance, and :meth:`~DensekitVectorStore.save` to an index directory that
  `densekit search`, `DenseRetriever.load` and `DensekitRetriever` open too (when the embeddings are
  a densekit model).
- **bm25** (a saved BM25 index), **milvus** (a saved Milvus index directory with its texts) and
  **hybrid** (:meth:`DensekitVectorStore.hybrid`: several saved indexes fused): searched by text
  only, through the index's own Retriever. `add`/`delete`, search by vector and MMR raise a
  :class:`~densekit.errors.DensekitError`; change such an index with `densekit index update` /
  `remove`, or rebuild it with `densekit index build`.

Embeddings: a :class:`~densekit.integrations.langchain.embeddings.DensekitEmbeddings` (or a model
name, folder or Encoder, wrapped in one) embeds exactly as `densekit index build` does, so scores
equal `DenseRetriever`'s (cosine for normalising models). Any other LangChain `Embeddings` works
too: its vectors are L2-normalised (``normalize=True``, the default) so that the inner-product
index ranks by cosine similarity; scores are then cosines in [-1, 1].

The manifest's ``model`` says what made the vectors: a densekit model with its fingerprint (another
model is refused, as `DenseRetriever.load` refuses it), or foreign embeddings' class and model name
plus ``normalize`` (densekit cannot fingerprint a foreign object; reopening checks class and name).

Scores are similarities: higher is better. Documents come back as they went in; for an index built by
the CLI, page_content is title and text joined, the title also in ``metadata["title"]``; an index of
passages (``--chunk-size``) gives passages (metadata ``parent_id``, ``passage``, ``start``, ``end``)
and is not edited here. A `filter` is a dict (every key equal; a list means "any of") or a function
of the metadata (:func:`~densekit.integrations.common.matches`).

Example::

    store = DensekitVectorStore.from_documents(docs, DensekitEmbeddings("all-MiniLM-L6-v2"))
    store.similarity_search_with_score("what causes scurvy?", k=4, filter={"source": "faq"})
    store.max_marginal_relevance_search("scurvy", k=4, fetch_k=20)
    store.save("my.idx"); DensekitVectorStore.load("my.idx")          # model from the manifest
    DensekitVectorStore.load("runs/scifact-minilm.idx").as_retriever(search_kwargs={"k": 5})
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from densekit.errors import DensekitError
from densekit.index.dense import DenseIndex
from densekit.index.docstore import DocStore, StoredDocument, save_with_documents
from densekit.integrations.common import QUERY_ID, MetadataFilter, matches
from densekit.integrations.langchain.embeddings import DensekitEmbeddings
from densekit.integrations.langchain.store_parts import (
    StoreDocuments,
    as_embeddings,
    describe_embeddings,
    embed_foreign,
    json_metadata,
    unit_rows,
)
from densekit.progress import announce, interactive


class DensekitVectorStore(VectorStore):
    """LangChain vector store over a densekit index (see the module docstring).

    Args:
        embedding: LangChain `Embeddings`, or a densekit model name, folder or Encoder (wrapped in
            :class:`DensekitEmbeddings`). Required for a dense store; unused by text-only ones.
        normalize: L2-normalise the vectors of foreign embeddings (default True; cosine scores).
            A densekit model normalises as its configuration says, like every densekit index.
        name: how the store names itself in messages (default: the index directory's name, or "memory").

    Build an empty store with the constructor, a filled one with :meth:`from_documents` /
    :meth:`from_texts`, or open a saved index with :meth:`load` or :meth:`hybrid`.
    """

    def __init__(
        self,
        embedding: Embeddings | str | Path | Any = None,
        *,
        normalize: bool | None = None,
        name: str | None = None,
        index: DenseIndex | None = None,
        docstore: DocStore | None = None,
        backend: Any = None,
        kind: str = "dense",
        path: str | Path | None = None,
        passages: bool = False,
    ) -> None:
        self._embedding = as_embeddings(embedding)
        self.kind = kind
        self._backend = backend  # the Retriever of a text-only store (bm25, milvus, hybrid)
        if kind == "dense" and self._embedding is None:
            raise DensekitError("a dense DensekitVectorStore needs embedding= (LangChain Embeddings or a model name)")
        if isinstance(self._embedding, DensekitEmbeddings):
            if normalize is not None:
                raise DensekitError(
                    "normalize= applies to foreign embeddings; a densekit model normalises as configured"
                )
            self._normalize = False
            self._model_info = self._embedding.describe()
        else:
            self._normalize = True if normalize is None else normalize
            self._model_info = describe_embeddings(self._embedding, self._normalize) if self._embedding else {}
        self._index = index
        self._docs = StoreDocuments(docstore)
        self.path = Path(path) if path is not None else None
        self.name = name or (self.path.name if self.path else "memory")
        self._lock = threading.RLock()
        self.passages = passages  # an index of passages (built with --chunk-size): searched, not edited

    # -- what it is ----------------------------------------------------------------------------------

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    def __len__(self) -> int:
        if self._index is not None:
            return len(self._index)
        return 0 if self._backend is None else len(self._docs.base or ())

    @property
    def unit_vectors(self) -> bool:
        """Whether stored and query vectors are unit length (scores are cosines in [-1, 1])."""
        if isinstance(self._embedding, DensekitEmbeddings):
            return self._embedding.normalize
        return self.kind == "dense" and self._normalize

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if not self.unit_vectors:
            raise DensekitError(
                f"{self.name}: relevance scores in [0, 1] need cosine scores; this store's scores are "
                f"{'unnormalised inner products' if self.kind == 'dense' else 'not known to be cosines'} "
                "(use similarity_search_with_score)"
            )
        return lambda score: (1.0 + score) / 2.0

    def _require_dense(self, what: str) -> None:
        if self.kind != "dense":
            raise DensekitError(
                f"{self.name}: cannot {what} in a {self.kind} store (searched by text only); only dense "
                "(FAISS) stores take add, delete, search by vector and MMR -- change the saved index with "
                "`densekit index update`/`remove`, or rebuild it with `densekit index build`"
            )

    def _require_editable(self, what: str) -> None:
        self._require_dense(what)
        if self.passages:
            raise DensekitError(
                f"{self.name}: cannot {what}: an index of passages (built with --chunk-size) is searched here, "
                "passage by passage; change it with `densekit index update`/`remove`, which cut and keep the "
                "passages of each document in step"
            )

    # -- embedding -----------------------------------------------------------------------------------

    def _embed_documents(self, texts: list[str], show_progress: bool, batch_size: int | None) -> np.ndarray:
        if isinstance(self._embedding, DensekitEmbeddings):
            return self._embedding.encode_documents(texts, show_progress=show_progress)
        vectors = embed_foreign(self._embedding, texts, show_progress, batch_size)
        return unit_rows(vectors) if self._normalize else vectors

    def _query_vector(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        return unit_rows(vector) if self._normalize else vector

    def _embed_query(self, query: str) -> np.ndarray:
        if isinstance(self._embedding, DensekitEmbeddings):
            return self._embedding.encode_query(query)
        return self._query_vector(self._embedding.embed_query(query))

    # -- changing ------------------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and add texts (see :meth:`add_documents`); returns their ids."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise DensekitError(f"{len(metadatas)} metadatas for {len(texts)} texts")
        documents = [
            Document(page_content=t, metadata=(metadatas[i] if metadatas else {})) for i, t in enumerate(texts)
        ]
        return self.add_documents(documents, ids=ids, **kwargs)

    def add_documents(
        self,
        documents: list[Document],
        *,
        ids: list[str | None] | None = None,
        show_progress: bool | None = None,
        batch_size: int | None = None,
    ) -> list[str]:
        """Embed documents and add them; returns their ids, in order.

        Each document keeps the id given in `ids` (which wins), else its own `id`, else a new UUID;
        a document whose id is already stored replaces it. Metadata must be JSON-serialisable.
        `show_progress` defaults to on at a terminal, off otherwise (:func:`densekit.progress.interactive`);
        `batch_size` is the number of texts per call of foreign embeddings.
        """
        self._require_editable("add documents")
        documents = list(documents)
        if ids is not None and len(ids) != len(documents):
            raise DensekitError(f"{len(ids)} ids for {len(documents)} documents")
        if not documents:
            return []
        chosen = [str((ids[i] if ids else None) or doc.id or uuid.uuid4().hex) for i, doc in enumerate(documents)]
        if len(set(chosen)) != len(chosen):
            raise DensekitError("document ids must be unique within one call")
        stored = [
            StoredDocument(doc_id, "", doc.page_content, json_metadata(doc_id, doc.metadata))
            for doc_id, doc in zip(chosen, documents, strict=True)
        ]
        vectors = self._embed_documents([d.text for d in stored], interactive(show_progress), batch_size)
        with self._lock:
            if self._index is None:
                self._index = DenseIndex.create(vectors.shape[1], len(vectors), "Flat", "ip", model=self._model_info)
            self._index.update(vectors, chosen)
            self._docs.put(stored)
        return chosen

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete documents by id (ids not stored are ignored); returns True."""
        if kwargs:
            raise DensekitError(f"delete: unknown options {', '.join(sorted(kwargs))}")
        if ids is None:
            raise DensekitError("delete needs ids= (deleting everything is not done by default)")
        self._require_editable("delete documents")
        with self._lock:
            if self._index is not None:
                self._index.remove(list(ids), missing_ok=True)
            self._docs.drop(ids)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents among `ids` (unknown ids are skipped), in the order asked."""
        with self._lock:
            if self.kind == "dense":
                known = self._index.positions() if self._index is not None else {}
                return [self._document(self._docs.get(i)) for i in ids if i in known]
            return [self._document(self._docs.get(i)) for i in ids if i in self._docs]

    # -- searching -----------------------------------------------------------------------------------

    @staticmethod
    def _document(stored: StoredDocument) -> Document:
        metadata = dict(stored.metadata)
        if stored.title and "title" not in metadata:
            metadata["title"] = stored.title
        return Document(id=stored.id, page_content=stored.content, metadata=metadata)

    def _filtered(
        self,
        search: Callable[[int], list[tuple[str, float]]],
        k: int,
        condition: MetadataFilter | None,
        fetch_k: int | None,
    ) -> list[tuple[Document, float]]:
        """The first `k` hits passing `condition`, fetching `fetch_k` (4 k) candidates, then four times more."""
        if not isinstance(k, int) or k <= 0:
            raise DensekitError(f"k must be a positive integer, got {k!r}")
        fetch = k if condition is None else max(k, fetch_k or 4 * k)
        while True:
            hits = search(fetch)
            found = []
            with self._lock:  # a document deleted by another thread since the search is skipped
                stored = [(self._docs.get(i), score) for i, score in hits if i in self._docs]
            for doc, score in stored:
                document = self._document(doc)
                if condition is None or matches(document.metadata, condition):
                    found.append((document, float(score)))
                    if len(found) == k:
                        return found
            if len(hits) < fetch:
                return found
            fetch *= 4

    def _vector_hits(self, vector: np.ndarray, fetch: int) -> list[tuple[str, float]]:
        with self._lock:
            if self._index is None or len(self._index) == 0:
                return []
            scores, ids = self._index.search(vector[None, :], fetch)
        return list(zip(ids[0], scores[0].tolist(), strict=False))

    def _text_hits(self, query: str, fetch: int) -> list[tuple[str, float]]:
        if self.kind == "dense":
            return self._vector_hits(self._embed_query(query), fetch)
        return self._backend.search({QUERY_ID: query}, fetch).get(QUERY_ID, [])

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: MetadataFilter | None = None, fetch_k: int | None = None
    ) -> list[tuple[Document, float]]:
        """The `k` best documents for `query` with their scores (similarities: higher is better).

        With a `filter`, candidates are fetched `fetch_k` (default 4 k) at a time, growing fourfold,
        until `k` documents pass or the store is exhausted.
        """
        return self._filtered(lambda n: self._text_hits(query, n), k, filter, fetch_k)

    def similarity_search(
        self, query: str, k: int = 4, filter: MetadataFilter | None = None, fetch_k: int | None = None
    ) -> list[Document]:
        """The `k` best documents for `query` (see :meth:`similarity_search_with_score`)."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, fetch_k)]

    def similarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: MetadataFilter | None = None, fetch_k: int | None = None
    ) -> list[tuple[Document, float]]:
        """Like :meth:`similarity_search_with_score` for a query vector (normalised like the store's)."""
        self._require_dense("search by vector")
        vector = self._query_vector(embedding)
        return self._filtered(lambda n: self._vector_hits(vector, n), k, filter, fetch_k)

    def similarity_search_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: MetadataFilter | None = None, fetch_k: int | None = None
    ) -> list[Document]:
        """The `k` best documents for a query vector."""
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, fetch_k)]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
    ) -> list[Document]:
        """`k` documents chosen by maximal marginal relevance among the `fetch_k` most similar (passing
        `filter`): each next pick maximises ``lambda_mult * sim(query, d) - (1 - lambda_mult) * max sim(d, picked)``,
        so 1 is plain similarity and 0 is maximal diversity."""
        self._require_dense("run maximal marginal relevance")
        return self._mmr(self._embed_query(query), k, fetch_k, lambda_mult, filter)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: Sequence[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
    ) -> list[Document]:
        """:meth:`max_marginal_relevance_search` for a query vector."""
        self._require_dense("run maximal marginal relevance")
        return self._mmr(self._query_vector(embedding), k, fetch_k, lambda_mult, filter)

    def _mmr(
        self, query: np.ndarray, k: int, fetch_k: int, lambda_mult: float, condition: MetadataFilter | None
    ) -> list[Document]:
        if not 0.0 <= lambda_mult <= 1.0:
            raise DensekitError(f"lambda_mult must be within [0, 1], got {lambda_mult}")
        candidates = self._filtered(lambda n: self._vector_hits(query, n), max(k, fetch_k), condition, None)
        if not candidates:
            return []
        vectors = self._vectors([doc for doc, _ in candidates])
        chosen = maximal_marginal_relevance(query, vectors, lambda_mult=lambda_mult, k=min(k, len(candidates)))
        return [candidates[i][0] for i in chosen]

    def _vectors(self, documents: list[Document]) -> np.ndarray:
        """The stored vectors of `documents`: read back from FAISS, or (for an index that cannot
        reconstruct them, e.g. IVF without a direct map) embedded again, announced."""
        with self._lock:
            positions = self._index.positions()
            labels = np.array([positions[d.id] for d in documents], dtype=np.int64)
            try:
                return self._index.index.reconstruct_batch(labels)
            except RuntimeError:
                pass
        announce(
            f"{self.name}: the {self._index.factory} index cannot return its vectors; MMR embeds the candidates again"
        )
        return self._embed_documents([d.page_content for d in documents], False, None)

    # -- building, saving, opening -------------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | str | Path | Any,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        path: str | Path | None = None,
        normalize: bool | None = None,
        show_progress: bool | None = None,
        batch_size: int | None = None,
    ) -> DensekitVectorStore:
        """A dense store of `texts` embedded with `embedding`; saved to `path` too when given."""
        store = cls(embedding, normalize=normalize)
        store.add_texts(texts, metadatas, ids=ids, show_progress=show_progress, batch_size=batch_size)
        if path is not None:
            store.save(path)
        return store

    @classmethod
    def from_documents(
        cls,
        documents: list[Document],
        embedding: Embeddings | str | Path | Any,
        *,
        ids: list[str] | None = None,
        path: str | Path | None = None,
        normalize: bool | None = None,
        show_progress: bool | None = None,
        batch_size: int | None = None,
    ) -> DensekitVectorStore:
        """A dense store of LangChain `documents` (ids and metadata kept); saved to `path` when given.
        Progress shows by default at a terminal (see :meth:`add_documents`)."""
        store = cls(embedding, normalize=normalize)
        store.add_documents(documents, ids=ids, show_progress=show_progress, batch_size=batch_size)
        if path is not None:
            store.save(path)
        return store

    def save(self, path: str | Path | None = None, overwrite: bool = False) -> Path:
        """Write the store as a densekit index directory (FAISS index, ids, manifest, docs.jsonl),
        atomically; `path` defaults to the directory the store was loaded from or last saved to.
        An existing `path` must be a densekit dense index (or empty) unless `overwrite`."""
        self._require_editable("save")
        target = Path(path) if path is not None else self.path
        if target is None:
            raise DensekitError("save needs a path (the store was not loaded from one)")
        with self._lock:
            if self._index is None:
                raise DensekitError(f"{self.name}: the store is empty; add documents before saving")
            ids = list(self._index.ids)
            save_with_documents(self._index.save, (self._docs.get(i) for i in ids), target, overwrite=overwrite)
        self.path = target
        if self.name == "memory":
            self.name = target.name
        return target

    @classmethod
    def load(
        cls,
        path: str | Path,
        embedding: Embeddings | str | Path | Any = None,
        *,
        model: str | None = None,
        device: str | None = None,
    ) -> DensekitVectorStore:
        """Open a saved index directory (dense, BM25 or Milvus) that stores its texts (docs.jsonl).

        A dense index built with a densekit model reopens with that model (from the manifest,
        fingerprint-checked; `model` overrides it deliberately, announced) or with `embedding` when it
        is the same densekit model; a different one is refused. An index saved from foreign
        embeddings needs `embedding` of the same class and model name. BM25 and Milvus indexes open
        as text-only stores and take no `embedding` (`model` overrides a Milvus index's encoder).
        """
        from densekit.integrations.langchain.store_parts import open_store_parts

        parts = open_store_parts(Path(path), as_embeddings(embedding), model=model, device=device)
        return cls(**parts, path=path)

    @classmethod
    def hybrid(
        cls,
        index_paths: Sequence[str | Path],
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        depth: int = 100,
        model: str | None = None,
        device: str | None = None,
    ) -> DensekitVectorStore:
        """A text-search store fusing several saved indexes (e.g. BM25 and dense), as
        :meth:`DensekitRetriever.hybrid <densekit.integrations.langchain.retriever.DensekitRetriever.hybrid>`
        does; its scores are the fused ones."""
        from densekit.integrations.langchain.retriever import DensekitRetriever

        fused = DensekitRetriever.hybrid(
            index_paths, fusion=fusion, weights=weights, depth=depth, model=model, device=device
        )
        return cls(backend=fused.retriever, docstore=fused.docstore, kind="hybrid", name=fused.index_name)
