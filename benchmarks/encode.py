"""Corpus encoding throughput: densekit's Encoder on each backend against sentence-transformers, same run.

Same model folder, same texts (SciFact corpus, title + text as BEIR joins them), same batch size,
same thread count (torch, ONNX Runtime and OpenVINO all get ``--threads``), same device. All
encoders alternate over several rounds so that background load affects them alike; the median
throughput of each is reported, with ratios against sentence-transformers' PyTorch fp32 (> 1.0
means faster). Also checks that the embeddings agree (max |difference| with ST torch, and the
lowest per-vector cosine of each backend against densekit torch).

Backends (``--backends``): densekit torch, onnx, onnx-int8, openvino, openvino-int8, run from an
export written by :func:`densekit.retriever.model_export.export_model` (OpenVINO int8 calibrated on
``--calibration`` corpus texts that are not the measured ones). sentence-transformers runs the same
folder with ``backend="onnx"``/``"openvino"`` and the same files (``--st-backends``); a backend that
cannot load (optimum missing, or an optimum that does not support the installed transformers) is
listed under ``unavailable`` with the reason, never silently dropped.

``--st-python PATH``: every sentence-transformers backend (torch too) runs instead in a worker process
started with that interpreter (``benchmarks/st_worker.py``), e.g. a venv with
``sentence-transformers[onnx,openvino]`` on transformers 4.x, where optimum works (docs/benchmarks.md).
The worker times ``model.encode`` itself (the pipe and the .npy hand-over are not counted), uses the same
thread count, and reports its versions (``st_environment`` in the result).

``--latency``: a single short query, encoded and then searched in a Flat and an HNSW index over the
encoded documents, repeated ``--latency-repeats`` times per backend: p50 / p99 milliseconds.
``--ndcg``: SciFact test nDCG@10 of each densekit backend (the whole corpus is encoded per backend).

    python benchmarks/encode.py --docs 1000 --rounds 3 --threads 2
    python benchmarks/encode.py --docs 500 --rounds 5 --threads 2 --latency \
        --backends torch,onnx,onnx-int8,openvino,openvino-int8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ALL_BACKENDS = "torch,onnx,onnx-int8,openvino,openvino-int8"
ST_FILES = {
    "onnx": ("onnx", "onnx/model.onnx"),
    "onnx-int8": ("onnx", "onnx_int8"),
    "openvino": ("openvino", "openvino/openvino_model.xml"),
    "openvino-int8": ("openvino", "openvino/openvino_model_qint8_quantized.xml"),
}
LATENCY_QUERY = "what causes scurvy?"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="scifact")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--docs", type=int, default=1000, help="first N corpus documents")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", default="torch", help=f"densekit backends, comma-separated ({ALL_BACKENDS})")
    parser.add_argument("--st-backends", default=None, help="sentence-transformers backends (default: --backends)")
    parser.add_argument("--st-python", help="run sentence-transformers in a worker with this interpreter")
    parser.add_argument("--export-dir", type=Path, help="where the exports go (default: a temporary folder)")
    parser.add_argument("--calibration", type=int, default=300, help="corpus texts calibrating OpenVINO int8")
    parser.add_argument("--latency", action="store_true", help="also single-query encode + search latency")
    parser.add_argument("--latency-repeats", type=int, default=200)
    parser.add_argument("--ndcg", action="store_true", help="also nDCG@10 on the test split per densekit backend")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of text")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON to this file")
    return parser.parse_args()


def export_for(model_folder: Path, backends: list[str], out: Path, calibration: list[str]) -> None:
    """One folder holding every export the backends need (fp32 and int8 of ONNX and OpenVINO)."""
    from densekit.retriever.model_export import export_model

    for kind in ("onnx", "openvino"):
        wanted = [b for b in backends if b.startswith(kind)]
        if wanted:
            quantize = "int8" if any(b.endswith("int8") for b in wanted) else None
            source = out if out.is_dir() else model_folder
            export_model(source, kind, out, quantize=quantize, calibration=calibration if quantize else None)


def st_file(folder: Path, backend: str) -> tuple[str, str | None]:
    """The sentence-transformers backend kind and the export file (inside `folder`) for `backend`."""
    kind, file_name = ST_FILES[backend]
    if file_name == "onnx_int8":
        found = sorted((folder / "onnx").glob("model_qint8_*.onnx"))
        file_name = f"onnx/{found[0].name}" if found else None
    return kind, file_name


def st_loader(folder: Path, backend: str, device: str):
    """A sentence-transformers model on `backend` over densekit's export, or the reason it cannot load."""
    from sentence_transformers import SentenceTransformer

    if backend == "torch":
        return SentenceTransformer(str(folder), device=device), None
    kind, file_name = st_file(folder, backend)
    kwargs = {"file_name": file_name} if file_name else {}
    try:
        return SentenceTransformer(str(folder), device="cpu", backend=kind, model_kwargs=kwargs), None
    except Exception as exc:  # noqa: BLE001 - the reason is reported, the benchmark goes on
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def timed(encode_query):
    """`encode_query` returning its vector and the seconds it took (wall clock around the call)."""

    def run():
        start = time.perf_counter()
        vector = encode_query()
        return vector, time.perf_counter() - start

    return run


