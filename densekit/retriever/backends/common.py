"""Names shared by the encoder backends: backends, quantisations, instruction sets, file layout, extras.

Exported files sit beside the sentence-transformers files, named as sentence-transformers names them,
so its ``backend="onnx"``/``"openvino"`` finds them too:

==============  =========================================================
onnx            ``onnx/model.onnx``
onnx int8       ``onnx/model_qint8_<isa>.onnx`` (dynamic; isa: avx512_vnni, avx512, avx2, arm64)
openvino        ``openvino/openvino_model.xml`` (+ ``.bin``)
openvino int8   ``openvino/openvino_model_qint8_quantized.xml`` (static, calibrated on corpus texts)
==============  =========================================================

The extras: ``pip install 'densekit[onnx]'`` (onnxruntime, onnx) and ``'densekit[openvino]'``
(openvino, nncf).
"""

from __future__ import annotations

import importlib
import platform
from pathlib import Path
from typing import Protocol

import numpy as np

from densekit.errors import DensekitError

BACKENDS = ("torch", "onnx", "openvino")
QUANTIZATIONS = ("int8",)
ISAS = ("avx512_vnni", "avx512", "avx2", "arm64")
ONNX_DIR, ONNX_FILE = "onnx", "model.onnx"
OPENVINO_DIR, OPENVINO_FILE = "openvino", "openvino_model.xml"
OPENVINO_INT8_FILE = "openvino_model_qint8_quantized.xml"
# the exported graph's inputs, in the order torch.onnx.export passes them
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
EXTRAS = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "nncf")}


class Runner(Protocol):
    """Runs an exported transformer: numpy int64 inputs by name -> last hidden state (float32)."""

    input_names: tuple[str, ...]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def require(extra: str, module: str):
    """Import `module` of an optional extra, or raise a one-line error naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DensekitError(
            f"the {extra} backend needs {module}, which is not installed: pip install 'densekit[{extra}]'"
        ) from None


def parse_backend(spec: str) -> tuple[str, str | None]:
    """'onnx-int8' -> ('onnx', 'int8'); 'torch' -> ('torch', None). A one-line error on anything else."""
    backend, _, quantize = spec.partition("-")
    check_backend(backend, quantize or None)
    return backend, quantize or None


def check_backend(backend: str, quantize: str | None) -> None:
    if backend not in BACKENDS:
        raise DensekitError(f"unknown encoder backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise DensekitError(f"unknown quantisation {quantize!r}; expected one of {', '.join(QUANTIZATIONS)}")
    if backend == "torch" and quantize is not None:
        raise DensekitError("int8 models are exported for the onnx and openvino backends; torch runs fp32")


def cpu_isa() -> str:
    """The int8 instruction set for this CPU, as onnxruntime/optimum name it (VNNI is the fast one)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512"
    return "avx2"


def onnx_int8_file(isa: str) -> str:
    """sentence-transformers' name for a dynamic int8 export (``model_qint8_<isa>.onnx``)."""
    return f"model_qint8_{isa}.onnx"


def model_file(folder: Path, backend: str, quantize: str | None) -> Path | None:
    """The exported file `backend`/`quantize` runs from in `folder`, or None when there is none.

    For ONNX int8 the file for this CPU's instruction set is preferred, then any other int8 export."""
    if backend == "onnx":
        base = folder / ONNX_DIR
        if quantize is None:
            return base / ONNX_FILE if (base / ONNX_FILE).is_file() else None
        preferred = base / onnx_int8_file(cpu_isa())
        if preferred.is_file():
            return preferred
        others = sorted(base.glob("model_qint8_*.onnx"))
        return others[0] if others else None
    if backend == "openvino":
        path = folder / OPENVINO_DIR / (OPENVINO_INT8_FILE if quantize else OPENVINO_FILE)
        return path if path.is_file() else None
    return None
