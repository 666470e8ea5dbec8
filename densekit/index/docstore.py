"""Document texts beside a saved index: `docs.jsonl`, listed with its sha256 in the index manifest.

A FAISS or BM25 index stores vectors or postings and document ids, not the texts. A RAG retriever
must hand back the texts, so an index directory may also hold::

    docs.jsonl      {"_id", "title", "text", "metadata": {...}} one document per line

and its manifest lists the file under ``files`` (sha256) and under ``documents`` (file name and
count). Index loaders that do not know the file ignore it, so the change is backward compatible;
an index saved without texts can be given them later with :func:`attach_documents`, or a BEIR corpus
can serve as the store at load time (:meth:`DocStore.from_corpus`).

The design choice: a separate module over the manifest rather than a field of `DenseIndex`, so the
same store works for dense, BM25 and hybrid indexes alike.

Example::

    attach_documents("scifact.idx", load_dataset("scifact").corpus)   # writes docs.jsonl
    store = DocStore.open("scifact.idx")
    store.get("4983").title
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from densekit.data import Corpus, join_title_text, parse_json_object
from densekit.errors import DensekitError, InputError, IntegrityError
from densekit.index.manifest import MANIFEST_FILE, read_manifest
from densekit.io import atomic_dir, atomic_file, read_lock, sha256_file, write_json, write_lock

DOCS_FILE = "docs.jsonl"


@dataclass
class StoredDocument:
    """One document: id, title, body text and free metadata (JSON-serialisable values)."""

    id: str
    title: str = ""
    text: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def content(self) -> str:
        """Title and text joined, as encoders and BM25 see the document."""
        return join_title_text(self.title, self.text)

    def to_json(self) -> dict:
        return {"_id": self.id, "title": self.title, "text": self.text, "metadata": self.metadata}


def _parse_line(path: Path, number: int, line: str) -> StoredDocument:
    obj = parse_json_object(path, number, line)
    doc_id = obj.get("_id")
    if not isinstance(doc_id, str) or not doc_id:
        raise InputError(path, f'"_id" must be a non-empty string, got {doc_id!r}', number)
    for key in ("title", "text"):
        if not isinstance(obj.get(key, ""), str):
            raise InputError(path, f'"{key}" must be a string, got {type(obj[key]).__name__}', number)
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InputError(path, f'"metadata" must be a JSON object, got {type(metadata).__name__}', number)
    return StoredDocument(doc_id, obj.get("title", ""), obj.get("text", ""), metadata)


class DocStore:
    """Look up documents by id, from memory or from a `docs.jsonl` read on demand.

    Opened from a file, the store keeps only each document's byte offset in memory and reads a
    document when asked, so a large corpus costs one integer per document. It keeps the file open,
    so the documents it serves stay the ones it checked even if the index directory is replaced
    by a newer save meanwhile (the old file lives on until the store is closed).
    """

    def __init__(
        self,
        documents: Mapping[str, StoredDocument] | None = None,
        path: Path | None = None,
        offsets: dict[str, int] | None = None,
    ) -> None:
        self._documents = dict(documents or {})
        self._path = path
        self._offsets = offsets or {}
        self._handle = open(path, "rb") if path is not None and offsets else None  # noqa: SIM115
        self._lock = threading.Lock()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self._handle.close()

    @classmethod
    def from_documents(cls, documents: Iterable[StoredDocument]) -> DocStore:
        store: dict[str, StoredDocument] = {}
        for doc in documents:
            if doc.id in store:
                raise DensekitError(f"duplicate document id {doc.id!r}")
            store[doc.id] = doc
        return cls(store)

    @classmethod
    def from_corpus(cls, corpus: Corpus) -> DocStore:
        """A store over a BEIR corpus (no metadata)."""
        return cls({i: StoredDocument(i, t, b) for i, t, b in zip(corpus.ids, corpus.titles, corpus.body, strict=True)})

    @classmethod
    def read(cls, path: str | Path) -> DocStore:
        """Index a `docs.jsonl` by byte offset, validating every line (id, field types, no duplicates)."""
        path = Path(path)
        offsets: dict[str, int] = {}
        with open(path, "rb") as handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    doc = _parse_line(path, number, raw.decode("utf-8"))
                    if doc.id in offsets:
                        raise InputError(path, f'duplicate "_id" {doc.id!r}', number)
                    offsets[doc.id] = offset
                offset += len(raw)
        return cls(path=path, offsets=offsets)

    @classmethod
    def open(cls, directory: str | Path) -> DocStore | None:
        """The store of an index directory, checked against the manifest; None when it has none."""
        directory = Path(directory)
        with read_lock(directory):
            manifest = read_manifest(directory)
            expected = manifest.get("files", {}).get(DOCS_FILE)
            if expected is None:
                return None
            path = directory / DOCS_FILE
            if not path.is_file():
                raise IntegrityError(f"{path}: listed in the manifest but missing")
            if sha256_file(path) != expected:
                raise IntegrityError(f"{path}: sha256 differs from the manifest's (the file was altered)")
            store = cls.read(path)
        count = manifest.get("documents", {}).get("count")
        if count is not None and count != len(store):
            raise IntegrityError(f"{path}: holds {len(store)} documents, the manifest says {count}")
        return store

    def __len__(self) -> int:
        return len(self._documents) + len(self._offsets)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._documents or doc_id in self._offsets

    def ids(self) -> list[str]:
        return list(self._documents) + list(self._offsets)

    def get(self, doc_id: str) -> StoredDocument:
        if doc_id in self._documents:
            return self._documents[doc_id]
        if doc_id not in self._offsets or self._handle is None:
            raise IntegrityError(f"document {doc_id!r} is in the index but not in the document store")
        with self._lock:
            self._handle.seek(self._offsets[doc_id])
            raw = self._handle.readline()
        return _parse_line(self._path, 0, raw.decode("utf-8"))

    def __iter__(self):
        for doc_id in self.ids():
            yield self.get(doc_id)


def write_docs_file(path: str | Path, documents: Iterable[StoredDocument]) -> int:
    """Write documents as JSON lines atomically; returns how many were written."""
    count = 0
    with atomic_file(path) as handle:
        for doc in documents:
            handle.write(json.dumps(doc.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def add_docs_to_manifest(directory: Path, count: int) -> None:
    """List an already-written `docs.jsonl` in the manifest (sha256 and count), rewriting it atomically."""
    manifest = read_manifest(directory)
    manifest.setdefault("files", {})[DOCS_FILE] = sha256_file(directory / DOCS_FILE)
    manifest["documents"] = {"file": DOCS_FILE, "count": count}
    write_json(directory / MANIFEST_FILE, manifest)


def attach_documents(
    directory: str | Path, documents: Corpus | Iterable[StoredDocument], index_ids: Iterable[str] | None = None
) -> int:
    """Store the texts of an already saved index in it; returns the number of documents written.

    With `index_ids` (the ids the index holds), every one of them must have a document, so that the
    retriever never finds a hit it cannot return.
    """
    directory = Path(directory)
    read_manifest(directory)
    docs = list(DocStore.from_corpus(documents)) if isinstance(documents, Corpus) else list(documents)
    if index_ids is not None:
        known = {d.id for d in docs}
        missing = [i for i in index_ids if i not in known]
        if missing:
            raise DensekitError(f"{len(missing)} indexed documents have no text, e.g. {missing[0]!r}")
    with write_lock(directory):
        count = write_docs_file(directory / DOCS_FILE, docs)
        add_docs_to_manifest(directory, count)
    return count


def save_with_documents(
    save_index,
    documents: Iterable[StoredDocument],
    directory: str | Path,
    kind: str = "index:dense",
    overwrite: bool = False,
) -> Path:
    """Save an index and its documents as one directory, atomically.

    `save_index(path)` writes the index directory (e.g. ``DenseRetriever.save``); it runs inside a
    staging directory, `docs.jsonl` is added beside it, and the whole is renamed into place only when
    everything succeeded, so a reader never sees an index without its texts. `kind` is the index's
    ("index:dense", "index:bm25"): an existing `directory` of another kind, or not written by densekit,
    is refused unless `overwrite` (:func:`densekit.io.check_output_target`).
    """
    directory = Path(directory)
    with atomic_dir(directory, kind=kind, overwrite=overwrite) as staging:
        inner = staging / "index"
        save_index(inner)
        for item in inner.iterdir():
            os.replace(item, staging / item.name)
        inner.rmdir()
        count = write_docs_file(staging / DOCS_FILE, documents)
        add_docs_to_manifest(staging, count)
    return directory