def latency(encode_query, embeddings: np.ndarray, repeats: int) -> dict:
    """Single-query encode, and encode + search in Flat and in HNSW (M=32, efSearch 64), p50/p99.
    `encode_query()` returns the query vector and its encode seconds (see :func:`timed`)."""
    import faiss

    dim = embeddings.shape[1]
    flat = faiss.IndexFlatIP(dim)
    flat.add(embeddings)
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efSearch = 64
    hnsw.add(embeddings)
    encode_query()  # warm-up
    times: dict[str, list[float]] = {"encode": [], "flat": [], "hnsw": []}
    for _ in range(repeats):
        for name, index in (("flat", flat), ("hnsw", hnsw)):
            vector, encode_s = encode_query()
            start = time.perf_counter()
            index.search(vector, 10)
            times[name].append(encode_s + time.perf_counter() - start)
            times["encode"].append(encode_s)
    return {name: percentiles(values) for name, values in times.items()}


def ndcg_at_10(folder: Path, backend: str, data: str, batch_size: int) -> float:
    from densekit.data import load_dataset
    from densekit.eval.harness import evaluate_retriever
    from densekit.retriever.dense import DenseRetriever
    from densekit.retriever.encoder import Encoder

    ds = load_dataset(data, split="test")
    encoder = Encoder(folder, device="cpu", batch_size=batch_size, backend=backend)
    retriever = DenseRetriever.build(encoder, ds.corpus, cache=False, show_progress=False)
    metrics = evaluate_retriever(retriever, ds, depth=100).result.to_json()
    flat = metrics.get("metrics", metrics)
    return float(next(v for k, v in flat.items() if "ndcg" in k and k.endswith("10")))


