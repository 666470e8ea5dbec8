"""OpenVINO: convert the ONNX export, static int8 quantisation calibrated on corpus texts (NNCF), a runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from densekit.retriever.backends.common import require


class OpenVINORunner:
    """An OpenVINO CPU compiled model over one ``.xml`` file.

    `exact` keeps float32 arithmetic: OpenVINO otherwise runs bf16 on CPUs that have it, which would
    move the embeddings of an fp32 export away from torch's."""

    def __init__(self, path: Path, threads: int | None = None, exact: bool = True) -> None:
        ov = require("openvino", "openvino")
        config: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if exact:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = tuple(i.get_any_name() for i in self.compiled.inputs)
        outputs = [o.get_any_name() for o in self.compiled.outputs]
        self.output = outputs.index("last_hidden_state") if "last_hidden_state" in outputs else 0

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name].astype(np.int64, copy=False) for name in self.input_names}
        result = self.request.infer(feed)
        return np.asarray(result[self.compiled.outputs[self.output]])


def convert_onnx(source: Path, target: Path) -> None:
    """Convert the ONNX file `source` into OpenVINO IR `target` (``.xml`` + ``.bin``), weights kept fp32."""
    ov = require("openvino", "openvino")
    ov.save_model(ov.convert_model(str(source)), str(target), compress_to_fp16=False)


def quantize_openvino(source: Path, target: Path, samples: list[dict[str, np.ndarray]]) -> None:
    """Static int8 post-training quantisation of the IR `source` into `target` with NNCF, calibrated on
    `samples` (tokenised corpus texts, one batch each); the transformer preset keeps accuracy-critical
    operations (softmax, layer norm) in float."""
    ov = require("openvino", "openvino")
    nncf = require("openvino", "nncf")
    model = ov.Core().read_model(str(source))
    dataset = nncf.Dataset(samples, lambda sample: {k: v.astype(np.int64) for k, v in sample.items()})
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples))
    ov.save_model(quantized, str(target), compress_to_fp16=False)
