"""Inference backends for :class:`~densekit.retriever.encoder.Encoder`: PyTorch, ONNX Runtime, OpenVINO.

A backend only runs the transformer: token ids in, the last hidden state ``(batch, seq, dim)`` out.
Pooling and normalisation stay densekit's (``encoder.pool``), so every backend embeds the way the
torch path does. The file names and the extras are in :mod:`densekit.retriever.backends.common`;
exporting is :mod:`densekit.retriever.backends.export`.
"""

from __future__ import annotations

from pathlib import Path

from densekit.retriever.backends.common import (
    BACKENDS,
    ISAS,
    QUANTIZATIONS,
    Runner,
    check_backend,
    cpu_isa,
    model_file,
    onnx_int8_file,
    parse_backend,
    require,
)

__all__ = [
    "BACKENDS",
    "ISAS",
    "QUANTIZATIONS",
    "Runner",
    "check_backend",
    "cpu_isa",
    "model_file",
    "onnx_int8_file",
    "open_runner",
    "parse_backend",
    "require",
]


def open_runner(path: Path, backend: str, threads: int | None = None) -> Runner:
    """A runner for the exported file `path` (CPU)."""
    if backend == "onnx":
        from densekit.retriever.backends.onnx import OnnxRunner

        return OnnxRunner(path, threads)
    from densekit.retriever.backends.openvino import OpenVINORunner

    return OpenVINORunner(path, threads, exact="qint8" not in path.name)
