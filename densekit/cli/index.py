"""`densekit index build | info | set-params | remove | update`: make, inspect and edit saved indexes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from densekit.chunking import ChunkConfig
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
    build_milvus,
    check_milvus_options_unused,
)
from densekit.cli.options import (
    AggregateOpt,
    BackendOpt,
    BatchOpt,
    BM25Opt,
    BOpt,
    BuildDeviceOpt,
    BuildRescoreOpt,
    CacheOpt,
    ChunkOverlapOpt,
    ChunkSizeOpt,
    DataArg,
    DeviceOpt,
    EfSearchOpt,
    EncoderBackendOpt,
    FactoryOpt,
    Float16Opt,
    IndexDirArg,
    JsonOpt,
    K1Opt,
    KFactorOpt,
    NprobeOpt,
    OverwriteOpt,
    QuietOpt,
    ShardGpusOpt,
    StoreTextsOpt,
    ThreadsOpt,
    TrainSampleOpt,
    TruncateDimOpt,
)
from densekit.errors import DensekitError
from densekit.index.config import IndexBuildConfig
from densekit.retriever.compose import SearchOptions
from densekit.retriever.milvus_indexing import MilvusOptions


@index_app.command("build")
def index_build(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Encoder: folder or known name (default all-MiniLM-L6-v2).")
    ] = None,
    factory: FactoryOpt = "Flat",
    train_sample: TrainSampleOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    rescore_multiplier: BuildRescoreOpt = None,
    truncate_dim: TruncateDimOpt = None,
    encoder_backend: EncoderBackendOpt = None,
    device: DeviceOpt = None,
    index_device: BuildDeviceOpt = "cpu",
    shard_gpus: ShardGpusOpt = False,
    float16: Float16Opt = False,
    store_texts: StoreTextsOpt = True,
    chunk_size: ChunkSizeOpt = None,
    chunk_overlap: ChunkOverlapOpt = 0,
    aggregate: AggregateOpt = "maxp",
    batch_size: BatchOpt = 64,
    cache: CacheOpt = True,
    bm25: BM25Opt = False,
    backend: BackendOpt = None,
    k1: K1Opt = 0.9,
    b: BOpt = 0.4,
    threads: ThreadsOpt = 1,
    uri: UriOpt = None,
    collection: CollectionOpt = None,
    token: TokenOpt = None,
    resume: ResumeOpt = False,
    num_shards: NumShardsOpt = 1,
    consistency_level: ConsistencyOpt = "Strong",
    insert_batch: InsertBatchOpt = 1000,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Encode a corpus and save a FAISS index directory (--bm25: a BM25 one; --backend milvus: a Milvus one)."""
    render.setup(as_json, quiet)
    milvus = MilvusOptions(uri or "", collection, token, factory, num_shards, consistency_level, insert_batch, resume)
    if backend == "milvus" and not bm25:
        milvus.search_params = SearchOptions(nprobe=nprobe, ef_search=ef_search, k_factor=k_factor).params()
        faiss_only = train_sample is not None or index_device != "cpu" or shard_gpus or float16 or chunk_size
        build = {"device": device, "batch_size": batch_size, "cache": cache, "store_texts": store_texts}
        build |= {"encoder_backend": encoder_backend}
        return build_milvus(data, out, model, milvus, as_json, quiet, faiss_only, overwrite=overwrite, **build)
    check_milvus_options_unused(milvus)
    from densekit.retriever.indexing import build_bm25_index_dir, build_dense_index_dir

    start = time.perf_counter()
    if bm25 or backend is not None:
        if not bm25:
            raise DensekitError("--backend chooses the BM25 backend; add --bm25")
        if model is not None or encoder_backend is not None:
            raise DensekitError("--model / --encoder-backend and --bm25 build different indexes; give one of them")
        if chunk_size is not None:
            raise DensekitError("--chunk-size splits documents for a dense index; BM25 indexes whole documents")
        info = build_bm25_index_dir(data, out, backend=backend, k1=k1, b=b, threads=threads, overwrite=overwrite)
        info["seconds"] = round(time.perf_counter() - start, 2)
        if as_json:
            render.emit(info)
        else:
            render.say(
                f"indexed {info['documents']} documents of {info['dataset']} with BM25 "
                f"({info['bm25_backend']}, k1={k1}, b={b}) -> {out} ({info['seconds']} s)"
            )
        return
    model = model or "all-MiniLM-L6-v2"
    params = SearchOptions(nprobe=nprobe, ef_search=ef_search, k_factor=k_factor).params()
    config = IndexBuildConfig(
        factory=factory,
        train_sample=train_sample,
        search_params=params,
        rescore_multiplier=rescore_multiplier,
        device=index_device,
        shard=shard_gpus,
        float16=float16,
    )
    info = build_dense_index_dir(
        data,
        out,
        model,
        config,
        device=device,
        batch_size=batch_size,
        cache=cache,
        store_texts=store_texts,
        overwrite=overwrite,
        chunking=ChunkConfig(chunk_size, chunk_overlap, aggregate),
        truncate_dim=truncate_dim,
        encoder_backend=encoder_backend,
    )
    info["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        render.emit(info)
    else:
        passages = f" as {info['passages']} passages" if "passages" in info else ""
        render.say(
            f"indexed {info['documents']} documents of {info['dataset']}{passages} with {model} -> {out} "
            f"({info['seconds']} s)"
        )


@index_app.command("info")
def index_info(directory: IndexDirArg, as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Type, vector count, dimension, size, parameters and model of a saved index."""
    from densekit.index.saved import describe_saved

    render.setup(as_json, quiet)
    info = describe_saved(directory)
    if as_json:
        render.emit(info)
        return
    render.key_values({k: v for k, v in info.items() if k not in ("files", "format_version")}, title=str(directory))


@index_app.command("set-params")
def index_set_params(
    directory: IndexDirArg,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Change the default search parameters stored in an index's manifest."""
    render.setup(as_json, quiet)
    from densekit.index.saved import set_saved_search_params

    params = SearchOptions(nprobe=nprobe, ef_search=ef_search, k_factor=k_factor).params()
    if not params:
        raise DensekitError("give --nprobe, --ef-search and/or --k-factor")
    now = set_saved_search_params(directory, params)
    if as_json:
        render.emit({"index": str(directory), "search_params": now})
    else:
        render.say(f"{directory}: search parameters {now}")


@index_app.command("remove")
def index_remove(
    directory: IndexDirArg,
    ids: Annotated[list[str] | None, typer.Argument(help="Document ids to remove.")] = None,
    ids_file: Annotated[Path | None, typer.Option("--ids-file", help="File with one document id per line.")] = None,
    missing_ok: Annotated[bool, typer.Option("--missing-ok", help="Ignore ids the index does not hold.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Remove documents by id from a saved dense index (and its stored texts)."""
    render.setup(as_json, quiet)
    from densekit.index.saved import remove_from_saved

    wanted = list(ids or [])
    if ids_file is not None:
        if not ids_file.is_file():
            raise DensekitError(f"{ids_file}: no such file")
        wanted += [line.strip() for line in ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not wanted:
        raise DensekitError("give document ids to remove (arguments or --ids-file)")
    removed = remove_from_saved(directory, wanted, missing_ok=missing_ok)
    if as_json:
        render.emit({"index": str(directory), "removed": removed})
    else:
        render.say(f"{directory}: removed {removed} document(s)")


@index_app.command("update")
def index_update(
    directory: IndexDirArg,
    documents: Annotated[Path, typer.Argument(help="BEIR-format corpus.jsonl of documents to insert or replace.")],
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Insert or replace documents by id, encoded with the index's own model."""
    render.setup(as_json, quiet)
    from densekit.data import read_corpus
    from densekit.retriever.milvus_updates import update_saved_index

    if not documents.is_file():
        raise DensekitError(f"{documents}: no such file")
    replaced, added = update_saved_index(directory, read_corpus(documents), device=device)
    if as_json:
        render.emit({"index": str(directory), "replaced": replaced, "added": added})
    else:
        render.say(f"{directory}: replaced {replaced}, added {added} document(s)")
