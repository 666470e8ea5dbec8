"""`densekit eval` and `densekit mteb`: score retrievers, indexes and run files on BEIR splits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import app
from densekit.cli.options import (
    BackendOpt,
    BatchOpt,
    BM25Opt,
    BOpt,
    CacheOpt,
    DataArg,
    DeviceOpt,
    EfSearchOpt,
    EncoderBackendOpt,
    FormatOpt,
    JsonOpt,
    K1Opt,
    KFactorOpt,
    NprobeOpt,
    OverwriteOpt,
    QuietOpt,
    RerankCandidatesOpt,
    RerankVectorsOpt,
    RescoreMultiplierOpt,
    ThreadsOpt,
    TruncateDimOpt,
    help_of,
)
from densekit.errors import DensekitError
from densekit.eval.config import EvalConfig, parse_metrics
from densekit.retriever.compose import RetrieverSpec, SearchOptions, parse_weights


def check_format(fmt: str) -> str:
    from densekit.eval.report import OUTPUT_FORMATS

    if fmt not in OUTPUT_FORMATS:
        raise DensekitError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    return fmt


def _spec(name: str) -> str:
    return help_of(RetrieverSpec, name)


@app.command("eval")
def eval_cmd(
    data: DataArg,
    model: Annotated[str | None, typer.Option("--model", "-m", help=_spec("model"))] = None,
    run_file: Annotated[Path | None, typer.Option("--run", help=help_of(EvalConfig, "run"))] = None,
    index: Annotated[Path | None, typer.Option("--index", help=_spec("index"))] = None,
    split: Annotated[str, typer.Option(help=help_of(EvalConfig, "split"))] = "test",
    metrics: Annotated[str | None, typer.Option(help=help_of(EvalConfig, "metrics"))] = None,
    depth: Annotated[int, typer.Option(help=_spec("depth"))] = 1000,
    ignore_identical_ids: Annotated[bool, typer.Option(help=help_of(EvalConfig, "ignore_identical_ids"))] = False,
    skip_missing_queries: Annotated[
        bool, typer.Option("--skip-missing-queries", help=help_of(EvalConfig, "skip_missing_queries"))
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help=help_of(EvalConfig, "out"))] = None,
    run_out: Annotated[Path | None, typer.Option("--run-out", help=help_of(EvalConfig, "run_out"))] = None,
    factory: Annotated[str, typer.Option(help=_spec("factory"))] = "Flat",
    truncate_dim: TruncateDimOpt = None,
    encoder_backend: EncoderBackendOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = 64,
    cache: CacheOpt = True,
    bm25: BM25Opt = False,
    backend: BackendOpt = None,
    k1: K1Opt = 0.9,
    b: BOpt = 0.4,
    threads: ThreadsOpt = 1,
    fusion: Annotated[str | None, typer.Option(help=_spec("fusion"))] = None,
    weights: Annotated[str | None, typer.Option(help=_spec("weights"))] = None,
    rrf_k: Annotated[int, typer.Option("--rrf-k", help=_spec("rrf_k"))] = 60,
    normalization: Annotated[str, typer.Option(help=_spec("normalization"))] = "minmax",
    rerank: Annotated[str | None, typer.Option(help=_spec("rerank"))] = None,
    rerank_depth: Annotated[int, typer.Option(help=_spec("rerank_depth"))] = 100,
    rerank_first_stage_weight: Annotated[float, typer.Option(help=_spec("rerank_first_stage_weight"))] = 0.0,
    aggregate: Annotated[str | None, typer.Option(help=_spec("aggregate"))] = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    rerank_vectors: RerankVectorsOpt = None,
    rerank_candidates: RerankCandidatesOpt = 100,
    rescore_multiplier: RescoreMultiplierOpt = None,
    fmt: FormatOpt = "text",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a model, a saved index, BM25, a hybrid of them or a run file on a BEIR split (pytrec_eval)."""
    as_json = as_json or check_format(fmt) == "json"
    render.setup(as_json, quiet)
    from densekit.eval.config import evaluate

    search = SearchOptions(
        nprobe=nprobe,
        ef_search=ef_search,
        k_factor=k_factor,
        rerank_vectors=rerank_vectors,
        rerank_candidates=rerank_candidates,
        rescore_multiplier=rescore_multiplier,
    )
    spec = RetrieverSpec(
        model=model,
        truncate_dim=truncate_dim,
        encoder_backend=encoder_backend,
        index=index,
        factory=factory,
        batch_size=batch_size,
        cache=cache,
        device=device,
        bm25=bm25,
        backend=backend,
        k1=k1,
        b=b,
        threads=threads,
        fusion=fusion,
        weights=parse_weights(weights),
        rrf_k=rrf_k,
        normalization=normalization,
        depth=depth,
        rerank=rerank,
        rerank_depth=rerank_depth,
        rerank_first_stage_weight=rerank_first_stage_weight,
        aggregate=aggregate,
        search=search,
    )
    config = EvalConfig(
        data=data,
        split=split,
        metrics=parse_metrics(metrics),
        ignore_identical_ids=ignore_identical_ids,
        run=run_file,
        retriever=spec,
        out=out,
        run_out=run_out,
        skip_missing_queries=skip_missing_queries,
    )
    report = evaluate(config)
    if as_json:
        render.emit(report.to_json())
    elif fmt == "markdown":
        from densekit.eval.report import eval_markdown

        render.markdown(eval_markdown(report.to_json()))
    else:
        render.metrics_table(f"{report.dataset} / {split} ({report.result.describe_queries()})", report.result.metrics)


@app.command("mteb")
def mteb_cmd(
    data: Annotated[list[str], typer.Argument(help="BEIR folders or names, or mteb task names (SciFact).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Encoder folder or name.")] = "all-MiniLM-L6-v2",
    split: Annotated[str, typer.Option(help="qrels split of local BEIR folders.")] = "test",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for MTEB results.")] = None,
    prompts: Annotated[Path | None, typer.Option(help="JSON file of mteb model prompts by key.")] = None,
    language: Annotated[str, typer.Option(help="Language of non-mteb local folders.")] = "eng-Latn",
    truncate_dim: TruncateDimOpt = None,
    encoder_backend: EncoderBackendOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = 64,
    cache: CacheOpt = True,
    overwrite: OverwriteOpt = False,
    fmt: FormatOpt = "text",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate an encoder with the mteb package, offline: local BEIR folders or cached mteb tasks."""
    as_json = as_json or check_format(fmt) == "json"
    render.setup(as_json, quiet)
    from densekit.eval.config import read_prompt_file
    from densekit.eval.mteb import run_mteb
    from densekit.retriever.encoder import Encoder

    prompt_map = read_prompt_file(prompts) if prompts is not None else None
    encoder = Encoder(model, device=device, batch_size=batch_size, truncate_dim=truncate_dim, backend=encoder_backend)
    summary = run_mteb(
        encoder,
        data,
        out=out,
        split=split,
        prompts=prompt_map,
        batch_size=batch_size,
        cache=cache,
        language=language,
        overwrite=overwrite,
    )
    if as_json:
        render.emit(summary.to_json())
        return
    if fmt == "markdown":
        from densekit.eval.report import mteb_markdown

        render.markdown(mteb_markdown(summary.to_json()))
        return
    shown = ("ndcg_at_10", "recall_at_100", "map_at_10", "mrr_at_10")
    for task in summary.tasks:
        render.metrics_table(
            f"{task.task} / {task.split} (mteb, {summary.model})", {k: v for k, v in task.scores.items() if k in shown}
        )
    if out is not None:
        render.say(f"MTEB results -> {out}")
