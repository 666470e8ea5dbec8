"""`densekit models export`: a sentence-transformers folder with an ONNX or OpenVINO export beside it.

    export_model("all-MiniLM-L6-v2", "onnx", "minilm-onnx", quantize="int8")
    # minilm-onnx/{modules.json, model.safetensors, ..., onnx/model.onnx, onnx/model_qint8_avx512_vnni.onnx}

The folder loads in densekit (``Encoder(folder, backend="onnx", quantize="int8")``) and, with optimum
installed, in sentence-transformers (``SentenceTransformer(folder, backend="onnx",
model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from densekit.errors import DensekitError
from densekit.io import atomic_dir, read_marker
from densekit.retriever.backends.common import ISAS, ONNX_DIR, OPENVINO_DIR, check_backend, cpu_isa
from densekit.retriever.backends.export import calibration_batches, write_exports
from densekit.retriever.encoder import Encoder, write_sentence_transformers_folder


def export_model(
    model: str | Path,
    backend: str,
    out: str | Path,
    quantize: str | None = None,
    calibration: list[str] | None = None,
    isa: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write `model` as a sentence-transformers folder `out` with the `backend` export (and its int8
    model when `quantize="int8"`); exports already in `out` (another backend) are kept.

    ONNX int8 is dynamic, for the instruction set `isa` (default: this CPU's); OpenVINO int8 is static
    and needs `calibration` texts (a sample of the corpus it will encode). `out` follows densekit.io's
    rules (a folder densekit did not write is refused unless `overwrite`; written atomically). Returns
    ``{"model", "out", "backend", "quantize", "isa", "files", "seconds"}``."""
    check_backend(backend, quantize)
    if backend == "torch":
        raise DensekitError("--backend for export is onnx or openvino (torch runs the folder as it is)")
    isa = isa or cpu_isa()
    if isa not in ISAS:
        raise DensekitError(f"unknown instruction set {isa!r}; expected one of {', '.join(ISAS)}")
    if backend == "openvino" and quantize and not calibration:
        raise DensekitError("OpenVINO int8 is calibrated on corpus texts: give --calibration DATA (a BEIR corpus)")
    start = time.perf_counter()
    out = Path(out)
    encoder = Encoder(model, device="cpu", dtype="float32")
    batches = None
    if calibration:
        prompt = encoder.config.document_prompt
        batches = calibration_batches(encoder.tokenize, encoder.tokenizer.pad, calibration, prompt)
    with atomic_dir(out, kind="model", overwrite=overwrite) as staging:
        if out.is_dir() and (read_marker(out) or {}).get("kind") == "model":
            for sub in (ONNX_DIR, OPENVINO_DIR):
                if (out / sub).is_dir():
                    shutil.copytree(out / sub, staging / sub)
        write_sentence_transformers_folder(staging, encoder.model, encoder.tokenizer, encoder.config)
        files = write_exports(staging, encoder.model, encoder.tokenizer, backend, quantize, isa, batches)
    return {
        "model": str(model),
        "out": str(out),
        "backend": backend,
        "quantize": quantize,
        "isa": isa if backend == "onnx" and quantize else None,
        "files": files,
        "seconds": round(time.perf_counter() - start, 2),
    }
