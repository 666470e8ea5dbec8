"""Framework-neutral parts of densekit's RAG faces (LangChain, LlamaIndex, Haystack, a service).

Every face does the same three things and differs only in the last one:

1. open a saved index together with its document texts (:func:`open_source`): one index directory
   (dense or BM25), several fused into a hybrid, or a live Retriever and DocStore;
2. search it for one query with a score threshold and a metadata filter, fetching more candidates
   until `k` documents pass (:func:`search_hits`);
3. turn each :class:`Hit` into the framework's document type.

An index of passages (built with ``--chunk-size``) returns documents, ranked by their passages
(MaxP by default); each hit's text is then its best passage (a RAG prompt wants the passage that
matched, not a whole long document) and its metadata names that passage (``passage_id``, with the
passage's ``parent_id``, ``start`` and ``end``). With ``passages=True`` the hits are the passages
themselves, several per document possibly.

Example::

    source = open_source("scifact.idx")
    for hit in search_hits(source, "vitamin D and multiple sclerosis", k=3, condition={"year": [2019, 2020]}):
        print(hit.rank, hit.document.id, hit.score, hit.document.title)

No framework is imported here, so this module works with none installed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densekit.chunking import parent_id
from densekit.data import Corpus, load_dataset, read_corpus
from densekit.errors import DensekitError
from densekit.index.docstore import DocStore, StoredDocument
from densekit.index.manifest import read_manifest
from densekit.protocols import Retriever

MetadataFilter = dict[str, Any] | Callable[[dict[str, Any]], bool]
"""A dict (every key present and equal; a list/tuple/set value means any of them) or a predicate."""

QUERY_ID = "q"
FUSIONS = ("rrf", "interpolate")


def missing_extra(package: str, extra: str, error: ImportError) -> DensekitError:
    """The error for an integration whose framework is not installed (raise it `from None`)."""
    return DensekitError(f"{package} is not installed ({error}); pip install 'densekit[{extra}]'")


def matches(metadata: dict[str, Any], condition: MetadataFilter | None) -> bool:
    """Whether a document's metadata passes a filter.

    A dict filter requires every key to be present and equal to its value; a list, tuple or set
    value means "any of these". A callable filter gets the metadata and returns a truth value.
    """
    if condition is None:
        return True
    if callable(condition):
        return bool(condition(metadata))
    if not isinstance(condition, dict):
        raise DensekitError(f"a filter must be a dict or a callable, got {type(condition).__name__}")
    for key, wanted in condition.items():
        if key not in metadata:
            return False
        value = metadata[key]
        if isinstance(wanted, (list, tuple, set, frozenset)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


def indexed_ids(retriever: Any) -> list[str] | None:
    """The document ids a backend holds, when it exposes them (used to check a document store)."""
    for owner in (retriever, getattr(retriever, "index", None)):
        ids = getattr(owner, "ids", None)
        if isinstance(ids, list):
            return ids
    return None


def corpus_from(source: str | Path | Corpus) -> Corpus:
    """A corpus from a Corpus, a corpus.jsonl file, a BEIR folder or a dataset name."""
    if isinstance(source, Corpus):
        return source
    path = Path(source)
    if path.is_file():
        return read_corpus(path)
    return load_dataset(source).corpus


@dataclass
class Hit:
    """One hit: the id the backend ranked (a document, or a passage with ``passages=True``), what the
    store holds for it (the document, or the best passage of a document from a passage index), its
    backend score (cosine, BM25 or fused) and 1-based rank."""

    id: str
    document: StoredDocument
    score: float
    rank: int = 0

    def metadata(self, index: str | None = None, with_score: bool = True) -> dict[str, Any]:
        """Stored metadata plus `doc_id` (the ranked id), `title`, `passage_id` (when the text is a
        document's best passage) and, when asked, `score`, `rank` and `index`. Filters see this
        without score, rank and index."""
        metadata = {
            **self.document.metadata,
            "doc_id": self.id,
            "title": self.document.title or self.document.metadata.get("title", ""),
        }
        if self.document.id != self.id:
            metadata["passage_id"] = self.document.id
        if with_score:
            metadata.update(score=self.score, rank=self.rank)
        if index is not None:
            metadata["index"] = index
        return metadata


@dataclass
class Source:
    """A backend keeping the Retriever protocol, the texts of its ids, and a name for results."""

    retriever: Retriever
    docstore: DocStore
    name: str
    # A passage index reports each document's best passage on the retriever after a search
    # (`best_passages`); the lock keeps another thread's search from replacing it in between.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _paths(index_path: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if index_path is None:
        return []
    if isinstance(index_path, (str, Path)):
        return [Path(index_path)]
    return [Path(p) for p in index_path]


def _open_backend(
    paths: list[Path],
    model: str | None,
    device: str | None,
    fusion: str,
    weights: Sequence[float] | None,
    depth: int,
    aggregate: str | None,
) -> tuple[Retriever, list[Retriever]]:
    from densekit.retriever.compose import open_index

    backends = []
    for path in paths:
        manifest = read_manifest(path)
        encoded = manifest.get("kind", "dense") != "bm25"  # dense and Milvus indexes have an encoder
        if model is not None and not encoded and len(paths) == 1:  # in a hybrid, model= is the dense side's
            raise DensekitError(f"{path}: a BM25 index has no encoder; model={model!r} does not apply")
        chunked = "passages" in manifest
        backends.append(
            open_index(path, model=model if encoded else None, device=device, aggregate=aggregate if chunked else None)
        )
    if len(backends) == 1:
        return backends[0], backends
    if fusion not in FUSIONS:
        raise DensekitError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    from densekit.retriever.hybrid import HybridRetriever

    return HybridRetriever(backends, fusion=fusion, weights=weights, depth=depth), backends


def open_source(
    index_path: str | Path | Sequence[str | Path] | None = None,
    *,
    retriever: Retriever | None = None,
    docstore: DocStore | None = None,
    corpus: str | Path | Corpus | None = None,
    model: str | None = None,
    device: str | None = None,
    fusion: str = "rrf",
    weights: Sequence[float] | None = None,
    depth: int = 100,
    aggregate: str | None = None,
    name: str | None = None,
) -> Source:
    """Open what a face searches, and check that every indexed id has a text.

    `index_path` is one saved index directory (dense, BM25 or Milvus), or several, fused by
    :class:`~densekit.retriever.hybrid.HybridRetriever` (`fusion` "rrf" or "interpolate", `weights`
    one per index, each searched to `depth`). Or pass a live `retriever` (any Retriever) and its
    `docstore`. Texts come from `docstore`, else `corpus` (BEIR folder, dataset name, corpus.jsonl or
    Corpus), else the first index directory that stores them (docs.jsonl). `model` overrides the
    encoder of dense indexes; `device` is the query encoder's torch device; `aggregate` (maxp,
    firstp, sump) overrides how an index of passages scores documents. `name` is what results
    report as their index (default: the directory names joined by "+", or "memory").
    """
    paths = _paths(index_path)
    if retriever is None:
        if not paths:
            raise DensekitError("give index_path=<saved index directory> (or several), or retriever=<Retriever>")
        retriever, backends = _open_backend(paths, model, device, fusion, weights, depth, aggregate)
    elif not isinstance(retriever, Retriever):
        raise DensekitError(
            f"retriever must keep the Retriever protocol (search(queries, k) -> Run), got {type(retriever).__name__}"
        )
    else:
        backends = [retriever]
    if docstore is None:
        if corpus is not None:
            docstore = DocStore.from_corpus(corpus_from(corpus))
        else:
            docstore = next((s for s in map(DocStore.open, paths) if s is not None), None)
            if docstore is None:
                where = ", ".join(map(str, paths)) or "the retriever"
                raise DensekitError(
                    f"{where}: no document texts (docs.jsonl); pass corpus=<BEIR folder or corpus.jsonl> or "
                    "docstore=, or store them with densekit.index.docstore.attach_documents"
                )
    for backend in backends:
        ids = indexed_ids(backend) or []
        # a passage index is served by a store of its passages, or of their documents (corpus=)
        chunked = hasattr(backend, "search_passages")
        if chunked and len(backends) > 1 and any(parent_id(i) not in docstore for i in ids):
            raise DensekitError(
                "a hybrid over an index of passages returns whole documents: pass corpus=<the documents>"
            )
        missing = [i for i in ids if i not in docstore and not (chunked and parent_id(i) in docstore)]
        if missing:
            raise DensekitError(
                f"{len(missing)} of the {len(ids)} indexed documents have no text in the document store, "
                f"e.g. {missing[0]!r}; the texts do not match the index"
            )
    if name is None:
        name = "+".join(p.name for p in paths) if paths else "memory"
    return Source(retriever, docstore, name)


def check_k(k: Any, what: str = "k") -> int:
    """`k` if it is a positive integer, else a DensekitError naming `what`."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise DensekitError(f"{what} must be a positive integer, got {k!r}")
    return k


