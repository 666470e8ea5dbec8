"""Candidate sources and the models that score candidates, in bounded memory.

- :class:`DenseScorer` wraps an :class:`~densekit.retriever.encoder.Encoder` over a corpus. Corpus
  embeddings come from the shared embedding cache (`.npy` opened with mmap, encoded once per model and
  corpus); query embeddings are cached the same way (role "query"). Scores of given (query, document)
  pairs are dot products of the query vector with the few document rows gathered from the mmap, so no
  query x corpus matrix ever exists. The teacher and the GIST guide are both DenseScorers.
- A *candidate source* proposes, for a chunk of queries, a ranked list of document ids:
  :class:`DenseSource` runs a DenseScorer's exact inner-product search (on CPU block by block over the
  mmap, releasing each block's pages, :mod:`densekit.index.mapped`; on a GPU through a FAISS index,
  whose k <= 2048 limit :class:`~densekit.index.dense.DenseIndex` handles), and
  :class:`RetrieverSource` adapts anything that keeps the Retriever protocol (BM25, hybrid, ...).
- :func:`fuse` combines several sources' lists: reciprocal rank fusion (Cormack et al., SIGIR 2009,
  k = 60; the package's one implementation, in :mod:`densekit.retriever.hybrid`, ties by document id)
  truncated to the depth, or the union of all lists ordered by the teacher's score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import faiss
import numpy as np

from densekit.data import Corpus, Run, fingerprint
from densekit.errors import DensekitError
from densekit.index.cache import cache_enabled, cache_key, encode_corpus, load_cached, store_with
from densekit.index.dense import DenseIndex
from densekit.index.gpu import place
from densekit.index.mapped import MappedRows
from densekit.protocols import Retriever
from densekit.retriever.hybrid import reciprocal_rank_fusion

CANDIDATE_FUSIONS = ("rrf", "union")


class DenseScorer:
    """Scores (query, document) pairs with one encoder over one corpus (see the module docstring).

    Args:
        encoder: the model.
        corpus: the documents; embedded once (cached) and opened with mmap.
        cache: use the embedding cache under `$DENSEKIT_HOME/embeddings` (and `DENSEKIT_NO_CACHE`).
        index_device: where the FAISS index lives when this scorer is also a candidate source.
        query_chunk: queries encoded per step when filling the query-embedding file.
    """

    def __init__(
        self,
        encoder,
        corpus: Corpus,
        cache: bool = True,
        index_device: str = "cpu",
        show_progress: bool = True,
        query_chunk: int = 16384,
    ) -> None:
        self.encoder = encoder
        self.corpus = corpus
        self.cache = cache and cache_enabled()
        self.index_device = index_device
        self.show_progress = show_progress
        self.query_chunk = query_chunk
        self.documents = encode_corpus(encoder, corpus, cache=cache, show_progress=show_progress)
        self._matrix = MappedRows(self.documents)
        self._rows = self._matrix.rows
        self._index: DenseIndex | None = None
        self._queries: dict[str, int] = {}
        self._query_vectors: MappedRows | None = None

    def describe(self) -> dict:
        return {**self.encoder.describe(), "fingerprint": self.encoder.fingerprint()}

    # -- queries -------------------------------------------------------------------------------------

    def prepare_queries(self, query_ids: Sequence[str], texts: Sequence[str]) -> None:
        """Embed all queries once (cached on disk, reopened with mmap) so every later chunk, and a
        resumed run, reads exactly the same vectors."""
        self._queries = {q: i for i, q in enumerate(query_ids)}
        key = cache_key(self.encoder.fingerprint(), fingerprint(query_ids, texts), role="query")
        cached = load_cached(key) if self.cache else None
        if cached is not None and len(cached) == len(query_ids):
            self._query_vectors = MappedRows(cached)
            return
        if not self.cache:
            self._query_vectors = MappedRows(self._encode_queries(list(texts)))
            return

        def fill(array: np.ndarray) -> None:
            for start in range(0, len(texts), self.query_chunk):
                array[start : start + self.query_chunk] = self._encode_queries(
                    list(texts[start : start + self.query_chunk])
                )

        meta = {"model": self.encoder.model_id, "role": "query", "queries": len(texts)}
        self._query_vectors = MappedRows(
            store_with(key, (len(texts), self.encoder.dim), fill, meta, lambda: self._encode_queries(list(texts)))
        )

    def _encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_queries(texts, show_progress=self.show_progress)

    def query_vectors(self, query_ids: Sequence[str]) -> np.ndarray:
        if self._query_vectors is None:
            raise DensekitError("call prepare_queries() before scoring")
        rows = [self._queries[q] for q in query_ids]
        return np.ascontiguousarray(self._query_vectors.rows[rows], dtype=np.float32)

    # -- scoring -------------------------------------------------------------------------------------

    def score(self, query_vector: np.ndarray, doc_ids: Sequence[str]) -> np.ndarray:
        """Inner products of one query vector with the given documents (rows gathered from the mmap)."""
        if not doc_ids:
            return np.empty(0, dtype=np.float32)
        return self.score_lists(query_vector[None, :], [doc_ids])[0]

    def score_lists(
        self, query_vectors: np.ndarray, id_lists: Sequence[Sequence[str]], block: int = 1024
    ) -> list[np.ndarray]:
        """:meth:`score` for many queries at once: `query_vectors[i]` against the documents `id_lists[i]`.

        The rows of all lists are gathered (:meth:`MappedRows.gather`: by pread from a large corpus
        file, so nothing of it stays resident) and multiplied in blocks of `block` (query, document)
        pairs. Each score is the same row-wise dot product whatever the blocking.
        """
        lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
        flat = [d for ids in id_lists for d in ids]
        rows = self.corpus.positions(flat)
        owners = np.repeat(np.arange(len(id_lists)), lengths)
        vectors = np.asarray(query_vectors, dtype=np.float32)
        scores = np.empty(len(flat), dtype=np.float32)
        for start in range(0, len(flat), block):
            part = slice(start, start + block)
            order = np.argsort(rows[part], kind="stable")  # ascending rows: sequential reads
            gathered = np.empty((len(order), self._rows.shape[1]), dtype=np.float32)
            gathered[order] = self._matrix.gather(rows[part][order])
            scores[part] = np.einsum("ij,ij->i", gathered, vectors[owners[part]])
        return np.split(scores, np.cumsum(lengths)[:-1]) if len(id_lists) else []

    # -- searching -----------------------------------------------------------------------------------

    def search(self, query_vectors: np.ndarray, k: int, block: int = 32768) -> tuple[list[list[str]], list[np.ndarray]]:
        """Each query's top-`k` document ids by exact inner product, best first, and their scores.

        On CPU the corpus is read block by block from the mmap and the blocks' top-`k` are merged
        (:class:`faiss.ResultHeap`), releasing each block's pages: memory is one block, not the corpus.
        On a GPU (`index_device`) the corpus is copied into a FAISS index there (:attr:`index`).
        """
        queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
        k = min(k, len(self._rows))
        if self.index_device != "cpu":
            scores, found = self.index.search(queries, k)
            return found, [row[: len(ids)] for row, ids in zip(scores, found, strict=True)]
        heap = faiss.ResultHeap(len(queries), k, keep_max=True)
        for start in range(0, len(self._rows), block):
            part = np.ascontiguousarray(self._rows[start : start + block])
            scores, labels = faiss.knn(queries, part, min(k, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, labels + start)
            self._matrix.release()
        heap.finalize()
        ids, found, kept = self.corpus.ids, [], []
        for row_labels, row_scores in zip(heap.I, heap.D, strict=True):
            valid = row_labels >= 0
            found.append([ids[j] for j in row_labels[valid]])
            kept.append(row_scores[valid].astype(np.float32))
        return found, kept

    def release(self) -> None:
        """Hand the corpus and query pages read so far back to the OS (see :mod:`densekit.index.mapped`)."""
        self._matrix.release()
        if self._query_vectors is not None:
            self._query_vectors.release()

    @property
    def index(self) -> DenseIndex:
        """Exact inner-product FAISS index over the corpus on `index_device` (a copy of the corpus)."""
        if self._index is None:
            flat = faiss.IndexFlatIP(int(self.documents.shape[1]))
            block = 65536
            for start in range(0, len(self.documents), block):
                flat.add(np.ascontiguousarray(self.documents[start : start + block], dtype=np.float32))
            placed, where = place(flat, self.index_device)
            self._index = DenseIndex(placed, list(self.corpus.ids), "Flat", "ip", self.encoder.describe(), where)
        return self._index


class CandidateSource(Protocol):
    """Proposes ranked candidate document ids for a chunk of queries."""

    name: str

    def candidates(self, query_ids: list[str], texts: list[str], k: int) -> list[list[str]]: ...

    def describe(self) -> dict: ...


class DenseSource:
    """Top-`k` of a DenseScorer's exact FAISS search over its cached query embeddings."""

    def __init__(self, scorer: DenseScorer, name: str = "dense") -> None:
        self.scorer = scorer
        self.name = name

    def describe(self) -> dict:
        return {"name": self.name, "kind": "dense", "model": self.scorer.encoder.model_id}

    def scored_candidates(self, query_ids: list[str], texts: list[str], k: int) -> tuple[list[list[str]], list]:
        """Each query's top-`k` ids and the scorer's scores of them (from the search itself)."""
        return self.scorer.search(self.scorer.query_vectors(query_ids), k)

    def candidates(self, query_ids: list[str], texts: list[str], k: int) -> list[list[str]]:
        return self.scored_candidates(query_ids, texts, k)[0]


