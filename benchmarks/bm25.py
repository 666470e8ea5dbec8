"""BM25 backends side by side: index build time, queries per second and peak memory, one run.

The three backends of :mod:`densekit.retriever.bm25` (Lucene through pyserini, bm25s, rank_bm25) are
measured on two corpora, each measurement in its own fresh process so peak memory is that backend's:

- ``scifact``: BEIR SciFact (5,183 documents, 300 test queries), with nDCG@10 of the top 10 hits so
  speed is read beside quality;
- ``synthetic``: ``--docs`` (default 1,000,000) short documents of 8-24 words drawn from a Zipf
  distribution (exponent 1.1) over ``--vocab`` pronounceable pseudo-words, and ``--queries`` queries
  of 2-5 words drawn from the same distribution without its 50 most frequent words (which play the
  role of stop words). Seeded: every backend indexes the same text.

What is timed:

- build: ``BM25Retriever.build(corpus, backend)``: analysis + indexing (for Lucene: writing the
  JSON collection, Anserini's IndexCollection, opening the searcher). Generating or reading the
  corpus is outside the timing.
- search: ``retriever.search(queries, k=10)`` in blocks of 50 queries, one thread everywhere (Lucene
  ``batch_search`` with 1 thread, bm25s single-threaded, rank_bm25 is pure Python), so the numbers
  compare the engines rather than the machine's core count. A backend that exceeds
  ``--search-budget`` seconds stops after the block in progress and its QPS is over the queries it
  finished (reported as partial). A measurement process that exceeds ``--timeout`` is killed and
  reported as not finished.
- memory: the process's peak RSS (``ru_maxrss``; for Lucene it includes the JVM, which runs inside
  the process through pyjnius) and the RSS before building (Python, the corpus, imports); their
  difference is what the index and its build cost.

Lucene is the anchor: every ratio is against Lucene measured in the same run.

    python benchmarks/bm25.py                         # SciFact + 1M synthetic, all three backends
    python benchmarks/bm25.py --docs 20000 --queries 200 --timeout 120   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("lucene", "bm25s", "rank_bm25")
ANCHOR = "lucene"
BLOCK = 50
K = 10


# ----------------------------------------------------------------------------- corpora


def pseudo_words(count: int, seed: int) -> list[str]:
    """`count` distinct pronounceable lower-case words of 2-4 consonant-vowel syllables."""
    import numpy as np

    rng = np.random.default_rng(seed)
    consonants, vowels = list("bdfgklmnprstvz"), list("aeiou")
    words: dict[str, None] = {}
    while len(words) < count:
        syllables = rng.integers(2, 5)
        word = "".join(consonants[rng.integers(14)] + vowels[rng.integers(5)] for _ in range(syllables))
        words[word] = None
    return list(words)


def synthetic(n_docs: int, n_queries: int, vocab: int, seed: int = 0):
    """A seeded Zipfian corpus of short documents and queries (see the module docstring)."""
    import numpy as np

    from densekit.data import Corpus

    rng = np.random.default_rng(seed)
    words = np.array(pseudo_words(vocab, seed))
    weights = 1.0 / np.arange(1, vocab + 1) ** 1.1
    weights /= weights.sum()
    lengths = rng.integers(8, 25, size=n_docs)
    drawn = words[rng.choice(vocab, size=int(lengths.sum()), p=weights)]
    ends = np.cumsum(lengths)
    body = [" ".join(drawn[end - n : end]) for end, n in zip(ends, lengths, strict=True)]
    ids = [f"d{i}" for i in range(n_docs)]
    corpus = Corpus(ids, [""] * n_docs, body)
    rare = weights[50:] / weights[50:].sum()
    queries = {
        f"q{i}": " ".join(words[50 + rng.choice(vocab - 50, size=int(rng.integers(2, 6)), p=rare)])
        for i in range(n_queries)
    }
    return corpus, queries, None


def scifact(data: str):
    from densekit.data import load_dataset

    ds = load_dataset(data, split="test")
    return ds.corpus, ds.queries, ds.qrels


# ----------------------------------------------------------------------------- one measurement (child)


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(args: argparse.Namespace) -> dict:
    """Build and search one backend on one corpus in this process; returns the measurements."""
    from densekit.data import Run
    from densekit.progress import set_quiet
    from densekit.retriever.bm25 import BM25Retriever

    set_quiet(True)
    if args.corpus == "scifact":
        corpus, queries, qrels = scifact(args.data)
    else:
        corpus, queries, qrels = synthetic(args.docs, args.queries, args.vocab, args.seed)
    if args.backend == "lucene":  # JVM start and pyserini import are one-offs per process: not timed
        from densekit.retriever.java import pyserini_lucene

        pyserini_lucene()
    before_mb = _rss_mb()

    start = time.perf_counter()
    retriever = BM25Retriever.build(corpus, backend=args.backend, threads=1)
    build_s = time.perf_counter() - start
    after_build_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    ids = list(queries)
    run = Run()
    searched = 0
    start = time.perf_counter()
    for first in range(0, len(ids), BLOCK):
        block = {q: queries[q] for q in ids[first : first + BLOCK]}
        run.update(retriever.search(block, K))
        searched += len(block)
        if time.perf_counter() - start > args.search_budget:
            break
    search_s = time.perf_counter() - start

    result = {
        "corpus": args.corpus,
        "backend": args.backend,
        "documents": len(corpus),
        "queries": len(queries),
        "searched": searched,
        "partial": searched < len(queries),
        "build_s": build_s,
        "search_s": search_s,
        "qps": searched / search_s,
        "rss_before_mb": before_mb,
        "peak_after_build_mb": after_build_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hits_per_query": sum(len(h) for h in run.values()) / max(1, len(run)),
    }
    if qrels is not None and not result["partial"]:
        from densekit.eval.metrics import evaluate

        result["ndcg@10"] = evaluate(qrels, run, ("ndcg@10",)).metrics["ndcg@10"]
    return result


# ----------------------------------------------------------------------------- driver (parent)


def run_child(corpus: str, backend: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--corpus",
        corpus,
        "--backend",
        backend,
        "--data",
        args.data,
        "--docs",
        str(args.docs),
        "--queries",
        str(args.queries),
        "--vocab",
        str(args.vocab),
        "--seed",
        str(args.seed),
        "--search-budget",
        str(args.search_budget),
    ]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {
            "corpus": corpus,
            "backend": backend,
            "error": f"did not finish within {args.timeout} s (killed after {time.perf_counter() - started:.0f} s)",
        }
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"corpus": corpus, "backend": backend, "error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def ratio(value: float, anchor: float | None) -> str:
    return f"{value / anchor:.3g}x" if anchor else "-"


def report(results: list[dict]) -> None:
    for corpus in dict.fromkeys(r["corpus"] for r in results):
        rows = [r for r in results if r["corpus"] == corpus]
        anchor = next((r for r in rows if r["backend"] == ANCHOR and "error" not in r), {})
        ok = [r for r in rows if "error" not in r]
        size = f"{ok[0]['documents']:,} documents, {ok[0]['queries']:,} queries" if ok else ""
        print(f"\n{corpus} ({size}); ratios against {ANCHOR} in this run")
        print(
            f"{'backend':<10} {'build s':>9} {'x':>7} {'QPS':>9} {'x':>8} {'peak RSS MB':>12} {'x':>6} "
            f"{'index MB':>9} {'nDCG@10':>8}"
        )
        for r in rows:
            if "error" in r:
                print(f"{r['backend']:<10} {r['error']}")
                continue
            qps = f"{r['qps']:.1f}" + ("*" if r["partial"] else "")
            ndcg = f"{r['ndcg@10']:.4f}" if "ndcg@10" in r else "-"
            print(
                f"{r['backend']:<10} {r['build_s']:>9.1f} {ratio(r['build_s'], anchor.get('build_s')):>7} "
                f"{qps:>9} {ratio(r['qps'], anchor.get('qps')):>8} {r['peak_rss_mb']:>12.0f} "
                f"{ratio(r['peak_rss_mb'], anchor.get('peak_rss_mb')):>6} "
                f"{r['peak_rss_mb'] - r['rss_before_mb']:>9.0f} {ndcg:>8}"
            )
            if r["partial"]:
                print(f"{'':<10} * search budget spent: QPS over {r['searched']:,} of {r['queries']:,} queries")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="scifact", help="SciFact folder or name under $DENSEKIT_DATA")
    parser.add_argument("--corpora", default="scifact,synthetic")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--docs", type=int, default=1_000_000, help="synthetic corpus size")
    parser.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    parser.add_argument("--vocab", type=int, default=100_000, help="synthetic vocabulary size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-budget", type=float, default=300.0, help="seconds of searching per backend")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement process")
    parser.add_argument("--out", type=Path, help="write every measurement as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return

    backends = args.backends.split(",")
    if ANCHOR not in backends:
        parser.error(f"the anchor backend {ANCHOR} must be measured too")
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_before": os.getloadavg(),
    }
    print(f"machine: {machine}", flush=True)
    results = []
    for corpus in args.corpora.split(","):
        for backend in backends:
            result = run_child(corpus, backend, args)
            print(json.dumps(result), flush=True)
            results.append(result)
    report(results)
    if args.out:
        args.out.write_text(
            json.dumps(
                {"machine": machine, "args": vars(args) | {"out": str(args.out)}, "results": results},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
