"""Sharded encoding straight into Milvus: `densekit index encode ... --backend milvus --uri URI --index DIR`.

For corpora whose encoding does not fit one machine's time budget. Under torchrun (one node or many,
joined by the c10d rendezvous) every rank encodes its shards (r, r + w, ...; resumable ``.npy`` files
in the shard directory, :mod:`densekit.index.shards`) and writes its own shards' vectors into the one
collection, so no single process streams the whole corpus:

1. rank 0 creates the collection (or, with ``resume``, reopens it after checking the model); the
   other ranks learn the outcome (an error fails every rank alike) and then open it;
2. each rank encodes its unfinished shards, then ingests each of its shards (memory-mapped, checked
   against its sha256): plain inserts into a new collection, or with ``resume`` skipping the ids
   already there and upserting the rest, so a rerun after any interruption ends with each id once;
3. after a barrier (every rank's rows written), rank 0 flushes, counts and writes the index directory
   (manifest of kind milvus, ``docs.jsonl``).

Several processes write concurrently, so the Milvus URI must be a server (``http://host:19530``; Milvus
Lite's own ``python -m milvus_lite server`` on one machine): a Milvus Lite file opens in one process
only, and is refused under torchrun.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from densekit.errors import DensekitError, IntegrityError
from densekit.index.shards import read_plan, shard_name
from densekit.io import check_output_target, sha256_file
from densekit.progress import announce
from densekit.retriever.milvus_indexing import MilvusOptions, create_collection


def read_shard(directory: str | Path, shard: int, dim: int) -> tuple[list[str], np.ndarray]:
    """`(ids, embeddings)` of one finished shard, the embeddings memory-mapped and checked by sha256."""
    directory = Path(directory)
    name = shard_name(shard)
    meta = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    path = directory / f"{name}.npy"
    if sha256_file(path) != meta["sha256"]:
        raise IntegrityError(f"{path}: sha256 differs from {name}.json (the file was altered or truncated)")
    embeddings = np.load(path, mmap_mode="r")
    if embeddings.shape != (meta["rows"], dim) or len(meta["ids"]) != meta["rows"]:
        raise IntegrityError(f"{path}: shape {embeddings.shape}, expected ({meta['rows']}, {dim})")
    return meta["ids"], embeddings


def _check_uri_for_ranks(uri: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "://" not in uri:
        raise DensekitError(
            f"--uri {uri}: a Milvus Lite file opens in one process only; under torchrun give a Milvus server "
            "(http://host:19530, or `python -m milvus_lite server --data-dir DIR --port PORT` on one machine)"
        )


def encode_shards_into_milvus(
    data: str | Path,
    shards_dir: str | Path,
    out: str | Path,
    model: str,
    options: MilvusOptions,
    shard_size: int = 100_000,
    device: str | None = None,
    batch_size: int = 64,
    store_texts: bool = True,
    truncate_dim: int | None = None,
    encoder_backend: str | None = None,
    show_progress: bool = True,
) -> dict | None:
    """Encode the BEIR corpus `data` with `model` into `shards_dir` (each torchrun rank its shards), write
    each rank's vectors into the Milvus collection `options` name, and save the index directory `out`
    (rank 0). Returns the summary on rank 0, None on the other ranks."""
    from densekit.data import load_dataset
    from densekit.distributed import all_gather_object, barrier, broadcast_object, finish_distributed, init_distributed
    from densekit.index import shards as sharding
    from densekit.index.docstore import DocStore
    from densekit.index.milvus_ingest import check_uri_outside, ingest, save_milvus_dir
    from densekit.retriever.encoder import Encoder
    from densekit.retriever.indexing import torchrun_device

    options.validate()
    _check_uri_for_ranks(options.uri)
    if shard_size < 1:
        raise DensekitError(f"--shard-size must be >= 1, got {shard_size}")
    check_output_target(out, "index:milvus")
    check_uri_outside(options.uri, out)
    group = init_distributed("cpu")  # gloo: only barriers and small objects travel between ranks
    rank, world = group.rank, group.world_size
    ds = load_dataset(data)
    encoder = Encoder(
        model,
        device=torchrun_device(device, world),
        batch_size=batch_size,
        truncate_dim=truncate_dim,
        backend=encoder_backend,
    )
    n, dim, described = len(ds.corpus), int(encoder.dim), encoder.describe()
    index, failure = None, None
    if rank == 0:
        try:
            index = create_collection(options, out, dim, n, described, overwrite=False)
        except DensekitError as exc:
            failure = str(exc)
    failure = broadcast_object(failure, group)
    if failure is not None:
        finish_distributed(group)
        raise DensekitError(failure)
    if index is None:  # ranks > 0 open the collection rank 0 made (and check it)
        index = create_collection(replace(options, resume=True), out, dim, n, described, False)
    plan = sharding.encode_shards(encoder, ds.corpus, shards_dir, shard_size, rank, world, show_progress)
    store = DocStore.from_corpus(ds.corpus)
    written = already = 0
    seconds = 0.0
    for shard in range(rank, plan.shards, world):
        ids, embeddings = read_shard(shards_dir, shard, plan.dim)
        report = ingest(index, embeddings, ids, store, options.insert_batch, options.resume, show_progress=False)
        written, already = written + report.written, already + report.already_there
        seconds += report.seconds
    totals = all_gather_object((written, already, seconds), group)
    barrier(group)  # every rank's rows are in the collection
    finish_distributed(group)
    if rank != 0:
        return None
    index.flush()
    count = len(index)
    if count < n:
        raise IntegrityError(f"{index.uri}: collection {index.collection} holds {count} rows, the corpus {n}")
    if count > n:
        announce(f"{index.collection} holds {count} rows, {count - n} more than the corpus (from an earlier run?)")
    save_milvus_dir(index, out, count, store if store_texts else None)
    return {
        "shards_dir": str(shards_dir),
        "dataset": ds.name,
        "documents": n,
        "shards": read_plan(shards_dir).shards,
        "dim": dim,
        "model": model,
        "world_size": world,
        "index": str(out),
        "uri": index.uri,
        "collection": index.collection,
        "index_type": index.index_type,
        "count": count,
        "written": sum(w for w, _, _ in totals),
        "already_there": sum(a for _, a, _ in totals),
        # all ranks together: each rank's rows over its own ingestion time
        "vectors_per_second": round(sum(w / s for w, _, s in totals if s > 0), 1),
    }
