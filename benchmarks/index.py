"""Index benchmark: build time, memory, recall@10 against Flat and queries per second for each index
type, all in one run, with Flat (exact search) as the anchor.

Datasets:
  * synthetic: `--n` (default 1M) unit vectors of 384 dimensions drawn from 1,000 clusters with a
    decaying noise spectrum (densekit.index.synthetic; not uniform noise), 1,000 queries from the same
    clusters;
  * scifact: the SciFact corpus (5,183 documents) and its 300 test queries encoded with
    all-MiniLM-L6-v2 (corpus embeddings from the cache under $DENSEKIT_HOME), plus nDCG@10 of each
    index against the qrels.

Per index: build seconds (train + add), memory (the serialised FAISS index, which is its in-memory
size; and the growth of the process's resident memory during the build), memory / Flat,
recall@10 against Flat (|top-10 ∩ Flat's top-10| / 10, averaged; the demanding "10-recall@10"),
1-recall@10 (how often Flat's nearest neighbour is among the top 10: the "R@10" that FAISS's own
benchmarks and papers report, which is far more forgiving), QPS for the whole query batch and
QPS / Flat. IVF and HNSW indexes are also swept over nprobe / efSearch. Each PQ index is measured a
second time with an exact re-rank of its top 100 against the float32 vectors memory-mapped from disk
(`DenseIndex.search_reranked`): the index in memory is the same, the vectors stay on disk. The
quantised-embedding presets (binary: sign bits, Hamming search; int8: 8-bit scalar codes) are measured
alone and rescored at each of `--rescore-multiplier` (the top multiplier x 10 re-scored the same way).

    python benchmarks/index.py                                  # both datasets, every preset
    python benchmarks/index.py --n 100000 --datasets synthetic  # quicker
    python benchmarks/index.py --factory ivf-pq --factory "PCA352,IVF1024,PQ176"   # choose indexes
    python benchmarks/index.py --device gpu                     # FAISS on the GPU (faiss-gpu)
    python benchmarks/index.py --factory flat --factory binary --factory int8 --rescore-multiplier 4,10,20
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time

import faiss
import numpy as np
import psutil

from densekit.index.dense import DenseIndex
from densekit.index.factory import ivf_lists, resolve
from densekit.index.synthetic import clustered_vectors

DEFAULT_FACTORIES = ["flat", "ivf-flat", "ivf-pq", "ivf-pqr", "hnsw", "sq8", "fp16", "int8", "binary"]
QUANTISED = ("BFlat", "BHNSW32", "SQ8")  # factories of the binary(-hnsw) and int8 presets: rescored per multiplier
NPROBES = (8, 16, 32, 64, 128, 256)
EF_SEARCHES = (16, 32, 64, 128, 256)
RERANK = 100


def rss() -> int:
    return psutil.Process().memory_info().rss


def recall_at_10(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(f[:10]) & set(e[:10])) / 10 for f, e in zip(found, exact, strict=True)]))


def nn_recall_at_10(found: list[list[str]], exact: list[list[str]]) -> float:
    """FAISS's R@10: the fraction of queries whose exact nearest neighbour is in the top 10."""
    return float(np.mean([e[0] in f[:10] for f, e in zip(found, exact, strict=True)]))


def recall_fields(found: list[list[str]], exact: list[list[str]]) -> dict:
    """The two recall columns of a row: recall@10 and 1-recall@10 against Flat."""
    return {"recall@10": round(recall_at_10(found, exact), 4), "1-recall@10": round(nn_recall_at_10(found, exact), 4)}


def timed_search(index: DenseIndex, queries: np.ndarray, params: dict | None = None) -> tuple[float, list[list[str]]]:
    start = time.perf_counter()
    _, found = index.search(queries, 10, params=params)
    return len(queries) / (time.perf_counter() - start), found


def synthetic(n: int, n_queries: int, dim: int) -> tuple[np.ndarray, list[str], np.ndarray, dict]:
    vectors = clustered_vectors(n, dim, clusters=1000, seed=0)
    queries = clustered_vectors(n_queries, dim, clusters=1000, seed=0, stream=1)
    return vectors, [str(i) for i in range(n)], queries, {}


def scifact() -> tuple[np.ndarray, list[str], np.ndarray, dict]:
    from densekit.data import load_dataset
    from densekit.index.cache import encode_corpus
    from densekit.retriever.encoder import Encoder

    ds = load_dataset("scifact", split="test")
    encoder = Encoder("all-MiniLM-L6-v2", device="cpu")
    vectors = np.ascontiguousarray(encode_corpus(encoder, ds.corpus, show_progress=False))
    query_ids = list(ds.queries)
    queries = encoder.encode_queries([ds.queries[q] for q in query_ids], show_progress=False)
    return vectors, list(ds.corpus.ids), queries, {"qrels": ds.qrels, "query_ids": query_ids}


