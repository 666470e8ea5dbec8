"""Milvus index directories: build one from a BEIR corpus, or export a saved FAISS index into Milvus.

The library side of `densekit index build --backend milvus` and `densekit index export --to milvus`.
Encoding goes through the embedding cache as for FAISS, then :func:`~densekit.index.milvus_ingest.ingest`
streams the cached ``.npy`` (memory-mapped) into the collection in batches; with ``resume`` an
interrupted ingestion finishes with each id exactly once. Each function returns what it built as a
dict (what the command prints).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from densekit.errors import DensekitError
from densekit.io import check_output_target

MAX_QUERY_ROWS = 16384  # Milvus answers a query with at most this many rows (resume asks per batch)


@dataclass
class MilvusOptions:
    """Where and how a Milvus collection is written (the token is read, never stored)."""

    uri: str = field(
        default="",
        metadata={"help": "Milvus: a Milvus Lite path (runs/x.db) or a server, http://host:19530."},
    )
    collection: str | None = field(
        default=None, metadata={"help": "Milvus collection (default: from the output directory's name)."}
    )
    token: str | None = field(
        default=None,
        metadata={"help": "Milvus token (user:password or API key; default: $DENSEKIT_MILVUS_TOKEN). Never saved."},
    )
    factory: str = field(default="flat", metadata={"help": "Preset: flat, hnsw, ivf-flat or ivf-pq."})
    num_shards: int = field(
        default=1, metadata={"help": "Milvus shards of the collection (a cluster's write scaling)."}
    )
    consistency_level: str = field(
        default="Strong", metadata={"help": "Milvus consistency: Strong, Bounded, Session or Eventually."}
    )
    insert_batch: int = field(default=1000, metadata={"help": "Rows per Milvus insert request."})
    resume: bool = field(
        default=False,
        metadata={"help": "Finish an interrupted ingestion: skip ids already in the collection, upsert the rest."},
    )
    search_params: dict | None = field(default=None, metadata={"help": "Default efSearch / nprobe."})

    def validate(self) -> None:
        """What can be checked before anything is encoded or connected (the extra is installed, too)."""
        from densekit.index.milvus import CONSISTENCY_LEVELS, INDEX_TYPES, normalize_uri, require_pymilvus

        require_pymilvus()
        normalize_uri(self.uri)
        if self.factory.strip().lower() not in INDEX_TYPES:
            raise DensekitError(
                f"--backend milvus takes --factory {', '.join(INDEX_TYPES)}; {self.factory!r} has no Milvus counterpart"
            )
        if self.consistency_level not in CONSISTENCY_LEVELS:
            raise DensekitError(f"--consistency-level must be one of {', '.join(CONSISTENCY_LEVELS)}")
        if self.num_shards < 1 or not 1 <= self.insert_batch <= MAX_QUERY_ROWS:
            raise DensekitError(f"--num-shards must be >= 1 and --insert-batch within 1..{MAX_QUERY_ROWS}")
        if self.collection is not None and not _valid_collection(self.collection):
            raise DensekitError(f"--collection {self.collection!r}: letters, digits and _ only, starting with a letter")


def _valid_collection(name: str) -> bool:
    return bool(name) and (name[0].isalpha() or name[0] == "_") and all(c.isalnum() or c == "_" for c in name)


def collection_name(out: str | Path, given: str | None) -> str:
    """The collection: as given, or the output directory's name made a valid Milvus name."""
    if given:
        return given
    stem = Path(out).name.split(".")[0] or "densekit"
    name = "".join(c if c.isalnum() else "_" for c in stem)
    return name if name[0].isalpha() else f"dk_{name}"


def create_collection(options: MilvusOptions, out: str | Path, dim: int, n: int, model: dict, overwrite: bool):
    """The collection `options` name (created, reopened with resume, or replaced with `overwrite`)."""
    from densekit.index.milvus import MilvusIndex

    existing = "resume" if options.resume else ("overwrite" if overwrite else "error")
    return MilvusIndex.create(
        options.uri,
        collection_name(out, options.collection),
        dim,
        preset=options.factory,
        n_expected=n,
        model=model,
        token=options.token,
        num_shards=options.num_shards,
        consistency_level=options.consistency_level,
        search_params=options.search_params,
        existing=existing,
    )


def _summary(index, out: str | Path, report, count: int) -> dict:
    return {
        "index": str(out),
        "uri": index.uri,
        "collection": index.collection,
        "index_type": index.index_type,
        "count": count,
        **report.to_dict(),
    }