class RetrieverSource:
    """Any :class:`~densekit.retriever.base.Retriever` (BM25, hybrid, ...) as a candidate source."""

    def __init__(self, retriever: Retriever, name: str, details: dict | None = None) -> None:
        if not isinstance(retriever, Retriever):
            raise DensekitError(f"source {name!r}: {type(retriever).__name__} has no search(queries, k)")
        self.retriever = retriever
        self.name = name
        self.details = details or {}

    def describe(self) -> dict:
        kind = type(self.retriever).__name__
        return {"name": self.name, "kind": "retriever", "class": kind, **self.details}

    def scored_candidates(self, query_ids: list[str], texts: list[str], k: int) -> list[list[tuple[str, float]]]:
        """Each query's top `k` (document id, retriever score)."""
        run = self.retriever.search(dict(zip(query_ids, texts, strict=True)), k)
        return [list(run.get(q, [])[:k]) for q in query_ids]

    def candidates(self, query_ids: list[str], texts: list[str], k: int) -> list[list[str]]:
        return [[doc_id for doc_id, _ in hits] for hits in self.scored_candidates(query_ids, texts, k)]


def fuse(
    lists: Sequence[Sequence[str]],
    method: str,
    depth: int,
    teacher_score: Callable[[list[str]], np.ndarray] | None = None,
) -> list[str]:
    """Combine ranked id lists into one candidate list.

    One list is returned as is. `rrf`: :func:`~densekit.retriever.hybrid.reciprocal_rank_fusion`
    (k = 60, equal weights; equal fused scores ordered by document id), cut at `depth`. `union`: every
    id of every list, ordered by `teacher_score` (descending, ties by first appearance), not cut --
    each source already returned `depth`.
    """
    if method not in CANDIDATE_FUSIONS:
        raise DensekitError(f"unknown fusion {method!r}; expected one of {', '.join(CANDIDATE_FUSIONS)}")
    if len(lists) == 1:
        return list(lists[0])
    if method == "rrf":
        runs = [Run({"q": [(doc_id, 0.0) for doc_id in ranked]}) for ranked in lists]  # only ranks count
        return [doc_id for doc_id, _ in reciprocal_rank_fusion(runs, depth=depth)["q"]]
    merged = list(dict.fromkeys(d for ranked in lists for d in ranked))
    if teacher_score is None:
        raise DensekitError("union fusion orders by the teacher's score: pass teacher_score")
    values = teacher_score(merged)
    return [merged[i] for i in np.argsort(-values, kind="stable")]