def ndcg_at_10(index: DenseIndex, queries: np.ndarray, extra: dict, params: dict | None = None) -> float | None:
    if "qrels" not in extra:
        return None
    from densekit.data import Run
    from densekit.eval.metrics import evaluate

    scores, found = index.search(queries, 10, params=params)
    run = Run(
        {
            q: [(d, float(s)) for d, s in zip(ids, row, strict=False)]
            for q, ids, row in zip(extra["query_ids"], found, scores, strict=True)
        }
    )
    return round(evaluate(extra["qrels"], run, ["ndcg@10"]).metrics["ndcg@10"], 4)


def sweep(index: DenseIndex, queries: np.ndarray, exact: list[list[str]]) -> list[dict]:
    """Recall and QPS over nprobe (IVF) or efSearch (HNSW) values."""
    if "IVF" in index.factory:
        nlist = faiss.extract_index_ivf(faiss.downcast_index(index.index)).nlist
        grid = [{"nprobe": p} for p in NPROBES if p <= nlist]
    elif "HNSW" in index.factory:
        grid = [{"efSearch": e} for e in EF_SEARCHES]
    else:
        return []
    if "k_factor" in index.search_params:  # ivf-pqr: how many k the refinement re-scores
        grid += [{"k_factor": f} for f in (1, 4, 8, 32, 64)]
    points = []
    for params in grid:
        qps, found = timed_search(index, queries, params)
        points.append({**params, "recall@10": round(recall_at_10(found, exact), 4), "qps": round(qps, 1)})
    return points


def _log(row: dict) -> None:
    print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), file=sys.stderr, flush=True)
    for point in row["sweep"]:
        print("   ", json.dumps(point), file=sys.stderr, flush=True)


def reranked_row(
    row: dict,
    index: DenseIndex,
    queries: np.ndarray,
    on_disk: np.ndarray,
    flat: dict,
    extra: dict,
    multiplier: int | None = None,
) -> dict:
    """The same compressed index, its top-RERANK (or top multiplier x 10) re-scored exactly from the vectors
    memory-mapped on disk."""
    candidates = RERANK if multiplier is None else multiplier * 10
    search = lambda q: index.search_reranked(q, 10, on_disk, candidates=candidates)  # noqa: E731
    before = rss()  # pages of the memory map that the re-ranking touches count as resident
    search(queries[: min(50, len(queries))])
    start = time.perf_counter()
    scores, found = search(queries)
    qps = len(queries) / (time.perf_counter() - start)
    grown = rss() - before
    ndcg = None
    if "qrels" in extra:
        from densekit.data import Run
        from densekit.eval.metrics import evaluate

        run = Run(
            {
                q: [(d, float(s)) for d, s in zip(ids, r, strict=False)]
                for q, ids, r in zip(extra["query_ids"], found, scores, strict=True)
            }
        )
        ndcg = round(evaluate(extra["qrels"], run, ["ndcg@10"]).metrics["ndcg@10"], 4)
    return {
        **row,
        "index": f"{row['index']} + exact re-rank of {candidates} (vectors mmap on disk)"
        if multiplier is None
        else f"{row['index']} + rescore x{multiplier} ({candidates}, vectors mmap on disk)",
        "build_s": 0.0,
        "rss_growth_mb": round(grown / 2**20, 1),
        **recall_fields(found, flat["exact"]),
        "qps": round(qps, 1),
        "qps_vs_flat": round(qps / flat["qps"], 2),
        "ndcg@10": ndcg,
        "sweep": [],
    }


