"""Saving a passage index: a dense index over passages whose manifest says how they were cut.

The manifest's ``"passages"`` entry (chunk_size, chunk_overlap, aggregate, tokenizer, counts) is what
makes :func:`densekit.retriever.compose.open_index` return documents (aggregated) instead of passages.
It is written inside the staging directory, so a reader sees either no index or a complete one.
The document store of a passage index holds one entry per passage, with metadata ``parent_id``,
``passage``, ``start`` and ``end`` (character offsets in the document's text).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from densekit.chunking import parent_id
from densekit.data import Corpus
from densekit.index.docstore import StoredDocument, save_with_documents
from densekit.index.manifest import MANIFEST_FILE, read_manifest
from densekit.io import atomic_dir, write_json

PASSAGES_KEY = "passages"


def passage_info(directory: str | Path) -> dict | None:
    """The manifest's passage entry of a saved index, or None for an index of whole documents."""
    return read_manifest(directory).get(PASSAGES_KEY)


def record_passages(directory: Path, info: dict) -> None:
    manifest = read_manifest(directory)
    manifest[PASSAGES_KEY] = info
    write_json(directory / MANIFEST_FILE, manifest)


def passage_documents(passages: Corpus, meta: list[dict[str, Any]]) -> list[StoredDocument]:
    """The document-store entries of passages: title, passage text and the passage's metadata."""
    return [
        StoredDocument(pid, title, text, dict(m))
        for pid, title, text, m in zip(passages.ids, passages.titles, passages.body, meta, strict=True)
    ]


def save_passage_index(
    dense_index: Any,
    out: str | Path,
    info: dict,
    documents: Iterable[StoredDocument] | None,
    overwrite: bool = False,
) -> Path:
    """Save `dense_index` (a DenseIndex over passages) to `out` with the passage entry `info` in its
    manifest and, when `documents` is given, the passages' texts; atomically."""

    def save_index(path: Path) -> None:
        dense_index.save(path)
        record_passages(path, info)

    out = Path(out)
    if documents is not None:
        return save_with_documents(save_index, documents, out, overwrite=overwrite)
    with atomic_dir(out, kind="index:dense", overwrite=overwrite) as staging:
        inner = staging / "index"
        save_index(inner)
        for item in inner.iterdir():
            os.replace(item, staging / item.name)
        inner.rmdir()
    return out


def passages_of(index_ids: Iterable[str], documents: Iterable[str]) -> list[str]:
    """The passage ids among `index_ids` that belong to `documents` (document ids)."""
    wanted = set(documents)
    return [pid for pid in index_ids if parent_id(pid) in wanted]
