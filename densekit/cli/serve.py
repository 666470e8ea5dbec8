"""`densekit serve`: an HTTP retrieval service over saved indexes (FastAPI on uvicorn, the `serve` extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import app
from densekit.cli.options import DeviceOpt, EfSearchOpt, JsonOpt, NprobeOpt, QuietOpt, config_options
from densekit.integrations.http.config import ServeConfig
from densekit.retriever.compose import SearchOptions, check_index_dir, parse_weights


@app.command("serve")
@config_options(ServeConfig)
def serve_cmd(
    config: ServeConfig,
    indexes: Annotated[
        list[Path],
        typer.Argument(metavar="INDEX...", help="Index directory; several (e.g. a BM25 and a dense one) are fused."),
    ],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Embed queries with this encoder, not the index's (announced).")
    ] = None,
    device: DeviceOpt = None,
    corpus: Annotated[
        str | None, typer.Option(help="Texts for an index saved without them: BEIR folder, dataset or corpus.jsonl.")
    ] = None,
    fusion: Annotated[str, typer.Option(help="Several indexes: rrf or interpolate.")] = "rrf",
    weights: Annotated[str | None, typer.Option(help="Several indexes: one fusion weight each, e.g. 0.3,0.7.")] = None,
    depth: Annotated[int, typer.Option(help="Several indexes: hits fetched from each before fusing.")] = 1000,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Serve indexes over HTTP: POST /search, GET /health, GET /info (schema at /docs); Ctrl-C stops."""
    render.setup(as_json, quiet)
    config.validate()
    options = SearchOptions(nprobe=nprobe, ef_search=ef_search)
    options.params()  # checked before anything loads
    for directory in indexes:
        check_index_dir(directory)
    from densekit.integrations.http.server import create_app, open_service, serve

    service = open_service(
        indexes,
        model=model,
        device=device,
        corpus=corpus,
        fusion=fusion,
        weights=parse_weights(weights),
        depth=depth,
        search_options=options,
        config=config,
    )

    def ready(url: str) -> None:
        info = {"url": url, **{k: v for k, v in service.info().items() if k != "batching"}, "schema": f"{url}/docs"}
        if as_json:  # one line, flushed: a supervisor reads it to learn the port
            print(json.dumps(info), flush=True)
            return
        render.say(
            f"serving {info['index']} ({info['kind']}, {info['model'] or 'no encoder'}, {info['documents']} documents)"
            f" at {url}: POST /search, GET /health, GET /info; schema at {url}/docs; Ctrl-C stops"
        )

    serve(create_app(service), config, ready)
