"""Milvus benchmark: FAISS in process against Milvus Lite (local file, and its gRPC server on 127.0.0.1),
side by side in one run, on synthetic sentence-embedding-like vectors.

Data: `--size` unit vectors of 384 dimensions from 1,000 clusters with a decaying noise spectrum
(densekit.index.synthetic, the generator benchmarks/index.py uses), written to a `.npy` and read
back memory-mapped, as `densekit index build --backend milvus` streams the embedding cache; 1,000
queries from the same clusters. Exact top-10 (FAISS Flat) is the reference.

Per backend and index type (flat, hnsw): ingestion seconds and vectors/s (FAISS: build; Milvus: the
batched inserts of densekit.index.milvus_ingest.ingest plus the flush, then the time until the first
search answers, which is when Milvus Lite has built and loaded its index), peak resident memory and its growth
during the build (sampled every 50 ms: of this process for FAISS and for the embedded Lite engine,
which runs inside it, so those peaks include the memory-mapped vectors' pages; of the server process
for gRPC), queries per second for the whole batch (k=10, batches of 1,024
queries, efSearch 128 for HNSW) and recall@10 against exact search.

    python benchmarks/milvus.py --size 50000                 # a few minutes on 2 busy cores
    python benchmarks/milvus.py --size 1000000               # the issue's size: an idle machine, 1-2.5 h
    python benchmarks/milvus.py --backends faiss,lite-file --factory hnsw
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from peak import PeakRSS

from densekit.index.dense import DenseIndex
from densekit.index.milvus import MilvusIndex
from densekit.index.milvus_ingest import ingest
from densekit.index.synthetic import clustered_vectors

BACKENDS = ("faiss", "lite-file", "lite-grpc")
EF_SEARCH = 128


def recall_at_10(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(f[:10]) & set(e[:10])) / 10 for f, e in zip(found, exact, strict=True)]))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir), "--host", "127.0.0.1"]
        + ["--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if "listening" not in (server.stdout.readline() if server.stdout else ""):
        server.kill()
        raise RuntimeError("the Milvus Lite server did not start")
    return server, f"http://127.0.0.1:{port}"


def bench_faiss(factory: str, vectors: np.ndarray, ids: list[str], queries: np.ndarray, exact) -> dict:
    with PeakRSS() as memory:
        start = time.perf_counter()
        index = DenseIndex.build(vectors, ids, factory=factory)
        seconds = time.perf_counter() - start
    params = {"efSearch": EF_SEARCH} if factory == "hnsw" else None
    start = time.perf_counter()
    _, found = index.search(queries, 10, params=params)
    qps = len(queries) / (time.perf_counter() - start)
    return {
        "ingest_s": round(seconds, 1),
        "vectors_per_s": round(len(ids) / seconds),
        "ready_s": 0.0,
        "peak_rss_mb": round(memory.peak / 2**20),
        "rss_growth_mb": round((memory.peak - memory.start) / 2**20),
        "qps": round(qps),
        "recall@10": round(recall_at_10(found, exact), 4),
    }


def bench_milvus(
    uri: str, factory: str, vectors: np.ndarray, ids: list[str], queries, exact, pid: int | None, batch: int
) -> dict:
    with PeakRSS(pid) as memory:
        start = time.perf_counter()
        index = MilvusIndex.create(uri, f"bench_{factory}", vectors.shape[1], preset=factory, n_expected=len(ids))
        report = ingest(index, vectors, ids, batch_size=batch, show_progress=False)
        ingest_s = time.perf_counter() - start
        index.client.load_collection(index.collection)
        index.search(queries[:1], 10)  # Milvus Lite builds the vector index on seal; the first search waits for it
        ready_s = time.perf_counter() - start - ingest_s
        params = {"efSearch": EF_SEARCH} if factory == "hnsw" else None
        start = time.perf_counter()
        _, found = index.search(queries, 10, params=params)
        qps = len(queries) / (time.perf_counter() - start)
    assert report.written == len(ids) and len(index) == len(ids)
    return {
        "ingest_s": round(ingest_s, 1),
        "vectors_per_s": round(len(ids) / ingest_s),
        "ready_s": round(ready_s, 1),
        "peak_rss_mb": round(memory.peak / 2**20),
        "rss_growth_mb": round((memory.peak - memory.start) / 2**20),
        "qps": round(qps),
        "recall@10": round(recall_at_10(found, exact), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="corpus vectors")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--factory", action="append", help="flat, hnsw, ivf-flat (repeatable; default flat, hnsw)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated: {', '.join(BACKENDS)}")
    parser.add_argument("--insert-batch", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--keep", action="store_true", help="keep the vectors and Milvus data (printed path)")
    args = parser.parse_args()
    factories = args.factory or ["flat", "hnsw"]
    backends = args.backends.split(",")
    work = Path(tempfile.mkdtemp(prefix="densekit-milvus-bench-"))
    print(f"working in {work}", flush=True)
    np.save(work / "vectors.npy", clustered_vectors(args.size, args.dim, clusters=1000, seed=0))
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    queries = clustered_vectors(args.queries, args.dim, clusters=1000, seed=0, stream=1)
    ids = [str(i) for i in range(args.size)]
    _, exact = DenseIndex.build(vectors, ids, factory="flat").search(queries, 10)
    load = os.getloadavg()
    rows = []
    server = None
    try:
        for backend in backends:
            uri, pid = str(work / "lite-file.db"), None
            if backend == "lite-grpc":
                server, uri = start_server(work / "lite-grpc.db")
                pid = server.pid
            for factory in factories:
                if backend == "faiss":
                    row = bench_faiss(factory, vectors, ids, queries, exact)
                else:
                    row = bench_milvus(uri, factory, vectors, ids, queries, exact, pid, args.insert_batch)
                rows.append({"backend": backend, "index": factory, **row})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    header = ["backend", "index", "ingest_s", "vectors_per_s", "ready_s", "peak_rss_mb", "rss_growth_mb", "qps"]
    header.append("recall@10")
    print(
        f"\n{args.size} x {args.dim} vectors, {args.queries} queries, k=10; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
