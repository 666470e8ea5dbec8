"""The `densekit` command line: a Typer app (app.py), shared options (options.py), output (render.py)
and one thin module per command group. A command parses, builds a config, calls one library function
and renders the result.
"""

from densekit.cli import (  # noqa: F401
    data,
    evaluate,
    finetune,
    index,
    mine,
    models,
    reports,
    search,
    serve,
    shards,
    train,
    train_reranker,
)
from densekit.cli.app import app, main

__all__ = ["app", "main"]
