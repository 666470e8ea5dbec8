"""`densekit data list | check | download`: BEIR datasets under $DENSEKIT_DATA."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import data_app
from densekit.cli.options import DataArg, JsonOpt, OverwriteOpt, QuietOpt


@data_app.command("list")
def data_list(as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Datasets found in the directories of $DENSEKIT_DATA."""
    from densekit.data import data_dirs, list_datasets

    render.setup(as_json, quiet)
    found = list_datasets()
    if as_json:
        render.emit({"data_dirs": [str(d) for d in data_dirs()], "datasets": found})
        return
    if not found:
        where = ", ".join(str(d) for d in data_dirs()) or "$DENSEKIT_DATA is not set"
        render.say(
            f"no datasets found ({where}); point DENSEKIT_DATA at a folder of BEIR datasets "
            "or run `densekit data download NAME --dest DIR`"
        )
    for entry in found:
        render.say(f"{entry['name']:<20} splits: {', '.join(entry['splits']) or '-'}   {entry['path']}")


@data_app.command("check")
def data_check(data: DataArg, as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Validate every file of a BEIR folder and cross-check each split's qrels."""
    from densekit.data import check_dataset

    render.setup(as_json, quiet)
    summary = check_dataset(data)
    if as_json:
        render.emit(summary)
        return
    render.say(f"{summary['dataset']}: {summary['documents']} documents, {summary['queries']} queries")
    for split, s in summary["splits"].items():
        status = "OK" if s["ok"] else "WARN"
        render.say(
            f"  {status:<5}{split}: {s['judgements']} judgements over {s['queries_judged']} queries; "
            f"unknown queries {s['unknown_queries']}, unknown documents {s['unknown_docs']}"
        )


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="BEIR dataset name, e.g. scifact.")],
    dest: Annotated[Path | None, typer.Option(help="Target directory (default: first of $DENSEKIT_DATA).")] = None,
    url: Annotated[str | None, typer.Option(help="Archive URL or local path (default: official BEIR).")] = None,
    md5: Annotated[str | None, typer.Option(help="Expected md5 of the archive.")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check the archive's md5.")] = True,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fetch an official BEIR archive, verify its md5 and unpack it."""
    from densekit.download import download_dataset

    render.setup(as_json, quiet)
    target = download_dataset(name, dest, url=url, md5=md5, verify=verify, overwrite=overwrite)
    if as_json:
        render.emit({"dataset": name, "path": str(target), "verified": verify})
    else:
        render.say(f"{name} -> {target}")
