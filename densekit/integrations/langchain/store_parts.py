"""The parts of a :class:`~densekit.integrations.langchain.vectorstore.DensekitVectorStore`: its document
texts (a saved DocStore under the changes made since), how foreign embeddings are described in a
manifest, and opening a saved index directory with every check (the texts cover the index; the
embeddings are the ones that made the vectors: a densekit model by fingerprint, foreign LangChain
embeddings by class and model name)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from densekit.errors import DensekitError, IntegrityError
from densekit.index.dense import DenseIndex
from densekit.index.docstore import DocStore, StoredDocument
from densekit.index.manifest import read_manifest
from densekit.integrations.common import indexed_ids
from densekit.integrations.langchain.embeddings import DensekitEmbeddings
from densekit.progress import progress_bar


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def json_metadata(doc_id: str, metadata: dict | None) -> dict:
    """A JSON round trip: refuses what cannot be saved, and stores what a reload will return."""
    try:
        return json.loads(json.dumps(dict(metadata or {})))
    except (TypeError, ValueError) as exc:
        raise DensekitError(f"document {doc_id!r}: metadata must be JSON-serialisable ({exc})") from None


def describe_embeddings(embedding: Embeddings, normalize: bool) -> dict:
    """What a manifest records about LangChain embeddings densekit cannot fingerprint."""
    kind = type(embedding)
    names = (getattr(embedding, a, None) for a in ("model", "model_name", "model_id"))
    return {
        "embeddings": f"{kind.__module__}.{kind.__qualname__}",
        "embeddings_model": next((n for n in names if isinstance(n, str)), None),
        "normalize": normalize,
    }


def as_embeddings(embedding: Any) -> Embeddings | None:
    from densekit.retriever.encoder import Encoder

    if embedding is None or isinstance(embedding, Embeddings):
        return embedding
    if isinstance(embedding, (str, Path, Encoder)):
        return DensekitEmbeddings(embedding)
    raise DensekitError(
        "embedding must be LangChain Embeddings, or a densekit model name, folder or Encoder; "
        f"got {type(embedding).__name__}"
    )


def embed_foreign(embedding: Embeddings, texts: list[str], show_progress: bool, batch: int | None) -> np.ndarray:
    """`embedding.embed_documents(texts)` as a float32 array, `batch` texts per call (default: all in one
    call, so the embeddings batch as they see fit, or 256 a call under a progress bar)."""
    step = batch or (256 if show_progress else max(len(texts), 1))
    bar = progress_bar("embedding documents", total=len(texts), unit="text") if show_progress else None
    blocks = []
    for start in range(0, len(texts), step):
        blocks.append(np.asarray(embedding.embed_documents(texts[start : start + step]), dtype=np.float32))
        if bar is not None:
            bar.update(len(texts[start : start + step]))
    if bar is not None:
        bar.close()
    vectors = np.vstack(blocks)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise DensekitError(f"{type(embedding).__name__} returned {vectors.shape} for {len(texts)} texts")
    return vectors


class StoreDocuments:
    """The texts of a store: a saved DocStore (read lazily) under the documents changed since."""

    def __init__(self, base: DocStore | None = None) -> None:
        self.base = base
        self.changed: dict[str, StoredDocument | None] = {}

    def __contains__(self, doc_id: object) -> bool:
        if doc_id in self.changed:
            return self.changed[doc_id] is not None
        return self.base is not None and doc_id in self.base

    def get(self, doc_id: str) -> StoredDocument:
        doc = self.changed.get(doc_id) if doc_id in self.changed else None
        if doc is None and doc_id not in self.changed and self.base is not None:
            return self.base.get(doc_id)
        if doc is None:
            raise IntegrityError(f"document {doc_id!r} is in the index but not in the document store")
        return doc

    def put(self, documents: Iterable[StoredDocument]) -> None:
        self.changed.update((d.id, d) for d in documents)

    def drop(self, ids: Iterable[str]) -> None:
        self.changed.update((i, None) for i in ids)


def _check_texts(path: Path, ids: list[str] | None, docstore: DocStore) -> None:
    missing = [i for i in ids or [] if i not in docstore]
    if missing:
        raise DensekitError(
            f"{path}: {len(missing)} of the {len(ids)} indexed documents have no text in docs.jsonl, "
            f"e.g. {missing[0]!r}"
        )


def _check_foreign(path: Path, recorded: dict, embedding: Embeddings | None) -> Embeddings:
    """Foreign embeddings must be given, and be of the recorded class and model name."""
    made_by = recorded["embeddings"] + (
        f" ({recorded['embeddings_model']})" if recorded.get("embeddings_model") else ""
    )
    if embedding is None:
        raise DensekitError(f"{path}: the vectors were made by {made_by}; pass the same embeddings as embedding=")
    given = describe_embeddings(embedding, bool(recorded.get("normalize", True)))
    for key in ("embeddings", "embeddings_model"):
        if given[key] != recorded.get(key):
            raise IntegrityError(
                f"{path}: the vectors were made by {made_by}, not by the given {given['embeddings']}"
                f"{' (' + given['embeddings_model'] + ')' if given['embeddings_model'] else ''}; "
                "searching them with other embeddings would give wrong results"
            )
    return embedding


def open_store_parts(
    path: Path, embedding: Embeddings | None, model: str | None = None, device: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for :class:`DensekitVectorStore` over the saved index at `path`."""
    from densekit.retriever.compose import open_index
    from densekit.retriever.dense import DenseRetriever, check_model

    manifest = read_manifest(path)
    kind = manifest.get("kind", "dense")
    docstore = DocStore.open(path)
    if docstore is None:
        raise DensekitError(
            f"{path}: the index holds no document texts (docs.jsonl); store them with "
            "densekit.index.docstore.attach_documents(path, corpus)"
        )
    if kind in ("bm25", "milvus"):
        if embedding is not None or (kind == "bm25" and model is not None):
            raise DensekitError(
                f"{path}: a {kind} index is searched by text with what its manifest names; embedding= does not apply"
                + (" (model= overrides its encoder)" if kind == "milvus" else "")
            )
        backend = open_index(path, model=model, device=device)
        _check_texts(path, indexed_ids(backend), docstore)
        return {"backend": backend, "docstore": docstore, "kind": kind}
    if kind != "dense":
        raise DensekitError(f"{path}: a {kind} index cannot be opened as a LangChain vector store")
    recorded = manifest.get("model") or {}
    if "embeddings" in recorded:
        if model is not None:
            raise DensekitError(f"{path}: the vectors were made by {recorded['embeddings']}; model= does not apply")
        parts = {"embedding": _check_foreign(path, recorded, embedding), "normalize": recorded.get("normalize", True)}
        index = DenseIndex.load(path)
    elif embedding is None:
        retriever = DenseRetriever.load(path, device=device, model=model)
        parts = {"embedding": DensekitEmbeddings(retriever.encoder)}
        index = retriever.index
    elif isinstance(embedding, DensekitEmbeddings):
        if model is not None:
            raise DensekitError("pass model= or embedding=, not both")
        check_model(path, recorded, embedding.encoder)
        index = DenseIndex.load(path)
        if index.dim != embedding.dim:
            raise IntegrityError(f"{path}: vectors of dimension {index.dim}, the model gives {embedding.dim}")
        parts = {"embedding": embedding}
    else:
        raise DensekitError(
            f"{path}: the vectors were made by the densekit model {recorded.get('model')!r}; omit embedding= (the "
            f"model is loaded from the manifest) or pass a DensekitEmbeddings of it, not a {type(embedding).__name__}"
        )
    _check_texts(path, index.ids, docstore)
    return {**parts, "index": index, "docstore": docstore, "kind": "dense", "passages": "passages" in manifest}
