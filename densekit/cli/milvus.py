"""Milvus options of `densekit index build --backend milvus`, and `densekit index export --to milvus`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import index_app
from densekit.cli.options import EfSearchOpt, IndexDirArg, JsonOpt, NprobeOpt, OverwriteOpt, QuietOpt, help_of
from densekit.errors import DensekitError
from densekit.retriever.milvus_indexing import MilvusOptions

UriOpt = Annotated[str | None, typer.Option("--uri", help=help_of(MilvusOptions, "uri"))]
CollectionOpt = Annotated[str | None, typer.Option("--collection", help=help_of(MilvusOptions, "collection"))]
TokenOpt = Annotated[str | None, typer.Option("--token", help=help_of(MilvusOptions, "token"))]
ResumeOpt = Annotated[bool, typer.Option("--resume", help=help_of(MilvusOptions, "resume"))]
NumShardsOpt = Annotated[int, typer.Option("--num-shards", help=help_of(MilvusOptions, "num_shards"))]
ConsistencyOpt = Annotated[str, typer.Option("--consistency-level", help=help_of(MilvusOptions, "consistency_level"))]
InsertBatchOpt = Annotated[int, typer.Option("--insert-batch", help=help_of(MilvusOptions, "insert_batch"))]
MILVUS_ONLY = ("--uri", "--collection", "--token", "--resume", "--num-shards", "--consistency-level", "--insert-batch")


def check_milvus_options_unused(options: MilvusOptions) -> None:
    """Milvus options given without --backend milvus are an error, not ignored."""
    if options != MilvusOptions(search_params=options.search_params, factory=options.factory):
        raise DensekitError(f"{', '.join(MILVUS_ONLY)} apply to --backend milvus")


def say_ingested(info: dict, what: str) -> None:
    already = f", {info['already_there']} already there" if info["already_there"] else ""
    render.say(
        f"{what} -> {info['uri']} collection {info['collection']} ({info['index_type']}): wrote {info['written']}"
        f"{already}, {info['count']} in the collection, {info['vectors_per_second']} vectors/s -> {info['index']} "
        f"({info['seconds']} s)"
    )


def build_milvus(
    data: str,
    out: Path,
    model: str | None,
    options: MilvusOptions,
    as_json: bool,
    quiet: bool,
    faiss_only: bool,
    **build_options,
) -> None:
    """`densekit index build --backend milvus`: run the library function and render its result."""
    from densekit.retriever.milvus_indexing import build_milvus_index_dir

    if faiss_only:
        raise DensekitError(
            "--train-sample, --index-device, --shard-gpus, --float16 and --chunk-size apply to FAISS indexes"
        )
    if not options.uri:
        raise DensekitError("--backend milvus needs --uri (a Milvus Lite path such as runs/x.db, or http://host:19530)")
    model = model or "all-MiniLM-L6-v2"
    start = time.perf_counter()
    info = build_milvus_index_dir(data, out, model, options, show_progress=not (as_json or quiet), **build_options)
    info["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        render.emit(info)
    else:
        say_ingested(info, f"encoded {info['documents']} documents of {info['dataset']} with {model}")


@index_app.command("export")
def index_export(
    directory: IndexDirArg,
    to: Annotated[str, typer.Option("--to", help="Where to move the index: milvus.")],
    uri: UriOpt = None,
    collection: CollectionOpt = None,
    token: TokenOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Milvus index directory to write (default: NAME-milvus.idx).")
    ] = None,
    vectors: Annotated[
        Path | None,
        typer.Option(
            "--vectors",
            help="The index's float32 vectors (.npy in label order, or a shard directory), when "
            "neither the embedding cache nor the FAISS file holds them exactly.",
        ),
    ] = None,
    texts: Annotated[
        str | None, typer.Option("--texts", help="A shard directory's corpus (BEIR folder or name): the texts.")
    ] = None,
    factory: Annotated[str, typer.Option(help=help_of(MilvusOptions, "factory"))] = "flat",
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    num_shards: NumShardsOpt = 1,
    consistency_level: ConsistencyOpt = "Strong",
    insert_batch: InsertBatchOpt = 1000,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Move a saved FAISS index's (or a shard directory's) vectors and documents into Milvus, without re-encoding."""
    render.setup(as_json, quiet)
    from densekit.retriever.compose import SearchOptions
    from densekit.retriever.milvus_indexing import export_to_milvus

    if to != "milvus":
        raise DensekitError(f"--to must be milvus, got {to!r}")
    if not uri:
        raise DensekitError("--to milvus needs --uri (a Milvus Lite path such as runs/x.db, or http://host:19530)")
    options = MilvusOptions(
        uri=uri,
        collection=collection,
        token=token,
        factory=factory,
        num_shards=num_shards,
        consistency_level=consistency_level,
        insert_batch=insert_batch,
        resume=resume,
        search_params=SearchOptions(nprobe=nprobe, ef_search=ef_search).params(),
    )
    start = time.perf_counter()
    info = export_to_milvus(directory, options, out, vectors, overwrite, not (as_json or quiet), texts)
    info["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        render.emit(info)
    else:
        say_ingested(info, f"exported {directory} (vectors from {info['vectors_from']})")