def bench_dataset(
    name: str,
    vectors: np.ndarray,
    ids: list[str],
    queries: np.ndarray,
    extra: dict,
    factories: list[str],
    device: str,
    workdir: str,
    multipliers: tuple[int, ...] = (),
) -> dict:
    n, dim = vectors.shape
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "vectors.npy")
    np.save(path, vectors)
    on_disk = np.load(path, mmap_mode="r")
    print(f"\n== {name}: {n} vectors x {dim}, {len(queries)} queries, device {device}", file=sys.stderr, flush=True)
    rows, flat = [], None
    for template in ["flat", *[f for f in factories if f != "flat"]]:
        factory = template.format(nlist=ivf_lists(n))
        gc.collect()
        before = rss()
        start = time.perf_counter()
        index = DenseIndex.build(vectors, ids, factory, device=device)
        build_s = time.perf_counter() - start
        grown = rss() - before
        index_bytes = index.index_bytes()
        timed_search(index, queries[: min(50, len(queries))])  # warm-up
        qps, found = timed_search(index, queries)
        if flat is None:
            flat = {"bytes": index_bytes, "qps": qps, "exact": found}
        row = {
            "index": factory,
            "factory": index.factory,
            "train_sample": index.train_sample,
            "search_params": index.search_params,
            "build_s": round(build_s, 1),
            "index_mb": round(index_bytes / 2**20, 1),
            "rss_growth_mb": round(grown / 2**20, 1),
            "memory_vs_flat": round(index_bytes / flat["bytes"], 4),
            **recall_fields(found, flat["exact"]),
            "qps": round(qps, 1),
            "qps_vs_flat": round(qps / flat["qps"], 2),
            "ndcg@10": ndcg_at_10(index, queries, extra),
            "sweep": sweep(index, queries, flat["exact"]),
        }
        rows.append(row)
        _log(row)
        if "PQ" in index.factory and on_disk is not None:
            rows.append(reranked_row(row, index, queries, on_disk, flat, extra))
            _log(rows[-1])
        for multiplier in multipliers if index.factory in QUANTISED else ():
            rows.append(reranked_row(row, index, queries, on_disk, flat, extra, multiplier))
            _log(rows[-1])
        del index
    return {"dataset": name, "vectors": n, "dim": dim, "queries": len(queries), "rows": rows}


def markdown(result: dict) -> str:
    has_ndcg = result["rows"][0]["ndcg@10"] is not None
    lines = [
        f"### {result['dataset']}: {result['vectors']:,} vectors x {result['dim']}, {result['queries']} queries",
        "",
        "| index | factory | train sample | search | build s | memory MB | memory / Flat | recall@10 "
        "| 1-recall@10 | QPS | QPS / Flat |" + (" nDCG@10 |" if has_ndcg else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if has_ndcg else ""),
    ]
    for r in result["rows"]:
        params = ", ".join(f"{k}={v}" for k, v in r["search_params"].items()) or "-"
        cells = [
            r["index"],
            f"`{r['factory']}`",
            str(r["train_sample"] or "-"),
            params,
            f"{r['build_s']}",
            f"{r['index_mb']}",
            f"{r['memory_vs_flat']:.3f}",
            f"{r['recall@10']:.3f}",
            f"{r['1-recall@10']:.3f}",
            f"{r['qps']:.0f}",
            f"{r['qps_vs_flat']:.2f}",
        ]
        if r["ndcg@10"] is not None:
            cells.append(f"{r['ndcg@10']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    sweeps = [r for r in result["rows"] if r["sweep"]]
    if sweeps:
        lines += ["", "Search-parameter sweeps (recall@10 / QPS):", ""]
        for r in sweeps:
            points = "; ".join(
                f"{k}={p[k]}: {p['recall@10']:.3f} / {p['qps']:.0f}"
                for p in r["sweep"]
                for k in ("nprobe", "efSearch", "k_factor")
                if k in p
            )
            lines.append(f"- `{r['factory']}`: {points}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="synthetic,scifact", help="comma-separated: synthetic, scifact")
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors")
    parser.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument(
        "--factory",
        action="append",
        help="preset or factory string (repeatable; {nlist} "
        "becomes the preset's list count for the corpus size); "
        f"default: {' '.join(DEFAULT_FACTORIES)}",
    )
    parser.add_argument("--device", default="cpu", help="FAISS device: cpu, gpu, gpu:N")
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: all)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--rescore-multiplier",
        default="4,10",
        help="comma-separated multipliers: the binary and int8 indexes are also measured with their top "
        "multiplier x 10 rescored against the float32 vectors on disk (empty: none)",
    )
    parser.add_argument(
        "--workdir",
        default="/tmp/densekit-index-bench",
        help="where the vectors are written for memory-mapped re-ranking",
    )
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    factories = args.factory or DEFAULT_FACTORIES
    multipliers = tuple(int(m) for m in args.rescore_multiplier.split(",") if m.strip())
    for factory in factories:  # fail early on a bad factory string, not after an hour of building
        resolve(factory.format(nlist=ivf_lists(args.n)), args.n, args.dim)
    results = {
        "machine": {
            "python": platform.python_version(),
            "faiss": faiss.__version__,
            "cpus": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "platform": platform.platform(),
        },
        "command": " ".join(sys.argv),
        "datasets": [],
    }
    for name in args.datasets.split(","):
        if name == "synthetic":
            data = synthetic(args.n, args.queries, args.dim)
            label = f"synthetic clustered ({args.n:,})"
        elif name == "scifact":
            data = scifact()
            label = "SciFact corpus, all-MiniLM-L6-v2"
        else:
            parser.error(f"unknown dataset {name!r}")
        results["datasets"].append(bench_dataset(label, *data, factories, args.device, args.workdir, multipliers))
        del data
        gc.collect()
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)
    for result in results["datasets"]:
        print(markdown(result) + "\n")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
