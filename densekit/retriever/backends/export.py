"""Writing ONNX / OpenVINO exports (and their int8 models) of a torch transformer into a folder.

:func:`write_exports` is the one writer; `densekit models export`
(:func:`densekit.retriever.model_export.export_model`) puts its files beside a sentence-transformers
folder, and :func:`exported_file` puts them into densekit's cache when an encoder is asked for a
backend its folder has no export for. The names are sentence-transformers' (see
:mod:`densekit.retriever.backends.common`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from densekit.errors import DensekitError
from densekit.progress import announce
from densekit.retriever.backends.common import (
    ONNX_DIR,
    ONNX_FILE,
    OPENVINO_DIR,
    OPENVINO_FILE,
    OPENVINO_INT8_FILE,
    cpu_isa,
    model_file,
    onnx_int8_file,
    require,
)

CALIBRATION_SIZE = 300
CALIBRATION_BATCH = 8


def calibration_texts(data: str | Path, size: int = CALIBRATION_SIZE, seed: int = 0) -> list[str]:
    """A seeded sample of `size` document texts of a BEIR corpus (folder or dataset name)."""
    from densekit.data import read_corpus, resolve_dataset

    texts = read_corpus(resolve_dataset(data) / "corpus.jsonl").texts()
    chosen = np.random.default_rng(seed).choice(len(texts), size=min(size, len(texts)), replace=False)
    return [texts[i] for i in sorted(chosen)]


def write_exports(
    folder: Path,
    model,
    tokenizer,
    backend: str,
    quantize: str | None,
    isa: str,
    calibration: list[dict[str, np.ndarray]] | None = None,
) -> list[str]:
    """Write the `backend` export of the torch `model` (float32) into `folder`'s ``onnx/`` or ``openvino/``
    (and its int8 model when `quantize`; OpenVINO's is calibrated on the tokenised `calibration` batches).
    Returns the files written, relative to `folder`."""
    from densekit.retriever.backends.onnx import export_onnx, quantize_onnx

    written: list[Path] = []
    if backend == "onnx":
        (folder / ONNX_DIR).mkdir(exist_ok=True)
        fp32 = folder / ONNX_DIR / ONNX_FILE
        export_onnx(model, tokenizer, fp32)
        written.append(fp32)
        if quantize:
            int8 = folder / ONNX_DIR / onnx_int8_file(isa)
            quantize_onnx(fp32, int8, isa)
            written.append(int8)
    else:
        from densekit.retriever.backends.openvino import convert_onnx, quantize_openvino

        require("openvino", "openvino")
        if quantize and not calibration:
            raise DensekitError("OpenVINO int8 is calibrated on corpus texts: give --calibration DATA (a BEIR corpus)")
        (folder / OPENVINO_DIR).mkdir(exist_ok=True)
        fp32 = folder / OPENVINO_DIR / OPENVINO_FILE
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            onnx_path = Path(tmp) / ONNX_FILE
            export_onnx(model, tokenizer, onnx_path)
            convert_onnx(onnx_path, fp32)
        written += [fp32, fp32.with_suffix(".bin")]
        if quantize:
            int8 = folder / OPENVINO_DIR / OPENVINO_INT8_FILE
            quantize_openvino(fp32, int8, calibration or [])
            written += [int8, int8.with_suffix(".bin")]
    return [p.relative_to(folder).as_posix() for p in written]


def calibration_batches(tokenize: Callable[[list[str]], dict], pad, texts: list[str], prompt: str = "") -> list[dict]:
    """Tokenised calibration batches as an encoder feeds them (its prompt, window and padding)."""
    batches = []
    for start in range(0, len(texts), CALIBRATION_BATCH):
        features = tokenize([prompt + t for t in texts[start : start + CALIBRATION_BATCH]])
        batches.append(dict(pad(features, padding=True, return_tensors="np")))
    return batches


def exported_file(folder: Path, backend: str, quantize: str | None, fingerprint: str, load_model, tokenizer) -> Path:
    """The export `backend`/`quantize` runs from: the one in `folder`, else one densekit exports now into
    its cache from `load_model()` (announced; OpenVINO int8 needs calibration, so it is never implicit)."""
    found = model_file(folder, backend, quantize)
    if found is not None:
        return found
    from densekit.io import atomic_dir
    from densekit.paths import densekit_home

    cache = densekit_home() / "exported" / hashlib.sha256(fingerprint.encode()).hexdigest()[:24]
    found = model_file(cache, backend, quantize)
    if found is not None:
        return found
    if backend == "openvino" and quantize:
        raise DensekitError(
            f"{folder} has no OpenVINO int8 model; write one with: densekit models export {folder} "
            "--backend openvino --quantize int8 --calibration DATA --out DIR"
        )
    announce(f"{folder} has no {backend}{'-' + quantize if quantize else ''} export; exporting it into {cache}")
    with atomic_dir(cache, kind="cache") as staging:
        for sub in (ONNX_DIR, OPENVINO_DIR):  # keep the other backend's export
            if (cache / sub).is_dir():
                shutil.copytree(cache / sub, staging / sub)
        write_exports(staging, load_model(), tokenizer, backend, quantize, cpu_isa())
    return model_file(cache, backend, quantize)  # type: ignore[return-value]
