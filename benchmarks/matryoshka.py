"""The Matryoshka curve: a model trained with and without `--matryoshka-dims`, each evaluated truncated.

Trains the start model twice with `densekit train` on the same negatives file, seed and settings:
once with the plain loss, once with the Matryoshka loss over `--dims` (Kusupati et al., arXiv
2205.13147). Then the start model and both trained models are evaluated on the test split at every
dimension of `--dims`: each encodes the corpus and the queries once at full size (densekit's
embedding cache), and each prefix is cut and re-normalised exactly as `--truncate-dim` does, searched
exactly (FAISS inner product, top 100) and scored with densekit's metrics (ndcg@10, recall@100).
Prints JSON; `--plot` draws ndcg@10 against the dimension.

    DENSEKIT_DATA=../shared/data/beir python benchmarks/matryoshka.py --data scifact \\
        --negatives-file /tmp/scifact.neg.jsonl --out /tmp/mrl --plot docs/matryoshka-scifact.png

The test split is read for the report only: no setting here is chosen on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from commands import DENSEKIT


def train(args: argparse.Namespace, out: Path, dims: list[int] | None) -> dict:
    """`densekit train` in its own process; its JSON summary and wall time (reused when `out` holds a model)."""
    summary_file = out / "benchmark-train.json"
    if args.reuse and summary_file.is_file() and (out / "model").is_dir():
        return json.loads(summary_file.read_text(encoding="utf-8"))
    command = [
        DENSEKIT, "train", "-m", args.model, "-o", str(out), "--negatives", str(args.negatives_file),
        "--corpus", args.data, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--seed", str(args.seed), "--overwrite", "--json", "--quiet",
    ]  # fmt: skip
    if args.max_steps:
        command += ["--max-steps", str(args.max_steps)]
    if args.max_length:
        command += ["--max-length", str(args.max_length)]
    if dims:
        command += ["--matryoshka-dims", ",".join(map(str, dims))]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"densekit train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = {"command": command, "wall_s": round(time.perf_counter() - start, 1), "train": json.loads(done.stdout)}
    summary_file.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def evaluate_prefixes(model: str, data: str, dims: list[int], threads: int) -> dict[int, dict[str, float]]:
    """ndcg@10 and recall@100 on the test split at each prefix of `model`'s embeddings."""
    import faiss

    from densekit.data import load_dataset
    from densekit.eval.metrics import evaluate
    from densekit.index.cache import encode_corpus
    from densekit.retriever.encoder import Encoder

    faiss.omp_set_num_threads(threads)
    ds = load_dataset(data, split="test")
    encoder = Encoder(model, device="cpu")
    documents = np.asarray(encode_corpus(encoder, ds.corpus, cache=True, show_progress=False), dtype=np.float32)
    query_ids = list(ds.queries)
    queries = encoder.encode_queries([ds.queries[q] for q in query_ids], show_progress=False)
    out = {}
    for dim in dims:
        if dim > documents.shape[1]:
            raise SystemExit(f"--dims: {dim} is above {model}'s dimension {documents.shape[1]}")
        d, q = _prefix(documents, dim), _prefix(queries, dim)
        scores, positions = faiss.knn(q, d, min(100, len(d)), metric=faiss.METRIC_INNER_PRODUCT)
        run = {
            qid: {ds.corpus.ids[j]: float(s) for s, j in zip(row_s, row_p, strict=True) if j >= 0}
            for qid, row_s, row_p in zip(query_ids, scores, positions, strict=True)
        }
        metrics = evaluate(ds.qrels, run, ["ndcg@10", "recall@100"]).metrics
        out[dim] = {k: round(float(v), 4) for k, v in metrics.items()}
        print(f"{model} @ {dim}: {out[dim]}", file=sys.stderr, flush=True)
    return out


def _prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` coordinates, re-normalised (what `Encoder(truncate_dim=dim)` returns)."""
    cut = np.ascontiguousarray(vectors[:, :dim], dtype=np.float32)
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_dim in result["metrics"].items():
        dims = sorted(int(d) for d in by_dim)
        ax.plot(dims, [by_dim[str(d)]["ndcg@10"] for d in dims], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({int(d) for by_dim in result["metrics"].values() for d in by_dim}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("embedding dimensions kept (prefix, re-normalised)")
    ax.set_ylabel(f"{result['data']} test ndcg@10")
    ax.set_title(f"Matryoshka: {Path(result['model']).name}, trained {result['steps']} steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="scifact", help="BEIR name or folder (train split in the negatives file)")
    parser.add_argument("--negatives-file", type=Path, required=True, help="from `densekit mine` on the train split")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="start model")
    parser.add_argument("--dims", default="384,256,128,64", help="prefixes trained and evaluated, largest first")
    parser.add_argument("--out", type=Path, required=True, help="folder for the two trained models")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch and FAISS threads (default: torch's)")
    parser.add_argument("--reuse", action="store_true", help="keep models already trained in --out")
    parser.add_argument("--json-out", type=Path, help="write the JSON here too")
    parser.add_argument("--plot", type=Path, help="PNG of ndcg@10 against the dimension")
    args = parser.parse_args(argv)
    dims = [int(d) for d in args.dims.split(",")]
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads; the training subprocesses too
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    trained = {"plain": train(args, args.out / "plain", None), "matryoshka": train(args, args.out / "matryoshka", dims)}
    models = {"start model": args.model, **{name: str(args.out / name / "model") for name in trained}}
    metrics = {
        name: {str(d): v for d, v in evaluate_prefixes(folder, args.data, dims, threads).items()}
        for name, folder in models.items()
    }
    steps = trained["plain"]["train"]["steps"]
    result = {
        "data": args.data,
        "model": args.model,
        "dims": dims,
        "steps": steps,
        "settings": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed", "max_steps", "max_length")},
        "threads": threads,
        "train_wall_s": {name: t["wall_s"] for name, t in trained.items()},
        "metrics": metrics,
    }
    if args.plot:
        plot(result, args.plot)
        result["plot"] = str(args.plot)
    text = json.dumps(result, indent=1)
    if args.json_out:
        args.json_out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