def pushes_filter_down(source: Source, condition: MetadataFilter | None) -> bool:
    """Whether the backend applies `condition` inside its own search: a Milvus index does for a metadata
    dict (:func:`densekit.index.milvus_filter.milvus_filter_expression`), so k matching hits come back
    from one search however low the matches rank."""
    return isinstance(condition, dict) and getattr(source.retriever, "index_kind", None) == "milvus"


def _ranked(
    source: Source, query: str, fetch: int, passages: bool, condition: MetadataFilter | None = None
) -> list[tuple[str, float, str]]:
    """(ranked id, score, id of the stored text) for one query, best first."""
    retriever = source.retriever
    if pushes_filter_down(source, condition):
        return [(d, s, d) for d, s in retriever.search({QUERY_ID: query}, fetch, filter=condition).get(QUERY_ID, [])]
    if passages:
        search_passages = getattr(retriever, "search_passages", None)
        if search_passages is None:
            raise DensekitError(f"{source.name}: passages=True needs an index of passages (built with --chunk-size)")
        return [(p, s, p) for p, s in search_passages({QUERY_ID: query}, fetch).get(QUERY_ID, [])]
    if not hasattr(retriever, "best_passages"):
        return [(d, s, d) for d, s in retriever.search({QUERY_ID: query}, fetch).get(QUERY_ID, [])]
    with source.lock:
        ranked = retriever.search({QUERY_ID: query}, fetch).get(QUERY_ID, [])
        best = dict(retriever.best_passages.get(QUERY_ID, {}))
    # the best passage's text when the store holds passages; the document's when it holds documents
    return [(d, s, best[d] if best.get(d) in source.docstore else d) for d, s in ranked]


