"""Hard-negative mining: densekit against sentence-transformers' `mine_hard_negatives`, same run.

sentence-transformers is called as the NV-Retriever tip in its docstring says::

    mine_hard_negatives(dataset, model, corpus=corpus, relative_margin=0.05, sampling_strategy="top",
                        num_negatives=4, use_faiss=True, batch_size=B)

and densekit as `densekit mine --method percpos --percentage 0.95 --negatives 4 --sampler top`. The two are
the same rule: sentence-transformers drops a candidate when `score > pos - |pos| * 0.05` with `pos` the
lowest positive score of the query; densekit's PercPos drops it when `score > pos - (1 - 0.95) * |pos|`,
`pos` the lowest positive. To compare like with like:

- depth: with a margin and no `range_max`, sentence-transformers 6.3 searches `range_max + max_positives + 1`
  candidates, `range_max = 10 * num_negatives + max_positives` (max over queries); densekit gets that
  same depth (51 on SciFact train, whose queries have at most 5 positives; 50 before 6.3). Agreement at densekit's
  default depth 100 is reported too.
- data: the dataset is one (query text, positive text) row per qrels pair, the corpus is every document
  as BEIR joins title and text. sentence-transformers works on texts: it merges queries with identical
  text (SciFact train has 2 such pairs) and pools their positives; negatives are mapped back to ids by
  text (SciFact's document texts are unique).
- same model folder, same batch size, same torch threads; each measurement runs in its own process,
  the two libraries alternate over rounds, the median is reported. "warm": both read cached
  embeddings (densekit its embedding cache, sentence-transformers its `cache_folder`, each filled by
  an untimed run first), so the time is the mining itself; "cold": both encode corpus and queries.
  Model loading and data reading are outside the timings of both.
- peak memory: the process's peak RSS (ru_maxrss, includes torch and the model) and the peak of
  Python/numpy allocations during a second, untimed call (tracemalloc slows allocations, so it never
  runs during the timed call; torch tensors are not traced; warm mode only).

    python benchmarks/mining.py --mode warm --rounds 3 --threads 2
    python benchmarks/mining.py --mode cold --rounds 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path


def _dataset(args):
    from densekit.data import load_dataset

    return load_dataset(args.data, split=args.split)


def st_depth(ds) -> int:
    """The number of candidates sentence-transformers' FAISS search returns for num_negatives=4 + a margin."""
    per_text: dict[str, int] = defaultdict(int)
    for query_id, docs in ds.qrels.items():
        if query_id in ds.queries:
            per_text[ds.queries[query_id]] += sum(1 for d, rel in docs.items() if rel > 0 and d in ds.corpus)
    max_positives = max(per_text.values())
    # sentence-transformers 6.3: range_max = 10 * num_negatives + max_positives (with a margin), and FAISS
    # returns range_max + max_positives + 1 ("num_extra_candidates"); before 6.3 it was without the + 1.
    return (10 * 4 + max_positives) + max_positives + 1


def measure(call, mode: str):
    """(seconds of an untraced call, peak traced MB of a second, traced call or None, the result).

    tracemalloc slows every Python allocation, so it never runs during the timed call. In cold mode a
    second call would encode everything again, so only the peak RSS is reported there.
    """
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    if mode != "warm":
        return seconds, None, result
    tracemalloc.start()
    call()
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, traced, result


def worker_sentence_transformers(args) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from densekit.retriever.models import resolve_model

    torch.set_num_threads(args.threads)
    ds = _dataset(args)
    model = SentenceTransformer(str(resolve_model(args.model)), device="cpu")
    anchors, positives = [], []
    for query_id, text in ds.queries.items():
        for doc_id, rel in ds.qrels[query_id].items():
            if rel > 0 and doc_id in ds.corpus:
                anchors.append(text)
                positives.append(ds.corpus.texts()[ds.corpus.position(doc_id)])
    pairs = Dataset.from_dict({"query": anchors, "positive": positives})
    corpus = ds.corpus.texts()
    text_to_id = {t: d for d, t in zip(ds.corpus.ids, corpus, strict=True)}
    cache = (args.st_cache or args.workdir / "st-cache") if args.mode == "warm" else None

    def call():
        return mine_hard_negatives(
            pairs,
            model,
            corpus=corpus,
            relative_margin=0.05,
            sampling_strategy="top",
            num_negatives=4,
            use_faiss=True,
            batch_size=args.batch_size,
            verbose=False,
            cache_folder=str(cache) if cache else None,
        )

    if args.mode == "warm":
        call()  # fills cache_folder
    seconds, traced, result = measure(call, args.mode)
    by_text: dict[str, list[str]] = defaultdict(list)
    for row in result:
        negative = text_to_id[row["negative"]]
        if negative not in by_text[row["query"]]:
            by_text[row["query"]].append(negative)
    negatives = {q: by_text.get(t, []) for q, t in ds.queries.items()}
    return {"seconds": seconds, "traced_peak_mb": traced, "negatives": negatives}


