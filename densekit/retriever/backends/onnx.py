"""ONNX: export a transformers model with ``torch.onnx.export``, int8 dynamic quantisation, and a runner.

The export traces the model's forward (input_ids, attention_mask, token_type_ids -> last_hidden_state)
with batch and sequence dimensions dynamic, the same graph optimum exports for feature extraction, so
sentence-transformers' ``backend="onnx"`` (through optimum) loads the file too.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np

from densekit.retriever.backends.common import INPUT_NAMES, require

OPSET = 17


class OnnxRunner:
    """An onnxruntime CPU session over one exported model file."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = require("onnx", "onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name].astype(np.int64, copy=False) for name in self.input_names}
        return self.session.run([self.output], feed)[0]


def export_onnx(model, tokenizer, path: Path) -> None:
    """Trace `model` (a transformers encoder in float32) into the ONNX file `path`."""
    import torch

    require("onnx", "onnx")
    sample = tokenizer(["an example sentence to trace", "a second one"], padding=True, return_tensors="pt")
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in INPUT_NAMES if n in sample and n in accepted]

    class LastHidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, args, strict=True))).last_hidden_state

    # The exporter restores each module's training flag afterwards: the wrapper must be in eval mode
    # too, or restoring it would switch the (shared) model into training mode (dropout on).
    wrapper = LastHidden(model).eval()
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in [*names, "last_hidden_state"]}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about every Python branch in transformers' mask code; the fp32 export is checked
        # against torch on other batch shapes and lengths in tests/test_backends.py instead
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def quantize_onnx(source: Path, target: Path, isa: str) -> None:
    """Dynamic int8 quantisation of `source` into `target` for the instruction set `isa`.

    Weights are symmetric int8 per channel (optimum's AutoQuantizationConfig defaults); without
    VNNI (avx2, avx512) weights use 7 bits (``reduce_range``) so u8 x s8 products cannot saturate."""
    require("onnx", "onnx")
    quantization = require("onnx", "onnxruntime.quantization")
    quantization.quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=["MatMul", "Attention"],  # the embedding tables (Gather) stay float32
        weight_type=quantization.QuantType.QInt8,
        per_channel=True,
        reduce_range=isa in ("avx2", "avx512"),
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
