"""`densekit search`: one query against a saved index, or a query set into a TREC run file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import app
from densekit.cli.options import (
    AggregateOverrideOpt,
    DeviceOpt,
    EfSearchOpt,
    EncoderBackendOpt,
    Float16Opt,
    IndexDirArg,
    JsonOpt,
    KFactorOpt,
    NprobeOpt,
    QuietOpt,
    RerankCandidatesOpt,
    RerankVectorsOpt,
    RescoreMultiplierOpt,
    SearchDeviceOpt,
    ShardGpusOpt,
)
from densekit.errors import DensekitError
from densekit.retriever.compose import SearchOptions, check_index_dir


@app.command()
def search(
    directory: IndexDirArg,
    query: Annotated[str | None, typer.Argument(help="A query text (or use --queries).")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Hits per query.")] = 10,
    queries: Annotated[
        str | None, typer.Option(help="Queries to run: a queries.jsonl file, or a BEIR folder or dataset name.")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Only the queries judged in this split.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="TREC run file to write.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Embed the queries with this encoder instead of the one that built the index (announced).",
        ),
    ] = None,
    device: DeviceOpt = None,
    encoder_backend: EncoderBackendOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    rerank_vectors: RerankVectorsOpt = None,
    rerank_candidates: RerankCandidatesOpt = 100,
    rescore_multiplier: RescoreMultiplierOpt = None,
    index_device: SearchDeviceOpt = "cpu",
    shard_gpus: ShardGpusOpt = False,
    float16: Float16Opt = False,
    aggregate: AggregateOverrideOpt = None,
    passages: Annotated[
        bool, typer.Option("--passages", help="An index of passages: return passages, not documents.")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Search an index with one query, or with a dataset's queries into a TREC run file."""
    render.setup(as_json, quiet)
    if (query is None) == (queries is None):
        raise DensekitError("give either a QUERY text or --queries DATA, not both or neither")
    if k <= 0:
        raise DensekitError(f"-k must be positive, got {k}")
    options = SearchOptions(
        nprobe=nprobe,
        ef_search=ef_search,
        k_factor=k_factor,
        rerank_vectors=rerank_vectors,
        rerank_candidates=rerank_candidates,
        rescore_multiplier=rescore_multiplier,
        index_device=index_device,
        shard_gpus=shard_gpus,
        float16=float16,
    )
    options.params()  # checked before anything loads
    check_index_dir(directory)
    from densekit.retriever.compose import search_index

    if query is not None:
        result = search_index(
            directory,
            {"q": query},
            k,
            options,
            device=device,
            with_texts=True,
            model=model,
            aggregate=aggregate,
            passages=passages,
            encoder_backend=encoder_backend,
        )
        rows = result.pop("hits").get("q", [])
        if as_json:
            render.emit({"query": query, "hits": rows, **result})
            return
        with_texts = any("text" in row for row in rows)
        render.table(
            f"top {k} for: {query}",
            ["rank", "doc_id", "score"] + (["title / text"] if with_texts else []),
            [
                [row["rank"], row["doc_id"], f"{row['score']:.4f}"] + ([_snippet(row)] if with_texts else [])
                for row in rows
            ],
        )
        return
    from densekit.data import load_queries
    from densekit.eval.metrics import queries_without_results

    query_set = load_queries(queries, split)
    start = time.perf_counter()
    result = search_index(
        directory,
        query_set,
        k,
        options,
        device=device,
        run_out=out,
        model=model,
        aggregate=aggregate,
        passages=passages,
        encoder_backend=encoder_backend,
    )
    elapsed = time.perf_counter() - start
    # A TREC run has no line for a query without hits; evaluation counts such a judged query as 0.
    no_hits = len(queries_without_results(query_set, result["hits"]))
    info = {
        "queries": len(result["hits"]),
        "queries_without_hits": no_hits,
        "k": k,
        "run": str(out) if out else None,
        "seconds": round(elapsed, 3),
    }
    if as_json:
        if out is None:
            info["results"] = {q: [[h["doc_id"], h["score"]] for h in hits] for q, hits in result["hits"].items()}
        render.emit(info)
    else:
        missing = (
            (
                f"; {no_hits} {'query' if no_hits == 1 else 'queries'} without hits"
                + (" (no line in the run file)" if out else "")
            )
            if no_hits
            else ""
        )
        render.say(
            f"searched {info['queries']} queries (k={k}) in {elapsed:.2f} s" + (f" -> {out}" if out else "") + missing
        )


def _snippet(row: dict, width: int = 160) -> str:
    text = (row["title"] + ": " if row.get("title") else "") + row.get("text", "")
    return text[:width] + ("..." if len(text) > width else "")
