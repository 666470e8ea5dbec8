"""sentence-transformers in a second Python environment, for ``benchmarks/encode.py --st-python``.

ST's ONNX and OpenVINO backends need optimum / optimum-intel, which want transformers 4.x, while
densekit's environment has transformers 5.x. So encode.py can start this file with another
interpreter (a venv holding ``sentence-transformers[onnx,openvino]`` on transformers 4.x; see
docs/benchmarks.md) and drive it over pipes. The worker half (``serve``) imports only what that
venv has; the client half (``STWorker``) only the standard library and numpy.

Protocol: one JSON object a line on the worker's stdin, one answer a line on its stdout
(``{"ok": true, ...}`` or ``{"ok": false, "error": "Type: message"}``):

- ``{"op": "versions"}`` -> ``python``, ``executable``, ``threads``, ``versions`` (sentence-transformers,
  transformers, optimum, optimum-onnx, optimum-intel, onnxruntime, openvino, torch; None if absent)
- ``{"op": "load", "name", "folder", "backend", "file", "device"}`` -> ``settings`` (thread and
  precision settings as the loaded runtime reports them). ``backend`` is torch, onnx or openvino;
  ``file`` the export inside ``folder`` (``onnx/model.onnx``, ...; None for torch).
- ``{"op": "encode", "name", "texts_file", "out_npy", "batch_size"}`` -> ``seconds``: the time around
  ``model.encode`` alone; the embeddings (float32) are written to ``out_npy``. ``texts_file`` is a
  JSON list of strings, read once and kept.
- ``{"op": "query", "name", "text"}`` -> ``seconds`` (around ``model.encode([text])``), ``vector``.
- ``{"op": "quit"}``

Threads: ``--threads`` goes to ``torch.set_num_threads``, to ONNX Runtime's intra-op threads (inter-op
1, as densekit's ONNX runner) through ``model_kwargs={"session_options": ...}``, and to OpenVINO's
``INFERENCE_NUM_THREADS`` through ``model_kwargs={"ov_config": ...}``. OpenVINO fp32 files also get
``INFERENCE_PRECISION_HINT=f32``, as densekit's runner does (otherwise CPUs with bf16 run bf16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PACKAGES = (
    "sentence-transformers",
    "transformers",
    "optimum",
    "optimum-onnx",
    "optimum-intel",
    "onnxruntime",
    "openvino",
    "torch",
)


# ---- worker side (runs in the reference environment) ------------------------------------------


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _load(request: dict, threads: int):
    """The SentenceTransformer for one load request, and the settings its runtime reports."""
    from sentence_transformers import SentenceTransformer

    folder, backend, device = request["folder"], request["backend"], request.get("device", "cpu")
    if backend == "torch":
        model = SentenceTransformer(folder, device=device)
        if device.startswith("cuda"):
            model.half()
        import torch

        return model, {"torch_threads": torch.get_num_threads(), "device": device}
    kwargs: dict = {"file_name": request["file"]} if request.get("file") else {}
    if backend == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        kwargs.update(session_options=options, provider="CPUExecutionProvider")
    elif backend == "openvino":
        ov_config: dict = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if "qint8" not in (request.get("file") or ""):
            ov_config["INFERENCE_PRECISION_HINT"] = "f32"
        kwargs["ov_config"] = ov_config
    else:
        raise ValueError(f"unknown backend {backend!r}")
    model = SentenceTransformer(folder, device="cpu", backend=backend, model_kwargs=kwargs)
    inner = model[0].auto_model
    if backend == "onnx":
        opts = inner.session.get_session_options()
        settings = {
            "intra_op_threads": opts.intra_op_num_threads,
            "inter_op_threads": opts.inter_op_num_threads,
            "providers": inner.session.get_providers(),
            "file": request.get("file"),
        }
    else:
        inner.compile()
        settings = {}
        for key in ("INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT"):
            value = inner.request.get_property(key)
            settings[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        settings["file"] = request.get("file")
    return model, settings


def serve(threads: int) -> None:
    """Answer requests from stdin until EOF or ``quit``. Library output printed to stdout goes to
    stderr, so that stdout carries the protocol alone."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(threads)
    models: dict = {}
    texts: dict[str, list[str]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        if op == "quit":
            break
        try:
            if op == "versions":
                answer = {
                    "python": sys.version.split()[0],
                    "executable": sys.executable,
                    "threads": threads,
                    "versions": _versions(),
                }
            elif op == "load":
                models[request["name"]], settings = _load(request, threads)
                answer = {"settings": settings}
            elif op == "encode":
                model = models[request["name"]]
                path = request["texts_file"]
                if path not in texts:
                    texts[path] = json.loads(Path(path).read_text(encoding="utf-8"))
                start = time.perf_counter()
                out = model.encode(
                    texts[path], batch_size=request["batch_size"], convert_to_numpy=True, show_progress_bar=False
                )
                seconds = time.perf_counter() - start
                np.save(request["out_npy"], np.asarray(out, dtype=np.float32))
                answer = {"seconds": seconds}
            elif op == "query":
                model = models[request["name"]]
                start = time.perf_counter()
                out = model.encode([request["text"]], convert_to_numpy=True)
                seconds = time.perf_counter() - start
                answer = {"seconds": seconds, "vector": np.asarray(out, dtype=np.float32)[0].tolist()}
            else:
                raise ValueError(f"unknown op {op!r}")
            answer["ok"] = True
        except Exception as exc:  # noqa: BLE001 - the client reports it (e.g. a backend that cannot load)
            answer = {"ok": False, "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"}
        protocol.write(json.dumps(answer) + "\n")


# ---- client side (runs in densekit's environment) ----------------------------------------------


class WorkerError(RuntimeError):
    """The worker answered ``ok: false``, or died."""


class STWorker:
    """The worker process started with `python`; each request waits for its answer."""

    def __init__(self, python: str | Path, threads: int) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="densekit-st-worker-")
        self.log_path = Path(self.dir.name) / "stderr.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.outputs = 0
        self.process = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            encoding="utf-8",
        )

    def request(self, **fields) -> dict:
        assert self.process.stdin and self.process.stdout
        try:
            self.process.stdin.write(json.dumps(fields) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.process.stdout.readline()
        if not line:
            tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise WorkerError(f"the sentence-transformers worker exited; its stderr ends with:\n{tail}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise WorkerError(answer["error"])
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")  # type: ignore[union-attr]
                self.process.stdin.flush()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self.dir.cleanup()


class WorkerModel:
    """One model loaded in the worker: ``encode()`` returns the embeddings and keeps the worker's own
    timing of ``model.encode`` in ``last_seconds`` (the pipe and the .npy round trip excluded)."""

    def __init__(self, worker: STWorker, name: str, texts_file: Path, batch_size: int) -> None:
        self.worker, self.name, self.texts_file, self.batch_size = worker, name, texts_file, batch_size
        worker.outputs += 1
        self.out = Path(worker.dir.name) / f"embeddings-{worker.outputs}.npy"
        self.last_seconds: float | None = None

    def encode(self) -> np.ndarray:
        answer = self.worker.request(
            op="encode", name=self.name, texts_file=str(self.texts_file), out_npy=str(self.out),
            batch_size=self.batch_size,
        )  # fmt: skip
        self.last_seconds = answer["seconds"]
        return np.load(self.out)

    def query(self, text: str) -> tuple[np.ndarray, float]:
        answer = self.worker.request(op="query", name=self.name, text=text)
        return np.asarray([answer["vector"]], dtype=np.float32), answer["seconds"]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="sentence-transformers worker for benchmarks/encode.py")
    parser.add_argument("--threads", type=int, required=True)
    serve(parser.parse_args().threads)
