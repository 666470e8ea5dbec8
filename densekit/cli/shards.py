"""`densekit index encode | from-shards`: corpora too large for one pass, encoded into resumable shards
(each torchrun process its share) and indexed from them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import index_app
from densekit.cli.milvus import (
    CollectionOpt,
    ConsistencyOpt,
    InsertBatchOpt,
    NumShardsOpt,
    ResumeOpt,
    TokenOpt,
    UriOpt,
    check_milvus_options_unused,
    say_ingested,
)
from densekit.cli.options import (
    BatchOpt,
    BuildDeviceOpt,
    BuildRescoreOpt,
    DataArg,
    DeviceOpt,
    EfSearchOpt,
    EncoderBackendOpt,
    FactoryOpt,
    Float16Opt,
    JsonOpt,
    KFactorOpt,
    NprobeOpt,
    QuietOpt,
    ShardGpusOpt,
    TrainSampleOpt,
    TruncateDimOpt,
    help_of,
)
from densekit.errors import DensekitError
from densekit.index.config import IndexBuildConfig
from densekit.retriever.compose import SearchOptions
from densekit.retriever.milvus_indexing import MilvusOptions


@index_app.command("encode")
def index_encode(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Shard directory (created, or resumed).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Encoder folder or known name.")] = "all-MiniLM-L6-v2",
    shard_size: Annotated[int, typer.Option(help="Documents per .npy shard.")] = 100_000,
    device: DeviceOpt = None,
    batch_size: BatchOpt = 64,
    index: Annotated[
        Path | None, typer.Option("--index", help="Then build this index directory from the shards.")
    ] = None,
    factory: FactoryOpt = "Flat",
    train_sample: TrainSampleOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    rescore_multiplier: BuildRescoreOpt = None,
    truncate_dim: TruncateDimOpt = None,
    encoder_backend: EncoderBackendOpt = None,
    index_device: BuildDeviceOpt = "cpu",
    store_texts: Annotated[
        bool, typer.Option("--store-texts/--no-store-texts", help="Keep the document texts in the index.")
    ] = True,
    backend: Annotated[
        str, typer.Option("--backend", help="Where --index goes: faiss, or milvus (each rank writes its shards).")
    ] = "faiss",
    uri: UriOpt = None,
    collection: CollectionOpt = None,
    token: TokenOpt = None,
    resume: ResumeOpt = False,
    num_shards: NumShardsOpt = 1,
    consistency_level: ConsistencyOpt = "Strong",
    insert_batch: InsertBatchOpt = 1000,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Encode a corpus into resumable .npy shards; under torchrun each process encodes its share.

    Run it again after an interruption: finished shards are kept. With --index, the shards are
    merged into one index (on rank 0 when distributed); with --backend milvus --uri URI, every rank
    writes its own shards into one Milvus collection and rank 0 saves the index directory.
    """
    render.setup(as_json, quiet)
    params = SearchOptions(nprobe=nprobe, ef_search=ef_search, k_factor=k_factor).params()
    milvus = MilvusOptions(uri or "", collection, token, factory, num_shards, consistency_level, insert_batch, resume)
    if backend == "milvus":
        milvus.search_params = params
        if index is None or not uri:
            raise DensekitError("--backend milvus needs --index DIR and --uri (a Milvus server under torchrun)")
        if train_sample is not None or k_factor is not None or rescore_multiplier is not None or index_device != "cpu":
            raise DensekitError("--train-sample, --k-factor, --rescore-multiplier and --index-device apply to FAISS")
        from densekit.retriever.milvus_shards import encode_shards_into_milvus

        start = time.perf_counter()
        info = encode_shards_into_milvus(
            data,
            out,
            index,
            model,
            milvus,
            shard_size,
            device,
            batch_size,
            store_texts,
            truncate_dim,
            encoder_backend,
            show_progress=not (as_json or quiet),
        )
        if info is None:  # not rank 0
            return
        info["seconds"] = round(time.perf_counter() - start, 2)
        return render.emit(info) if as_json else say_ingested(info, f"{info['world_size']} rank(s) encoded {data}")
    if backend != "faiss":
        raise DensekitError(f"--backend must be faiss or milvus, got {backend!r}")
    check_milvus_options_unused(milvus)
    config = IndexBuildConfig(
        factory=factory,
        train_sample=train_sample,
        search_params=params,
        rescore_multiplier=rescore_multiplier,
        device=index_device,
    )
    from densekit.retriever.indexing import encode_shards_dir

    start = time.perf_counter()
    info = encode_shards_dir(
        data,
        out,
        model,
        shard_size,
        device=device,
        batch_size=batch_size,
        index=index,
        config=config,
        store_texts=store_texts,
        truncate_dim=truncate_dim,
        encoder_backend=encoder_backend,
    )
    if info is None:  # not rank 0
        return
    info["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        render.emit(info)
    else:
        render.say(
            f"encoded {info['documents']} documents of {info['dataset']} into {info['shards']} shard(s) in "
            f"{out}" + (f"; index -> {index}" if index else "") + f" ({info['seconds']} s)"
        )


@index_app.command("from-shards")
def index_from_shards(
    shards: Annotated[Path, typer.Argument(help="Shard directory written by `densekit index encode`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write.")],
    factory: FactoryOpt = "Flat",
    train_sample: TrainSampleOpt = None,
    seed: Annotated[int, typer.Option(help=help_of(IndexBuildConfig, "seed"))] = 0,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    rescore_multiplier: BuildRescoreOpt = None,
    index_device: BuildDeviceOpt = "cpu",
    shard_gpus: ShardGpusOpt = False,
    float16: Float16Opt = False,
    texts: Annotated[str | None, typer.Option(help="BEIR folder or dataset whose texts to store.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build an index from encoded shards: train on a sample, then add shard by shard (mmap)."""
    render.setup(as_json, quiet)
    params = SearchOptions(nprobe=nprobe, ef_search=ef_search, k_factor=k_factor).params()
    config = IndexBuildConfig(
        factory=factory,
        train_sample=train_sample,
        seed=seed,
        search_params=params,
        rescore_multiplier=rescore_multiplier,
        device=index_device,
        shard=shard_gpus,
        float16=float16,
    )
    from densekit.retriever.indexing import index_from_shards_dir

    start = time.perf_counter()
    info = index_from_shards_dir(shards, out, config, texts=texts)
    info["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        render.emit(info)
    else:
        render.say(f"built {info['factory']} over {info['count']} vectors -> {out} ({info['seconds']} s)")
