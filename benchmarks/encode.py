"""Corpus encoding throughput: densekit's Encoder against sentence-transformers, same run.

Same model folder, same texts (SciFact corpus, title + text as BEIR joins them), same batch size,
same torch thread count, same device. The two libraries alternate over several rounds so that
background load affects both alike; the median throughput of each is reported with the ratio
densekit / sentence-transformers (> 1.0 means densekit is faster). Also checks that the two
produce the same embeddings.

    python benchmarks/encode.py --docs 1000 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="scifact")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--docs", type=int, default=1000, help="first N corpus documents")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of text")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    from densekit.data import load_dataset
    from densekit.progress import set_quiet
    from densekit.retriever.encoder import Encoder

    set_quiet(True)
    texts = load_dataset(args.data).corpus.texts()[: args.docs]
    ours = Encoder(args.model, device=args.device, batch_size=args.batch_size)
    theirs = SentenceTransformer(str(ours.folder), device=args.device)
    if args.device.startswith("cuda"):
        theirs.half()

    def run_densekit() -> np.ndarray:
        return ours.encode_documents(texts, show_progress=False)

    def run_st() -> np.ndarray:
        return theirs.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False)

    run_densekit(), run_st()  # warm-up: first-call allocations, lazy imports
    rates: dict[str, list[float]] = {"densekit": [], "sentence-transformers": []}
    outputs = {}
    for _ in range(args.rounds):
        for name, fn in (("sentence-transformers", run_st), ("densekit", run_densekit)):
            start = time.perf_counter()
            outputs[name] = fn()
            rates[name].append(len(texts) / (time.perf_counter() - start))
    median = {k: statistics.median(v) for k, v in rates.items()}
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
        "ratio_densekit_vs_st": round(median["densekit"] / median["sentence-transformers"], 3),
        "max_abs_embedding_diff": float(np.abs(outputs["densekit"] - outputs["sentence-transformers"]).max()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
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
        print(f"  {name:<22} {rate:8.2f} docs/s   rounds: {rates[name]}")
    print(f"  ratio densekit / sentence-transformers: {result['ratio_densekit_vs_st']:.3f}x")
    print(f"  max |difference| of embeddings: {result['max_abs_embedding_diff']:.2e}")


if __name__ == "__main__":
    main()
