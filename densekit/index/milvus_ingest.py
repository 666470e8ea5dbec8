"""Filling a Milvus collection from memory-mapped vectors, resumably, and saving its index directory.

:func:`ingest` streams rows from any array-like of vectors (the embedding cache's ``.npy`` opened
with mmap, a shard directory, a FAISS index read back) in batches, so a corpus never has to fit in
memory. Ingestion is idempotent and resumable: every row is keyed by its document id (the primary
key); with ``resume`` each batch first asks Milvus which of its ids are already there (read with
strong consistency), skips them and upserts the rest, so a run killed at any moment and run again
with ``resume`` ends with each id exactly once, and reports how many it found already there.

:func:`save_milvus_dir` writes the index directory (``manifest.json`` of kind ``milvus``, and
``docs.jsonl`` with the texts when given) atomically, like every densekit index.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from densekit.errors import DensekitError
from densekit.faults import fault_point
from densekit.index.docstore import StoredDocument, add_docs_to_manifest, write_docs_file
from densekit.index.manifest import MANIFEST_FILE
from densekit.index.milvus import MilvusIndex
from densekit.io import atomic_dir, write_json
from densekit.progress import progress_bar

INSERT_BATCH = 1000
KIND = "index:milvus"


@dataclass
class IngestReport:
    """What :func:`ingest` did: rows written, rows found already there (resume), seconds, throughput."""

    written: int
    already_there: int
    seconds: float

    @property
    def vectors_per_second(self) -> float:
        return round(self.written / self.seconds, 1) if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "written": self.written,
            "already_there": self.already_there,
            "seconds": round(self.seconds, 2),
            "vectors_per_second": self.vectors_per_second,
        }


def ingest(
    index: MilvusIndex,
    vectors: Any,
    ids: Sequence[str],
    documents: Any = None,
    batch_size: int = INSERT_BATCH,
    resume: bool = False,
    show_progress: bool = True,
) -> IngestReport:
    """Write `vectors` (row i is document `ids[i]`; sliced block by block) into `index`'s collection.

    `documents` has ``.get(id) -> StoredDocument`` (a DocStore) for the title, text and metadata
    columns, or is None (empty columns). Without `resume` the collection must be new (plain inserts);
    with it, ids already there are skipped and the rest upserted. The collection is flushed at the end.
    """
    if len(vectors) != len(ids):
        raise DensekitError(f"{len(vectors)} vectors but {len(ids)} ids")
    if batch_size < 1:
        raise DensekitError(f"--insert-batch must be >= 1, got {batch_size}")
    start_time = time.perf_counter()
    written = already = 0
    bar = progress_bar(f"writing to Milvus {index.collection}", total=len(ids), unit="vec") if show_progress else None
    for start in range(0, len(ids), batch_size):
        batch_ids = list(ids[start : start + batch_size])
        block = np.asarray(vectors[start : start + batch_size], dtype=np.float32)
        if resume:
            present = index.existing(batch_ids)
            keep = [j for j, doc_id in enumerate(batch_ids) if doc_id not in present]
            already += len(batch_ids) - len(keep)
            batch_ids, block = [batch_ids[j] for j in keep], block[keep]
        docs = [documents.get(doc_id) for doc_id in batch_ids] if documents is not None else None
        index.write(block, batch_ids, docs, upsert=resume)
        written += len(batch_ids)
        fault_point("milvus-batch")
        if bar is not None:
            bar.update(min(batch_size, len(ids) - start))
    if bar is not None:
        bar.close()
    index.flush()
    return IngestReport(written, already, time.perf_counter() - start_time)


def check_uri_outside(uri: str, directory: str | Path) -> None:
    """A Milvus Lite data path must not lie inside the index directory (saving replaces that directory)."""
    if not uri or "://" in uri:
        return
    db, directory = Path(uri).expanduser().resolve(), Path(directory).resolve()
    if db == directory or directory in db.parents:
        raise DensekitError(f"the Milvus Lite data {db} cannot live inside the index directory {directory}")


def save_milvus_dir(
    index: MilvusIndex,
    directory: str | Path,
    count: int,
    documents: Iterable[StoredDocument] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the index directory of `index` (manifest of kind milvus; `documents` as docs.jsonl), atomically."""
    directory = Path(directory)
    check_uri_outside(index.uri, directory)
    with atomic_dir(directory, kind=KIND, overwrite=overwrite) as staging:
        write_json(staging / MANIFEST_FILE, index.manifest(count, {}))
        if documents is not None:
            written = write_docs_file(staging / "docs.jsonl", documents)
            add_docs_to_manifest(staging, written)
    return directory
