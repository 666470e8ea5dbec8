"""Index directories from BEIR corpora: encode and build (dense), BM25, or encode into resumable shards first.

The library side of `densekit index build`, `index encode` and `index from-shards`. Each function
returns what it built as a dict (what the command prints); timing and printing are the caller's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from densekit.chunking import ChunkConfig
from densekit.data import Corpus
from densekit.index.config import IndexBuildConfig
from densekit.io import check_output_target


def save_dense_index(
    index: Any, out: str | Path, corpus: Corpus | None, store_texts: bool = True, overwrite: bool = False
) -> Path:
    """Save a DenseIndex (or DenseRetriever) to `out`, with the documents' texts (docs.jsonl) when asked.

    An existing `out` that is not a dense index densekit wrote is refused unless `overwrite`."""
    from densekit.index.dense import DenseIndex

    dense_index = index if isinstance(index, DenseIndex) else index.index  # a retriever's save adds texts itself
    if store_texts and corpus is not None:
        from densekit.index.docstore import DocStore, save_with_documents

        return save_with_documents(dense_index.save, DocStore.from_corpus(corpus), Path(out), overwrite=overwrite)
    return dense_index.save(out, overwrite=overwrite)


def build_dense_index_dir(
    data: str | Path,
    out: str | Path,
    model: str,
    config: IndexBuildConfig | None = None,
    device: str | None = None,
    batch_size: int = 64,
    cache: bool = True,
    store_texts: bool = True,
    overwrite: bool = False,
    chunking: ChunkConfig | None = None,
    truncate_dim: int | None = None,
    encoder_backend: str | None = None,
) -> dict:
    """`densekit index build`: encode a BEIR corpus with `model`, index it as `config` says, save it to `out`
    (with the texts when `store_texts`); returns what was built. `truncate_dim` keeps a prefix of each
    embedding (the manifest records it, so searching encodes queries the same way). `encoder_backend`
    ("onnx", "openvino-int8"...) runs the encoder on ONNX Runtime or OpenVINO; the manifest records it too.

    With `chunking` (a chunk size), the documents are split into passages first (:mod:`densekit.chunking`)
    and the index holds passages; searching it returns documents, aggregated as `chunking.aggregate` says."""
    config = config or IndexBuildConfig()
    config.validate()  # before torch is even imported
    chunking = chunking or ChunkConfig()
    chunking.validate()
    check_output_target(out, "index:dense", overwrite)  # before minutes of encoding, not after
    from densekit.data import load_dataset
    from densekit.index.dense import DenseIndex
    from densekit.retriever.dense import DenseRetriever
    from densekit.retriever.encoder import Encoder

    ds = load_dataset(data)
    options = {k: v for k, v in config.options().items() if k not in ("factory", "device", "metric")}
    encoder = Encoder(model, device=device, batch_size=batch_size, truncate_dim=truncate_dim, backend=encoder_backend)
    chunking.validate(encoder.config.max_length)
    corpus, passage_meta = ds.corpus, None
    if chunking.enabled:
        from densekit.chunking import chunk_corpus

        corpus, passage_meta = chunk_corpus(ds.corpus, encoder.tokenizer, chunking)
    # FAISS parses the factory string for this dimension now: a typo fails before the corpus is encoded.
    DenseIndex.create(
        encoder.dim, len(corpus), config.factory, config.metric, None, config.train_sample, config.search_params
    )
    retriever = DenseRetriever.build(
        encoder, corpus, factory=config.factory, device=config.device, cache=cache, **options
    )
    built = {
        "index": str(out),
        "dataset": ds.name,
        "documents": len(ds.corpus),
        "model": model,
        "dim": retriever.index.dim,
        "factory": config.factory,
    }
    if passage_meta is None:
        save_dense_index(retriever, out, ds.corpus, store_texts, overwrite)
        return built
    from densekit.index.passage_index import passage_documents, save_passage_index

    info = chunking.to_manifest(encoder.model_id, len(corpus), len(ds.corpus))
    documents = passage_documents(corpus, passage_meta) if store_texts else None
    save_passage_index(retriever.index, out, info, documents, overwrite=overwrite)
    return {**built, "passages": len(corpus), "chunking": info}


def build_bm25_index_dir(
    data: str | Path,
    out: str | Path,
    backend: str | None = None,
    k1: float = 0.9,
    b: float = 0.4,
    threads: int = 1,
    overwrite: bool = False,
) -> dict:
    """`densekit index build --bm25`: index a BEIR corpus with BM25 and save it to `out`; returns what was built."""
    from densekit.data import load_dataset
    from densekit.retriever.bm25 import BM25Retriever

    check_output_target(out, "index:bm25", overwrite)
    ds = load_dataset(data)
    retriever = BM25Retriever.build(ds.corpus, backend=backend, k1=k1, b=b, threads=threads)
    retriever.save(out, overwrite=overwrite)
    return {"index": str(out), "dataset": ds.name, "documents": len(ds.corpus), "kind": "bm25", **retriever.describe()}


def torchrun_device(device: str | None, world_size: int) -> str | None:
    """The encoder's device for this process: as given, or under torchrun (world > 1) cuda:LOCAL_RANK when
    CUDA is there, else cpu."""
    if device is not None or world_size <= 1:
        return device
    import os

    import torch

    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"


def encode_shards_dir(
    data: str | Path,
    out: str | Path,
    model: str,
    shard_size: int = 100_000,
    device: str | None = None,
    batch_size: int = 64,
    index: str | Path | None = None,
    config: IndexBuildConfig | None = None,
    store_texts: bool = True,
    truncate_dim: int | None = None,
    encoder_backend: str | None = None,
) -> dict | None:
    """`densekit index encode`: encode a corpus into resumable .npy shards (each torchrun process its share),
    then, with `index`, build that index from the shards on rank 0. Returns the summary on rank 0, None
    on the other ranks. `truncate_dim` keeps a prefix of each embedding (the shard plan records it);
    `encoder_backend` ("onnx-int8"...) runs the encoder on ONNX Runtime / OpenVINO."""
    from densekit.data import load_dataset
    from densekit.distributed import barrier, finish_distributed, init_distributed
    from densekit.index import shards as sharding
    from densekit.retriever.encoder import Encoder

    (config or IndexBuildConfig()).validate()
    if shard_size < 1:
        from densekit.errors import DensekitError

        raise DensekitError(f"--shard-size must be >= 1, got {shard_size}")
    group = init_distributed("cpu")  # gloo: encoding needs only a barrier, even on GPUs
    rank, world = group.rank, group.world_size
    ds = load_dataset(data)
    encoder = Encoder(
        model,
        device=torchrun_device(device, world),
        batch_size=batch_size,
        truncate_dim=truncate_dim,
        backend=encoder_backend,
    )
    plan = sharding.encode_shards(encoder, ds.corpus, out, shard_size, rank, world)
    barrier(group)  # every shard is written
    finish_distributed(group)  # the merge below needs no other process (nor a barrier timeout)
    if rank != 0:
        return None
    info: dict[str, Any] = {
        "shards_dir": str(out),
        "dataset": ds.name,
        "documents": plan.documents,
        "shards": plan.shards,
        "dim": plan.dim,
        "model": model,
        "world_size": world,
        "index": None,
    }
    if index is not None:
        built = sharding.build_from_shards(out, **(config or IndexBuildConfig()).options(), show_progress=True)
        save_dense_index(built, index, ds.corpus, store_texts)
        info.update(index=str(index), factory=built.factory, search_params=built.search_params)
    return info


def index_from_shards_dir(
    shards: str | Path, out: str | Path, config: IndexBuildConfig | None = None, texts: str | Path | None = None
) -> dict:
    """`densekit index from-shards`: train on a sample, add shard by shard (mmap), save to `out` (with the
    texts of the BEIR corpus `texts` when given)."""
    from densekit.index.shards import build_from_shards

    config = config or IndexBuildConfig()
    config.validate()
    built = build_from_shards(shards, **config.options(), show_progress=True)
    if texts is not None:
        from densekit.data import load_dataset

        save_dense_index(built, out, load_dataset(texts).corpus, True)
    else:
        built.save(out)
    return {
        "index": str(out),
        "factory": built.factory,
        "count": len(built),
        "train_sample": built.train_sample,
        "search_params": built.search_params,
    }