def worker_densekit(args) -> dict:
    import torch

    if args.mode == "cold":
        os.environ["DENSEKIT_NO_CACHE"] = "1"
    os.environ["DENSEKIT_HOME"] = str(args.home or args.workdir / "densekit-home")
    from densekit.mining import DenseScorer, HardNegativeMiner, PercPosFilter, read_negatives
    from densekit.progress import set_quiet
    from densekit.retriever.encoder import Encoder

    set_quiet(True)
    torch.set_num_threads(args.threads)
    ds = _dataset(args)
    encoder = Encoder(args.model, device="cpu", batch_size=args.batch_size)
    out = args.workdir / f"densekit-{args.depth}.jsonl"

    def call() -> None:
        teacher = DenseScorer(encoder, ds.corpus, show_progress=False)
        HardNegativeMiner(teacher, filters=[PercPosFilter(0.95)], negatives=4, depth=args.depth).mine(ds, out)

    if args.mode == "warm":
        call()  # fills the embedding cache
    seconds, traced, _ = measure(call, args.mode)
    negatives = {r.query_id: [n.id for n in r.negatives] for r in read_negatives(out)}
    return {"seconds": seconds, "traced_peak_mb": traced, "negatives": negatives}


def worker_explain(args) -> dict:
    """Why the two libraries' negatives differ for some queries, in densekit's teacher scores.

    For each differing query: the documents only one library wrote, their teacher score and its gap to
    the PercPos threshold (lowest positive score - 0.05 |that score|), and the gap between the 4th and
    5th surviving candidate (where the top sampler cuts). Gaps of the order of float32 rounding (1e-6)
    mean the two encoders' last-bit differences decided, not the rule.
    """
    import torch

    os.environ["DENSEKIT_HOME"] = str(args.home or args.workdir / "densekit-home")
    from densekit.mining import DenseScorer
    from densekit.progress import set_quiet
    from densekit.retriever.encoder import Encoder

    set_quiet(True)
    torch.set_num_threads(args.threads)
    ds = _dataset(args)
    compare = json.loads(args.explain.read_text(encoding="utf-8"))
    teacher = DenseScorer(Encoder(args.model, device="cpu", batch_size=args.batch_size), ds.corpus, show_progress=False)
    teacher.prepare_queries(list(ds.queries), list(ds.queries.values()))
    rows = []
    for query_id in compare["differing"]:
        ours, theirs = compare["densekit"].get(query_id, []), compare["sentence-transformers"].get(query_id, [])
        vector = teacher.query_vectors([query_id])[0]
        positives = [d for d, rel in ds.qrels[query_id].items() if rel > 0 and d in ds.corpus]
        lowest = float(teacher.score(vector, positives).min())
        threshold = lowest - 0.05 * abs(lowest)
        ranked = teacher.search(vector[None, :], args.depth)[0][0]
        survivors = [d for d in ranked if d not in positives]
        scores = teacher.score(vector, survivors)
        kept = sorted(scores[scores <= threshold], reverse=True)
        only = {
            "densekit": [d for d in ours if d not in theirs],
            "sentence-transformers": [d for d in theirs if d not in ours],
        }
        gaps = [abs(float(teacher.score(vector, [d])[0]) - threshold) for side in only.values() for d in side]
        rows.append(
            {
                "query": query_id,
                "only": {k: [(d, round(float(teacher.score(vector, [d])[0]), 6)) for d in v] for k, v in only.items()},
                "threshold": round(threshold, 6),
                "smallest_threshold_gap": min(gaps) if gaps else None,
                "cut_gap_4th_5th": float(kept[3] - kept[4]) if len(kept) > 4 else None,
            }
        )
    return {"explained": rows}


