"""Edits of a saved Milvus index directory: `densekit index remove` and `index update` on Milvus.

The vectors live in the collection, so an edit is two writes: first Milvus (delete or upsert by
primary key), then the directory (``docs.jsonl`` kept in step, the manifest's ``count``), replaced
atomically as every densekit index is. The Milvus write is idempotent (deleting an id twice, or
upserting the same rows again, leaves the same collection), so an edit interrupted between the two
writes is finished by running it again; the directory never lists texts for ids it has not written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from densekit.errors import DensekitError
from densekit.index.docstore import DocStore, StoredDocument, add_docs_to_manifest, write_docs_file
from densekit.index.manifest import MANIFEST_FILE, read_manifest, timestamp
from densekit.index.milvus import MilvusIndex
from densekit.io import atomic_dir, write_json

KIND = "index:milvus"
EDIT_BATCH = 1000  # ids per Milvus request (a query answers at most 16384 rows)


def save_milvus_edit(
    index: MilvusIndex, directory: str | Path, dropped: set[str], added: Sequence[StoredDocument] = ()
) -> None:
    """Rewrite `directory` after its collection changed: the manifest's count from Milvus, and its
    document store (if it keeps one) without `dropped` and with `added` (new or replacing). Atomic."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    manifest["count"] = len(index)
    manifest["updated"] = timestamp()
    store = DocStore.open(directory)
    documents = None
    if store is not None:
        replaced = set(dropped) | {doc.id for doc in added}
        documents = [doc for doc in store if doc.id not in replaced] + list(added)
    with atomic_dir(directory, kind=KIND) as staging:
        files = {name: digest for name, digest in manifest.get("files", {}).items() if name != "docs.jsonl"}
        write_json(staging / MANIFEST_FILE, {**manifest, "files": files})
        if documents is not None:
            add_docs_to_manifest(staging, write_docs_file(staging / "docs.jsonl", documents))


def remove_from_milvus_dir(
    directory: str | Path, ids: Sequence[str], missing_ok: bool = False, token: str | None = None
) -> int:
    """Delete documents by id from a saved Milvus index's collection and its document store; returns how
    many the collection held. Ids it does not hold are an error (checked before anything is deleted)
    unless `missing_ok`."""
    directory = Path(directory)
    index = MilvusIndex.load(directory, token=token)
    wanted = list(dict.fromkeys(ids))
    present: set[str] = set()
    for start in range(0, len(wanted), EDIT_BATCH):
        present |= index.existing(wanted[start : start + EDIT_BATCH])
    unknown = [i for i in wanted if i not in present]
    if unknown and not missing_ok:
        raise DensekitError(f"{directory}: {len(unknown)} ids are not in the collection, e.g. {unknown[0]!r}")
    order = [i for i in wanted if i in present]
    for start in range(0, len(order), EDIT_BATCH):
        index.remove(order[start : start + EDIT_BATCH])
    if present:
        index.flush()
        save_milvus_edit(index, directory, present)
    return len(present)


def update_milvus_dir(
    index: MilvusIndex, directory: str | Path, embeddings, documents: Sequence[StoredDocument]
) -> tuple[int, int]:
    """Upsert `documents` (row i of `embeddings` is ``documents[i]``) into a saved Milvus index's collection,
    in batches, then keep its directory in step; returns ``(replaced, added)``."""
    ids = [doc.id for doc in documents]
    if len(set(ids)) != len(ids):
        raise DensekitError("the documents to update repeat an id")
    replaced = 0
    for start in range(0, len(ids), EDIT_BATCH):
        stop = start + EDIT_BATCH
        replaced += index.update(embeddings[start:stop], ids[start:stop], documents[start:stop])[0]
    index.flush()
    save_milvus_edit(index, directory, set(), documents)
    return replaced, len(ids) - replaced
