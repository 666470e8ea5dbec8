"""`densekit train`: contrastive training of a dual encoder; one option per TrainConfig field."""

from __future__ import annotations

import json
import os

from densekit.cli import render
from densekit.cli.app import app
from densekit.cli.options import JsonOpt, QuietOpt, RestartOpt, ResumeOpt, config_options
from densekit.retriever.train.config import TrainConfig


def show_training_summary(summary: dict, title: str, keys: tuple[str, ...], as_json: bool) -> None:
    """Print a trainer's summary (rank 0 only): JSON, or a table of `keys` and the best checkpoint."""
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        render.emit(summary)
        return
    rows = [[key, summary[key]] for key in keys]
    if summary["best"]:
        rows.append(["best", json.dumps(summary["best"])])
    render.table(f"{title} ({summary['steps']}/{summary['total_steps']} steps)", ["", ""], rows)


@app.command("train")
@config_options(TrainConfig)
def train_cmd(
    config: TrainConfig,
    resume: ResumeOpt = False,
    overwrite: RestartOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a dual encoder contrastively on mined negatives (InfoNCE or GIST; GradCache; torchrun)."""
    render.setup(as_json, quiet)
    config.validate()  # before any model loads
    from densekit.retriever.train import train

    summary = train(config, resume=resume, overwrite=overwrite)
    keys = ("examples_this_run", "train_seconds", "examples_per_s", "final_loss", "temperature", "model")
    show_training_summary(summary, "training summary", keys, as_json)
