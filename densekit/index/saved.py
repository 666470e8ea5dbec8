"""Operations on saved dense index directories: describe (`index info`), change search defaults, remove
documents, and save an edited index with its document store kept in step."""

from __future__ import annotations

from pathlib import Path

from densekit.chunking import parent_id
from densekit.errors import DensekitError, IntegrityError
from densekit.index.binary import read_index
from densekit.index.dense import DenseIndex
from densekit.index.faiss_ops import mmap_flags, structure
from densekit.index.manifest import INDEX_FILE, MANIFEST_FILE, read_manifest, verify_files
from densekit.io import read_lock, write_json, write_lock


def describe_saved(directory: str | Path, verify: bool = True) -> dict:
    """What `densekit index info` shows: type, vector count, dimension, memory, parameters, model.

    Reads the manifest (checked), verifies every listed file against its sha256 unless `verify` is
    False (``verified`` in the result says which), and opens the FAISS file memory-mapped (cheap for
    any size) for its structure; ``index_bytes`` is the size of the FAISS file, which is what the
    index occupies in memory; ``bytes_on_disk`` counts every file under the directory.
    """
    directory = Path(directory)
    with read_lock(directory):
        manifest = read_manifest(directory)
        if verify:
            verify_files(directory, manifest)
    info = {
        key: manifest.get(key)
        for key in (
            "kind",
            "factory",
            "preset",
            "metric",
            "count",
            "dim",
            "train_sample",
            "search_params",
            "model",
            "densekit_version",
            "created",
            "documents",
            "rescore",
        )
    }
    info["verified"] = verify
    info["bytes_on_disk"] = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    if manifest.get("kind", "dense") != "dense" or not (directory / INDEX_FILE).is_file():
        return {**manifest, **info}
    size = (directory / INDEX_FILE).stat().st_size
    count, dim = manifest["count"], manifest["dim"]
    info.update(
        index_bytes=size,
        bytes_per_vector=round(size / max(count, 1), 1),
        flat_bytes=count * dim * 4,
        fraction_of_flat=round(size / max(count * dim * 4, 1), 4),
    )
    try:
        factory = manifest["factory"]
        info.update(structure(read_index(str(directory / INDEX_FILE), factory, mmap_flags(factory))))
    except RuntimeError as exc:
        raise IntegrityError(f"{directory / INDEX_FILE}: FAISS cannot read it ({str(exc).splitlines()[-1]})") from None
    return info


def set_saved_search_params(directory: str | Path, params: dict) -> dict:
    """Change the default search parameters in a saved index's manifest; returns the new defaults."""
    directory = Path(directory)
    index = DenseIndex.load(directory, verify=False, mmap=True)
    index.set_search_params(params)
    with write_lock(directory):
        manifest = read_manifest(directory)
        manifest["search_params"] = index.search_params
        write_json(directory / MANIFEST_FILE, manifest)
    return index.search_params


def save_with_texts(index: DenseIndex, directory: Path, dropped: set[str], added: list | None = None) -> None:
    """Save `index` over `directory`, keeping its document store (docs.jsonl) in step: documents in
    `dropped` leave it, `added` (StoredDocument) join it. Atomic: the old directory or the new one."""
    from densekit.index.docstore import DocStore, save_with_documents

    store = DocStore.open(directory)
    if store is None:
        index.save(directory)
        return
    added = added or []
    replaced = dropped | {doc.id for doc in added}
    documents = [doc for doc in store if doc.id not in replaced] + added
    passages = read_manifest(directory).get("passages")
    if passages is None:
        save_with_documents(index.save, documents, directory)
        return
    from densekit.index.passage_index import record_passages

    passages = {**passages, "count": len(index), "documents": len({parent_id(i) for i in index.ids})}

    def save_index(path: Path) -> None:
        index.save(path)
        record_passages(path, passages)

    save_with_documents(save_index, documents, directory)


def remove_from_saved(directory: str | Path, ids: list[str], missing_ok: bool = False) -> int:
    """Remove documents by id from a saved index (and its document store); returns how many index entries
    went (in an index of passages, a document's id removes all its passages)."""
    directory = Path(directory)
    if read_manifest(directory).get("kind") == "milvus":
        from densekit.index.milvus_saved import remove_from_milvus_dir

        return remove_from_milvus_dir(directory, ids, missing_ok=missing_ok)
    index = DenseIndex.load(directory)
    if read_manifest(directory).get("passages"):
        from densekit.index.passage_index import passages_of

        passages = passages_of(index.ids, ids)
        unknown = sorted(set(ids) - {parent_id(p) for p in passages})
        if unknown and not missing_ok:
            raise DensekitError(f"{directory}: no document {unknown[0]!r} in this index of passages")
        ids = passages
    removed = index.remove(ids, missing_ok=missing_ok)
    if removed:
        save_with_texts(index, directory, set(ids))
    return removed
