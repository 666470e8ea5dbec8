"""`densekit train-reranker`: train a cross-encoder on mined negatives; one option per RerankerTrainConfig field."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import app
from densekit.cli.options import JsonOpt, QuietOpt, config_options
from densekit.retriever.train.reranker_config import RerankerTrainConfig


@app.command("train-reranker")
@config_options(RerankerTrainConfig)
def train_reranker_cmd(
    config: RerankerTrainConfig,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start over in an output folder that holds a run (its checkpoints, model/, best/ "
            "and metrics are removed first).",
        ),
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a cross-encoder reranker on mined negatives (listwise softmax or BCE; resume; torchrun)."""
    render.setup(as_json, quiet)
    config.validate()  # before any model loads
    from densekit.retriever.train.cross_encoder import train_reranker

    summary = train_reranker(config, resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        render.emit(summary)
        return
    rows = [
        [key, summary[key]] for key in ("examples_this_run", "train_seconds", "examples_per_s", "final_loss", "model")
    ]
    if summary["best"]:
        rows.append(["best", json.dumps(summary["best"])])
    render.table(f"reranker training summary ({summary['steps']}/{summary['total_steps']} steps)", ["", ""], rows)
