"""`densekit finetune`: the whole fine-tuning recipe as one resumable command (densekit.finetune).

One option per FinetuneConfig field (help from the field). Every option defaults to "not given", so
the order is: the config's defaults, then the `--config` TOML file, then the flags given.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from densekit.cli import render
from densekit.cli.app import app
from densekit.cli.options import JsonOpt, QuietOpt, _parameters, help_of
from densekit.finetune.config import STAGES, FinetuneConfig

_FIELDS = [param for name, param in _parameters(FinetuneConfig) if name != "data"]


def _optional(param: inspect.Parameter) -> inspect.Parameter:
    """The option with "not given" (None) as its default; the config's default goes into the help."""
    hint, option = typing.get_args(param.annotation)
    if param.default is not None:
        option.help = f"{option.help} [default: {param.default}]"
    return param.replace(default=None, annotation=Annotated[hint | None, option])


def finetune_cmd(
    data: Annotated[str | None, typer.Argument(help=help_of(FinetuneConfig, "data"))] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML file of settings (keys: the option names, '_' or '-').")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help=f"Stop after this stage: {', '.join(STAGES)}.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    **options: Any,
) -> None:
    """Fine-tune an encoder end to end: mine, train a cross-encoder, score, train, evaluate (cached stages)."""
    render.setup(as_json, quiet)
    from densekit.finetune.config import build_config, read_config_file

    file_values = read_config_file(config_file) if config_file is not None else {}
    config = build_config(file_values, {"data": data, **options})
    config.validate()  # before any model loads
    from densekit.finetune.pipeline import finetune

    summary = finetune(config, until=until)
    if as_json:
        render.emit(summary)
        return
    render.table(
        f"finetune {summary['output']}",
        ["stage", "status", "seconds"],
        [[name, s["status"], s["seconds"]] for name, s in summary["stages"].items()],
    )
    if summary.get("metrics"):
        rows = [
            [split, label, f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}"]
            for split, by_model in summary["metrics"].items()
            for label, m in by_model.items()
        ]
        render.table("metrics", ["split", "model", "ndcg@10", "recall@100"], rows)
        render.say(f"report: {summary['report_md']} (plot {summary['plot']}, model {summary['model']})")


_hints = typing.get_type_hints(finetune_cmd, include_extras=True)
_own = [
    p.replace(annotation=_hints[p.name], kind=p.kind if p.name == "data" else inspect.Parameter.KEYWORD_ONLY)
    for p in inspect.signature(finetune_cmd).parameters.values()
    if p.kind is not inspect.Parameter.VAR_KEYWORD
]
_signature = [*_own, *(_optional(p) for p in _FIELDS)]
finetune_cmd.__signature__ = inspect.Signature(_signature)  # type: ignore[attr-defined]
finetune_cmd.__annotations__ = {p.name: p.annotation for p in _signature}
app.command("finetune")(finetune_cmd)
