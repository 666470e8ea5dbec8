"""`densekit mine`: hard negatives with NV-Retriever's positive-aware filters and an optional GIST guide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import app
from densekit.cli.options import (
    BatchOpt,
    DataArg,
    DeviceOpt,
    EncoderBackendOpt,
    JsonOpt,
    QuietOpt,
    TruncateDimOpt,
    help_of,
)
from densekit.mining.config import MiningConfig


def _m(name: str) -> str:
    return help_of(MiningConfig, name)


@app.command("mine")
def mine_cmd(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Negatives file to write (JSON lines).")],
    split: Annotated[str, typer.Option(help="qrels split whose queries and positives are mined.")] = "train",
    teacher: Annotated[str, typer.Option("--teacher", "-m", help=_m("teacher"))] = "all-MiniLM-L6-v2",
    guide: Annotated[str | None, typer.Option(help=_m("guide"))] = None,
    guide_margin: Annotated[float | None, typer.Option(help=_m("guide_margin"))] = None,
    method: Annotated[str, typer.Option(help=_m("method"))] = "percpos",
    percentage: Annotated[float | None, typer.Option(help=_m("percentage"))] = None,
    margin: Annotated[float | None, typer.Option(help=_m("margin"))] = None,
    threshold: Annotated[float | None, typer.Option(help=_m("threshold"))] = None,
    shift: Annotated[int | None, typer.Option(help=_m("shift"))] = None,
    scorer: Annotated[str | None, typer.Option(help=_m("scorer"))] = None,
    ce_margin: Annotated[float | None, typer.Option(help=_m("ce_margin"))] = None,
    vote_k: Annotated[int | None, typer.Option(help=_m("vote_k"))] = None,
    negatives: Annotated[int, typer.Option(help=_m("negatives"))] = 4,
    depth: Annotated[int, typer.Option(help=_m("depth"))] = 100,
    sampler: Annotated[str, typer.Option(help=_m("sampler"))] = "top",
    temperature: Annotated[float | None, typer.Option(help=_m("temperature"))] = None,
    source: Annotated[list[str] | None, typer.Option("--source", help=_m("sources"))] = None,
    fusion: Annotated[str, typer.Option(help=_m("fusion"))] = "rrf",
    seed: Annotated[int, typer.Option(help=_m("seed"))] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of the same --out.")] = False,
    chunk_size: Annotated[int, typer.Option(help=_m("chunk_size"))] = 1024,
    removed_out: Annotated[
        Path | None,
        typer.Option("--removed-out", help="Also write what each filter removed (JSON lines, one query a line)."),
    ] = None,
    device: DeviceOpt = None,
    index_device: Annotated[str, typer.Option(help=_m("index_device"))] = "cpu",
    batch_size: BatchOpt = 64,
    truncate_dim: TruncateDimOpt = None,
    encoder_backend: EncoderBackendOpt = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help=_m("cache"))] = True,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Mine hard negatives (NV-Retriever positive-aware filters, optional GIST guide, cross-encoder scores and
    filter, teacher votes) into JSON lines."""
    render.setup(as_json, quiet)
    config = MiningConfig(
        teacher=teacher,
        guide=guide,
        guide_margin=guide_margin,
        method=method,
        percentage=percentage,
        margin=margin,
        threshold=threshold,
        shift=shift,
        scorer=scorer,
        ce_margin=ce_margin,
        vote_k=vote_k,
        negatives=negatives,
        depth=depth,
        sampler=sampler,
        temperature=temperature,
        sources=list(source or ["teacher"]),
        fusion=fusion,
        seed=seed,
        chunk_size=chunk_size,
        device=device,
        index_device=index_device,
        batch_size=batch_size,
        truncate_dim=truncate_dim,
        encoder_backend=encoder_backend,
        cache=cache,
    )
    config.validate()  # before any model loads
    from densekit.mining.config import mine
    from densekit.mining.output import config_path, stats_path

    result, ds = mine(config, data, split, out, resume=resume, removed_out=removed_out)
    if as_json:
        render.emit(
            {
                "out": str(out),
                "config": str(config_path(out)),
                "stats_file": str(stats_path(out)),
                "removed_out": None if removed_out is None else str(removed_out),
                "resumed_at": result.resumed_at,
                "stats": result.stats.to_json(),
            }
        )
        return
    title = (
        f"{ds.name}/{split}: {teacher}"
        + (f", guide {guide}" if guide else "")
        + (f", scorer {scorer}" if scorer else "")
    )
    render.rich(result.stats.table(title))
    render.say(f"-> {out} (configuration in {config_path(out)}, statistics in {stats_path(out)})")