def run_worker(args, library: str, workdir: Path, depth: int, explain: Path | None = None) -> dict:
    """One measurement in a fresh process; returns its result with the process's peak RSS."""
    result_file = workdir / f"{library}-{depth}-{time.monotonic_ns()}.json"
    command = [
        sys.executable,
        __file__,
        "--worker",
        library,
        "--workdir",
        str(workdir),
        "--depth",
        str(depth),
        "--result",
        str(result_file),
        "--mode",
        args.mode,
        "--data",
        args.data,
        "--split",
        args.split,
        "--model",
        args.model,
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
    ]
    if args.home:
        command += ["--home", str(args.home)]
    if args.st_cache:
        command += ["--st-cache", str(args.st_cache)]
    if explain is not None:
        command += ["--explain", str(explain)]
    subprocess.run(command, check=True)
    with open(result_file, encoding="utf-8") as handle:
        return json.load(handle)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def agreement(a: dict[str, list[str]], b: dict[str, list[str]]) -> dict:
    queries = sorted(set(a) | set(b))
    same_set = [q for q in queries if set(a.get(q, [])) == set(b.get(q, []))]
    same_list = [q for q in queries if a.get(q, []) == b.get(q, [])]
    return {
        "queries": len(queries),
        "same_ids": len(same_set),
        "same_ids_share": len(same_set) / len(queries),
        "same_order": len(same_list),
        "differing": [q for q in queries if q not in set(same_set)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="scifact")
    parser.add_argument("--split", default="train")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--mode", choices=("warm", "cold"), default="warm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--home",
        type=Path,
        help="DENSEKIT_HOME for densekit's embedding cache in warm mode "
        "(default: a fresh one, filled by an untimed first run)",
    )
    parser.add_argument(
        "--st-cache",
        type=Path,
        help="sentence-transformers' cache_folder in warm mode (default: a fresh one, filled by an untimed first run)",
    )
    parser.add_argument("--worker", choices=("densekit", "sentence-transformers", "explain"), help=argparse.SUPPRESS)
    parser.add_argument("--explain", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        work = {"densekit": worker_densekit, "sentence-transformers": worker_sentence_transformers}.get(
            args.worker, worker_explain
        )
        result = work(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(args.result, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
        return

    depth = st_depth(_dataset(args))
    times: dict[str, list[float]] = defaultdict(list)
    memory: dict[str, list[tuple[float, float]]] = defaultdict(list)
    last: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="densekit-bench-mining-") as tmp:
        workdir = Path(tmp)
        for _ in range(args.rounds):
            for library in ("sentence-transformers", "densekit"):
                result = run_worker(args, library, workdir, depth)
                times[library].append(result["seconds"])
                memory[library].append((result["peak_rss_mb"], result["traced_peak_mb"]))
                last[library] = result
        default_depth = run_worker(args, "densekit", workdir, 100) if args.mode == "warm" else None
        agree = agreement(last["sentence-transformers"]["negatives"], last["densekit"]["negatives"])
        explained = []
        if args.mode == "warm" and agree["differing"]:
            compare = workdir / "compare.json"
            compare.write_text(
                json.dumps({"differing": agree["differing"], **{k: v["negatives"] for k, v in last.items()}}),
                encoding="utf-8",
            )
            explained = run_worker(args, "explain", workdir, depth, explain=compare)["explained"]

    st, dk = statistics.median(times["sentence-transformers"]), statistics.median(times["densekit"])
    summary = {
        "mode": args.mode,
        "data": f"{args.data}/{args.split}",
        "model": args.model,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "depth": depth,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "seconds": {k: v for k, v in times.items()},
        "median_seconds": {"sentence-transformers": st, "densekit": dk},
        "ratio_densekit_over_st": dk / st,
        # In warm mode the first round's processes also fill the caches (encoding): its peak is not mining's.
        "peak_rss_mb": {
            k: max(m[0] for m in (v[1:] if args.mode == "warm" and len(v) > 1 else v)) for k, v in memory.items()
        },
        "peak_rss_mb_runs": {k: [round(m[0]) for m in v] for k, v in memory.items()},
        "traced_peak_mb": {k: None if v[0][1] is None else max(m[1] for m in v) for k, v in memory.items()},
        "agreement": agree,
        "differences_explained": explained,
    }
    if default_depth is not None:
        summary["agreement_at_depth_100"] = agreement(
            last["sentence-transformers"]["negatives"], default_depth["negatives"]
        )
    print(
        f"{args.data}/{args.split}, {args.model}, mode {args.mode}, {args.threads} threads, "
        f"batch {args.batch_size}, {args.rounds} rounds, depth {depth}"
    )
    print("| library | median s | runs (s) | peak RSS MB | peak traced MB |")
    print("|---|---:|---|---:|---:|")
    for library in ("sentence-transformers", "densekit"):
        runs = ", ".join(f"{t:.2f}" for t in times[library])
        print(
            f"| {library} | {statistics.median(times[library]):.2f} | {runs} | "
            f"{summary['peak_rss_mb'][library]:.0f} | {_mb(summary['traced_peak_mb'][library])} |"
        )
    print(f"ratio densekit / sentence-transformers: {dk / st:.3f} (<= 1.0: densekit at least as fast)")
    share = 100 * agree["same_ids_share"]
    print(
        f"same negative ids: {agree['same_ids']}/{agree['queries']} ({share:.2f}%), "
        f"same order: {agree['same_order']}; differing queries: {agree['differing']}"
    )
    for row in explained:
        print(
            f"query {row['query']}: only densekit {row['only']['densekit']}, only ST "
            f"{row['only']['sentence-transformers']}; threshold {row['threshold']}, smallest gap to it "
            f"{row['smallest_threshold_gap']}, 4th-5th gap {row['cut_gap_4th_5th']}"
        )
    if default_depth is not None:
        a100 = summary["agreement_at_depth_100"]
        print(
            f"at densekit's default depth 100: same ids {a100['same_ids']}/{a100['queries']}; "
            f"differing: {a100['differing']}"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