def build_milvus_index_dir(
    data: str | Path,
    out: str | Path,
    model: str,
    options: MilvusOptions,
    device: str | None = None,
    batch_size: int = 64,
    cache: bool = True,
    store_texts: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
    encoder_backend: str | None = None,
) -> dict:
    """`densekit index build --backend milvus`: encode a BEIR corpus with `model` (cached; on `encoder_backend`,
    e.g. "onnx-int8", when given), write it into a Milvus collection as `options` say, and save the index
    directory `out`; returns what was built."""
    options.validate()
    check_output_target(out, "index:milvus", overwrite)
    from densekit.data import load_dataset
    from densekit.index.cache import encode_corpus
    from densekit.index.docstore import DocStore
    from densekit.index.milvus_ingest import check_uri_outside, ingest, save_milvus_dir
    from densekit.retriever.encoder import Encoder

    check_uri_outside(options.uri, out)
    ds = load_dataset(data)
    encoder = Encoder(model, device=device, batch_size=batch_size, backend=encoder_backend)
    embeddings = encode_corpus(encoder, ds.corpus, cache=cache, show_progress=show_progress)
    index = create_collection(options, out, encoder.dim, len(ds.corpus), encoder.describe(), overwrite)
    store = DocStore.from_corpus(ds.corpus)
    report = ingest(index, embeddings, ds.corpus.ids, store, options.insert_batch, options.resume, show_progress)
    count = len(index)
    save_milvus_dir(index, out, count, store if store_texts else None, overwrite=overwrite)
    return {"dataset": ds.name, "documents": len(ds.corpus), "model": model, "dim": encoder.dim} | _summary(
        index, out, report, count
    )


def export_to_milvus(
    directory: str | Path,
    options: MilvusOptions,
    out: str | Path | None = None,
    vectors: str | Path | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    texts: str | Path | None = None,
) -> dict:
    """`densekit index export --to milvus`: move a saved FAISS index's vectors and documents into Milvus
    without re-encoding (vectors from `vectors`, the embedding cache, or the FAISS file; see
    :mod:`densekit.index.milvus_export`) and save a Milvus index directory at `out` (default: beside
    `directory`, ``<name>-milvus.idx``). `directory` may also be a shard directory (`densekit index
    encode`, e.g. written by torchrun ranks on several nodes); `texts` (a BEIR corpus) then gives the
    documents' texts."""
    options.validate()
    directory = Path(directory)
    out = Path(out) if out is not None else directory.with_name(f"{directory.name.split('.')[0]}-milvus.idx")
    check_output_target(out, "index:milvus", overwrite)
    from densekit.index.dense import DenseIndex
    from densekit.index.docstore import DocStore
    from densekit.index.manifest import read_manifest
    from densekit.index.milvus_export import index_vectors, shard_source
    from densekit.index.milvus_ingest import check_uri_outside, ingest, save_milvus_dir
    from densekit.index.shards import PLAN_FILE
    from densekit.progress import announce

    check_uri_outside(options.uri, out)
    if (directory / PLAN_FILE).is_file():
        ids, array, model = shard_source(directory)
        store = None
        if texts is not None:
            from densekit.data import load_dataset

            store = DocStore.from_corpus(load_dataset(texts).corpus)
            missing = [i for i in ids if i not in store]
            if missing:
                raise DensekitError(f"{texts}: {len(missing)} encoded documents have no text, e.g. {missing[0]!r}")
        target = create_collection(options, out, array.shape[1], len(ids), model, overwrite)
        report = ingest(target, array, ids, store, options.insert_batch, options.resume, show_progress)
        count = len(target)
        save_milvus_dir(target, out, count, store, overwrite=overwrite)
        return {"from": str(directory), "vectors_from": "shards"} | _summary(target, out, report, count)
    if texts is not None:
        raise DensekitError("--texts gives the texts of a shard directory; a saved index has its own")
    manifest = read_manifest(directory)
    if manifest["kind"] != "dense":
        raise DensekitError(f"{directory}: a {manifest['kind']} index; export moves a dense (FAISS) index")
    if "passages" in manifest:
        raise DensekitError(f"{directory}: an index of passages; export moves an index of whole documents")
    index = DenseIndex.load(directory, mmap=True)
    store = DocStore.open(directory)
    if store is None:
        announce(f"{directory} stores no texts: the collection's title and text stay empty")
    array, source = index_vectors(index, store, vectors)
    announce(f"exporting {len(index)} vectors from {source}, not re-encoding")
    target = create_collection(options, out, index.dim, len(index), index.model, overwrite)
    report = ingest(target, array, index.ids, store, options.insert_batch, options.resume, show_progress)
    count = len(target)
    save_milvus_dir(target, out, count, store, overwrite=overwrite)
    return {"from": str(directory), "vectors_from": source} | _summary(target, out, report, count)
