"""`densekit serve` under a bounded local load, against calling the library in process.

The service (`densekit serve INDEX --port 0`, its own process, on 127.0.0.1) answers single-query
requests (`POST /search {"query": ..., "k": 10}`) from C concurrent clients (threads, each with its
own keep-alive HTTP connection) for a fixed count of requests: the SciFact test queries, in order,
dealt round-robin to the clients. For each C it reports latency (p50, p99, from sending the request to
the parsed answer), requests per second over the whole level, requests failed (an exception or an HTTP
error), requests lost (no answer, or an answer for another query) and answers whose ranking differs
from the library's for the same query (beyond float rounding: see
:mod:`densekit.integrations.http.batching`). All three counts must be 0.

The anchor is the library in this process on the same index: ``retriever.search({q: text}, k)`` one
query at a time (latency and throughput of a caller with one query at hand), and all queries in one
call (the batched throughput an offline job gets).

The index is all-MiniLM-L6-v2 over SciFact, built with `densekit index build` when missing. The load
average (1 min) is printed before and after: the machine is shared, so read the numbers next to it.

    python benchmarks/serve.py                                  # C = 1, 4, 16; 300 requests each
    python benchmarks/serve.py --concurrency 1,8 --requests 100 --max-batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from commands import DENSEKIT

K = 10
TOLERANCE = 1e-5


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def same_ranking(a: list, b: list, tolerance: float = TOLERANCE) -> bool:
    """Equal up to float rounding: scores equal rank by rank within `tolerance`, documents equal except
    between near-tied scores."""
    if len(a) != len(b) or any(abs(x[1] - y[1]) > tolerance for x, y in zip(a, b, strict=True)):
        return False
    scores_a, scores_b = dict(a), dict(b)
    for doc_id in scores_a.keys() ^ scores_b.keys():  # in one ranking only: a near-tie at the k-th place
        if abs(scores_a.get(doc_id, scores_b.get(doc_id)) - a[-1][1]) > tolerance:
            return False
    return all(abs(scores_a[d] - scores_b[d]) <= tolerance for d in scores_a.keys() & scores_b.keys())


def ensure_index(path: Path, data: str, model: str) -> None:
    if (path / "manifest.json").is_file():
        return
    print(f"building {path} ({model} over {data}) ...", flush=True)
    command = [DENSEKIT, "index", "build", data, "--model", model]
    subprocess.run([*command, "--out", str(path), "-q"], check=True)


def start_server(index: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [DENSEKIT, "serve", str(index), "--port", "0", "--json"]
    command += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"densekit serve did not start (exit {process.wait()})")
    return process, json.loads(line)["url"]


def load_level(url: str, queries: list[tuple[str, str]], clients: int, expected: dict) -> dict:
    """Send every query once as a single-query request, from `clients` threads; time and check each."""
    import httpx

    latencies: list[float] = []
    failed, different = [], 0
    answers: dict[int, list] = {}
    lock = threading.Lock()

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for i in range(offset, len(queries), clients):
                query_id, text = queries[i]
                start = time.perf_counter()
                try:
                    response = http.post("/search", json={"query": text, "k": K})
                    response.raise_for_status()
                    hits = response.json()["results"][0]["hits"]
                except Exception as exc:  # noqa: BLE001 -- counted as a failed request
                    with lock:
                        failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    answers[i] = [(h["doc_id"], h["score"]) for h in hits]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    for i, (query_id, _) in enumerate(queries):
        if i in answers and not same_ranking(answers[i], expected[query_id]):
            different += 1
    return {
        "clients": clients,
        "requests": len(queries),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "requests_per_s": round(len(latencies) / wall, 1),
        "failed": len(failed),
        "lost": len(queries) - len(answers) - len(failed),  # neither answered nor failed
        "different": different,
        "first_failure": failed[0] if failed else None,
    }


def in_process(retriever, queries: list[tuple[str, str]]) -> tuple[dict, dict, dict]:
    latencies, expected = [], {}
    start = time.perf_counter()
    for query_id, text in queries:
        t = time.perf_counter()
        expected[query_id] = retriever.search({query_id: text}, K)[query_id]
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    single = {
        "clients": "in process, one query per call",
        "requests": len(queries),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "requests_per_s": round(len(queries) / wall, 1),
    }
    start = time.perf_counter()
    retriever.search(dict(queries), K)
    wall = time.perf_counter() - start
    batch = {"clients": "in process, all queries in one call", "requests": len(queries), "p50_ms": None}
    batch.update(p99_ms=None, requests_per_s=round(len(queries) / wall, 1))
    return single, batch, expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="scifact", help="BEIR folder or dataset name (test queries)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--index", type=Path, help="index directory (default: under $DENSEKIT_HOME, built if missing)")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=300, help="requests per level (test queries, cycled)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, here and in the server")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("DENSEKIT_QUIET", "1")

    import torch

    from densekit.data import load_dataset
    from densekit.paths import densekit_home
    from densekit.retriever.compose import open_index

    torch.set_num_threads(args.threads)
    index = args.index or densekit_home() / "benchmarks" / f"{args.data}-{args.model}.idx"
    index.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    ensure_index(index, args.data, args.model)
    test = list(load_dataset(args.data, split="test").queries.items())
    queries = [test[i % len(test)] for i in range(args.requests)]

    retriever = open_index(index, device="cpu")
    retriever.search(dict(test[:8]), K)  # warm-up
    single, batch, expected = in_process(retriever, queries)
    print(json.dumps(single), flush=True)
    process, url = start_server(index, args)
    try:
        load_level(url, queries[:20], 1, expected)  # warm-up
        rows = [single, batch]
        for clients in (int(c) for c in args.concurrency.split(",")):
            rows.append(load_level(url, queries, clients, expected))
            print(json.dumps(rows[-1]), flush=True)
        import httpx

        batching = httpx.get(f"{url}/info", timeout=30).json()["batching"]
    finally:
        process.terminate()
        process.wait(timeout=60)
    load_after = os.getloadavg()
    result = {
        "index": str(index),
        "model": args.model,
        "k": K,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "threads": args.threads,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "server_batching": batching,
        "rows": rows,
    }
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print("\n| clients | requests | p50 ms | p99 ms | requests/s | failed | lost | different |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = [row.get(key) for key in ("p50_ms", "p99_ms", "requests_per_s", "failed", "lost", "different")]
        shown = ["-" if cell is None else str(cell) for cell in cells]
        print(f"| {row['clients']} | {row['requests']} | " + " | ".join(shown) + " |")
    print(f"\nserver batching: {batching}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    bad = sum(row.get(key, 0) or 0 for row in rows for key in ("failed", "lost", "different"))
    if bad:
        raise SystemExit(f"{bad} requests failed, were lost or differ from the library")


if __name__ == "__main__":
    main()
