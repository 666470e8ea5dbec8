"""`densekit train-reranker`: train a cross-encoder on mined negatives; one option per RerankerTrainConfig field."""

from __future__ import annotations

from densekit.cli import render
from densekit.cli.app import app
from densekit.cli.options import JsonOpt, QuietOpt, RestartOpt, ResumeOpt, config_options
from densekit.cli.train import show_training_summary
from densekit.retriever.train.reranker_config import RerankerTrainConfig


@app.command("train-reranker")
@config_options(RerankerTrainConfig)
def train_reranker_cmd(
    config: RerankerTrainConfig,
    resume: ResumeOpt = False,
    overwrite: RestartOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a cross-encoder reranker on mined negatives (listwise softmax or BCE; resume; torchrun)."""
    render.setup(as_json, quiet)
    config.validate()  # before any model loads
    from densekit.retriever.train.cross_encoder import train_reranker

    summary = train_reranker(config, resume=resume, overwrite=overwrite)
    keys = ("examples_this_run", "train_seconds", "examples_per_s", "final_loss", "model")
    show_training_summary(summary, "reranker training summary", keys, as_json)