def search_hits(
    source: Source,
    query: str,
    k: int,
    score_threshold: float | None = None,
    condition: MetadataFilter | None = None,
    fetch_k: int | None = None,
    passages: bool = False,
) -> list[Hit]:
    """The top `k` documents (or passages) for `query` that pass `condition` and score at least
    `score_threshold`.

    Without a filter one search of depth `k` is made; so with a metadata dict on a Milvus index, which
    filters inside the database (:func:`pushes_filter_down`). With one, `fetch_k` candidates (default 4 k)
    are fetched, and fourfold more each round, until `k` pass, the index has no more, or the scores
    fall below the threshold. A filter sees ``Hit.metadata(with_score=False)``: the stored metadata
    plus `doc_id`, `title` (and `passage_id`).
    """
    check_k(k)
    if not isinstance(query, str):
        raise DensekitError(f"the query must be a string, got {type(query).__name__}")
    pushed = pushes_filter_down(source, condition)
    fetch = k if condition is None or pushed else max(k, check_k(fetch_k, "fetch_k") if fetch_k is not None else 4 * k)
    while True:
        ranked = _ranked(source, query, fetch, passages, condition)
        hits: list[Hit] = []
        for hit_id, score, stored_id in ranked:
            if score_threshold is not None and score < score_threshold:
                return hits
            hit = Hit(hit_id, source.docstore.get(stored_id), float(score))
            if condition is not None and not matches(hit.metadata(with_score=False), condition):
                continue
            hit.rank = len(hits) + 1
            hits.append(hit)
            if len(hits) == k:
                return hits
        if len(ranked) < fetch or pushed:  # the database filtered: its k hits are all there are
            return hits
        fetch *= 4


async def asearch_hits(
    source: Source,
    query: str,
    k: int,
    score_threshold: float | None = None,
    condition: MetadataFilter | None = None,
    fetch_k: int | None = None,
    passages: bool = False,
) -> list[Hit]:
    """:func:`search_hits` on a worker thread, so the event loop keeps serving other tasks meanwhile
    (encoding and FAISS search are CPU-bound and release the GIL)."""
    return await asyncio.to_thread(search_hits, source, query, k, score_threshold, condition, fetch_k, passages)


def all_of(*conditions: MetadataFilter | None) -> MetadataFilter | None:
    """One filter that passes when every given filter (None ones ignored) passes."""
    present = [c for c in conditions if c is not None]
    if len(present) <= 1:
        return present[0] if present else None
    return lambda metadata: all(matches(metadata, c) for c in present)