def fastest_summary(median: dict[str, float]) -> dict:
    """The issue's two goals: densekit's fastest backend against ST's torch fp32 and against ST's fastest."""
    ours = {k: v for k, v in median.items() if k.startswith("densekit")}
    theirs = {k: v for k, v in median.items() if k.startswith("sentence-transformers")}
    best, best_st = max(ours, key=ours.get), max(theirs, key=theirs.get)
    return {
        "fastest_densekit": best,
        "fastest_st": best_st,
        "ratio_fastest_vs_st_torch": round(ours[best] / median["sentence-transformers"], 3),
        "ratio_fastest_vs_st_fastest": round(ours[best] / theirs[best_st], 3),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from densekit.data import load_dataset
    from densekit.progress import set_quiet
    from densekit.retriever.encoder import Encoder

    set_quiet(True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    st_backends = [b.strip() for b in (args.st_backends or args.backends).split(",") if b.strip()]
    if "torch" not in backends or "torch" not in st_backends:
        raise SystemExit("--backends and --st-backends must include torch (the ratios are against it)")
    corpus = load_dataset(args.data).corpus.texts()
    texts = corpus[: args.docs]
    base = Encoder(args.model, device=args.device, batch_size=args.batch_size)
    folder = base.folder
    tmp = None
    if any(b != "torch" for b in backends + st_backends):
        tmp = tempfile.TemporaryDirectory(prefix="densekit-encode-bench-")
        folder = args.export_dir or Path(tmp.name) / "model"
        calibration = corpus[args.docs : args.docs + args.calibration] or corpus[: args.calibration]
        export_for(base.folder, sorted(set(backends + st_backends)), folder, calibration)

    runners, unavailable = {}, {}
    for backend in backends:
        encoder = base if backend == "torch" else Encoder(folder, device="cpu", batch_size=args.batch_size,
                                                          backend=backend)  # fmt: skip
        name = "densekit" if backend == "torch" else f"densekit {backend}"
        runners[name] = (lambda e=encoder: e.encode_documents(texts, show_progress=False), encoder)
    worker, st_environment = None, None
    if args.st_python:
        from st_worker import STWorker, WorkerError, WorkerModel

        worker = STWorker(args.st_python, args.threads)
        st_environment = worker.request(op="versions") | {"timing": "model.encode inside the worker"}
        texts_file = Path(worker.dir.name) / "texts.json"
        texts_file.write_text(json.dumps(texts), encoding="utf-8")
        st_environment["settings"] = {}
    for backend in st_backends:
        name = "sentence-transformers" if backend == "torch" else f"sentence-transformers {backend}"
        if worker is not None:
            kind, file_name = ("torch", None) if backend == "torch" else st_file(folder, backend)
            try:
                loaded = worker.request(op="load", name=name, folder=str(folder), backend=kind, file=file_name,
                                        device=args.device)  # fmt: skip
            except WorkerError as exc:
                unavailable[name] = str(exc)
                continue
            st_environment["settings"][name] = loaded["settings"]
            model = WorkerModel(worker, name, texts_file, args.batch_size)
            runners[name] = (model.encode, model)
            continue
        model, why = st_loader(folder, backend, args.device)
        if model is None:
            unavailable[name] = why
            continue
        if args.device.startswith("cuda") and backend == "torch":
            model.half()
        runners[name] = (
            lambda m=model: m.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False),
            model,
        )

    if "sentence-transformers" not in runners:
        raise SystemExit(f"sentence-transformers (torch) did not load: {unavailable['sentence-transformers']}")
    for fn, _ in runners.values():  # warm-up: first-call allocations, lazy imports
        fn()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    outputs = {}
    order = list(runners)
    for round_ in range(args.rounds):
        for name in order if round_ % 2 == 0 else reversed(order):  # alternate who goes first
            start = time.perf_counter()
            outputs[name] = runners[name][0]()
            seconds = time.perf_counter() - start
            if worker is not None and isinstance(runners[name][1], WorkerModel):
                seconds = runners[name][1].last_seconds  # the worker's own timing
            rates[name].append(len(texts) / seconds)
    median = {k: statistics.median(v) for k, v in rates.items()}
    st_torch = median["sentence-transformers"]
    reference = outputs["densekit"]
    result = {
        "benchmark": "encode",
        "model": args.model,
        "data": args.data,
        "documents": len(texts),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": args.device,
        "rounds": args.rounds,
        "docs_per_s": {k: round(v, 2) for k, v in median.items()},
        "all_rounds_docs_per_s": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "ratio_densekit_vs_st": round(median["densekit"] / st_torch, 3),
        "ratio_vs_st_torch": {k: round(v / st_torch, 3) for k, v in median.items()},
        **fastest_summary(median),
        "min_cosine_vs_densekit_torch": {
            k: round(float((np.asarray(v, dtype=np.float32) * reference).sum(1).min()), 5) for k, v in outputs.items()
        },
        "max_abs_embedding_diff": float(np.abs(outputs["densekit"] - outputs["sentence-transformers"]).max()),
        "unavailable": unavailable,
        **({"st_environment": st_environment} if st_environment else {}),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    if args.latency:
        result["latency"] = {}
        for name, (_, model) in runners.items():
            if name.startswith("densekit"):
                query = timed(lambda m=model: m.encode_queries([LATENCY_QUERY], show_progress=False))
            elif worker is not None:
                query = lambda m=model: m.query(LATENCY_QUERY)  # noqa: E731 - timed inside the worker
            else:
                query = timed(lambda m=model: m.encode([LATENCY_QUERY], convert_to_numpy=True))
            result["latency"][name] = latency(query, np.ascontiguousarray(outputs[name], dtype=np.float32),
                                              args.latency_repeats)  # fmt: skip
    if args.ndcg:
        result["ndcg_at_10"] = {b: round(ndcg_at_10(folder, b, args.data, args.batch_size), 4) for b in backends}
    if worker is not None:
        worker.close()
    if tmp is not None:
        tmp.cleanup()
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{len(texts)} {args.data} documents, {args.model}, batch {args.batch_size}, {args.threads} threads, "
        f"{args.device}, median of {args.rounds} alternating rounds"
    )
    for name, rate in median.items():
        ratio = result["ratio_vs_st_torch"][name]
        cosine = result["min_cosine_vs_densekit_torch"][name]
        print(f"  {name:<36} {rate:8.2f} docs/s  {ratio:6.3f}x ST torch  min cos {cosine:.4f}  rounds: {rates[name]}")
    for name, why in unavailable.items():
        print(f"  {name:<36} unavailable: {why}")
    if st_environment:
        v = st_environment["versions"]
        print(f"  sentence-transformers side: worker on Python {st_environment['python']} "
              f"({st_environment['executable']}), " + ", ".join(f"{k} {x}" for k, x in v.items() if x))  # fmt: skip
    print(f"  ratio densekit / sentence-transformers (torch): {result['ratio_densekit_vs_st']:.3f}x")
    print(
        f"  fastest: {result['fastest_densekit']} = {result['ratio_fastest_vs_st_torch']:.3f}x ST torch, "
        f"{result['ratio_fastest_vs_st_fastest']:.3f}x {result['fastest_st']}"
    )
    print(f"  max |difference| of embeddings (torch): {result['max_abs_embedding_diff']:.2e}")
    for name, figures in result.get("latency", {}).items():
        cells = ", ".join(f"{k} p50 {v['p50_ms']:.2f} / p99 {v['p99_ms']:.2f} ms" for k, v in figures.items())
        print(f"  latency {name:<28} {cells}")
    for backend, value in result.get("ndcg_at_10", {}).items():
        print(f"  nDCG@10 densekit {backend:<14} {value:.4f}")


if __name__ == "__main__":
    main()
