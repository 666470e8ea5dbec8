"""How cost grows with the work: mining, search and training measured over a grid of sizes.

Each point runs in a fresh process, so its peak resident memory (``ru_maxrss``) is that point's
alone; figures go to ``--json-out``, a log-log PNG to ``--plots`` with the fitted slopes (the
exponent b of cost ~ size^b, least squares over the points) in the legend and the JSON.

- ``mining``: densekit's miner (``HardNegativeMiner``, TopK-PercPos 0.95, 4 negatives from the top
  100, its exact FAISS search as the candidate source) over synthetic embedded corpora: documents
  drawn as ``benchmarks/index.py`` draws them (:func:`densekit.index.synthetic.clustered_vectors`),
  each query a document's vector plus noise, that document its positive. No encoder runs: a
  ``PrecomputedEncoder`` hands ``DenseScorer`` the vectors from ``.npy`` files opened with mmap.
  Against it, where the matrix fits in half the free memory, the same rule computed with one dense
  query x document score matrix in numpy (and how many queries get the same negatives).
  Full grid: 10k, 100k, 1M documents x 10k, 100k queries, 384-d.
- ``search``: Flat, HNSW and IVF-PQ (densekit presets) over 10k, 100k, 1M such vectors: build
  seconds, index MB, peak RSS, median single-query latency and batch QPS (1,000 queries).
- ``train``: densekit's trainer, examples/s and peak RSS against batch size (8 ... 128), with the
  whole batch in one pass and with GradCache (chunk 8); all-MiniLM-L6-v2 on mined SciFact train
  tuples at full size, the tiny random BERT on the 20-query subset at smoke size.

    python benchmarks/scaling.py mining --size full --plots docs --json-out /tmp/mining.json
    python benchmarks/scaling.py search --size smoke --plots /tmp/plots
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

GRIDS = {
    "mining": {"full": {"docs": [10_000, 100_000, 1_000_000], "queries": [10_000, 100_000], "dim": 384,
                        "max_pairs": 2e10},  # 100k queries x 1M docs: ~20 min of exact search on 2 cores
               "smoke": {"docs": [500, 2000], "queries": [50], "dim": 32}},
    "search": {"full": {"docs": [10_000, 100_000, 1_000_000], "queries": 1000, "dim": 384,
                        "indexes": {"flat": "flat", "hnsw": "hnsw", "ivf-pq": "ivf-pq"}},
               "smoke": {"docs": [1000, 2000], "queries": 50, "dim": 32,  # no OPQ: its training takes minutes
                         "indexes": {"flat": "flat", "hnsw": "hnsw", "ivf-pq": "IVF16,PQ8"}}},
    "train": {"full": {"batch": [8, 16, 32, 64, 128], "chunk": 8, "steps": 3},
              "smoke": {"batch": [2, 4], "chunk": 2, "steps": 1}},
}  # fmt: skip
DEPTH, NEGATIVES, PERCENTAGE = 100, 4, 0.95


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmRSS:"))


# ----------------------------------------------------------------------------- mining


class PrecomputedEncoder:
    """Stands in for an Encoder in DenseScorer: returns stored vectors (mmap) instead of encoding.

    Documents are returned in corpus order; a query's text is `q<row>`, its row in queries.npy.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.model_id = f"precomputed:{folder.name}"
        self.dim = int(np.load(folder / "docs.npy", mmap_mode="r").shape[1])

    def fingerprint(self) -> str:
        return self.model_id

    def describe(self) -> dict:
        return {"model": self.model_id, "dim": self.dim}

    def encode_documents(self, texts, show_progress: bool = False) -> np.ndarray:
        return np.load(self.folder / "docs.npy", mmap_mode="r")

    def encode_queries(self, texts, show_progress: bool = False) -> np.ndarray:
        queries = np.load(self.folder / "queries.npy", mmap_mode="r")
        rows = np.fromiter((int(t[1:]) for t in texts), dtype=np.int64, count=len(texts))
        return queries if np.array_equal(rows, np.arange(len(queries))) else np.ascontiguousarray(queries[rows])


def make_vectors(folder: Path, docs: int, queries: int, dim: int) -> None:
    """docs.npy (clustered, as benchmarks/index.py draws them), queries.npy, positives.npy (one per query)."""
    from densekit.index.synthetic import clustered_vectors

    if (folder / "positives.npy").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    vectors = clustered_vectors(docs, dim, clusters=min(1000, docs // 10), seed=0)
    np.save(folder / "docs.npy", vectors)
    rng = np.random.default_rng(1)
    positives = rng.integers(docs, size=queries)
    noisy = vectors[positives] + rng.standard_normal((queries, dim), dtype=np.float32) * (0.6 / np.sqrt(dim))
    np.save(folder / "queries.npy", (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32))
    np.save(folder / "positives.npy", positives)


def synthetic_dataset(folder: Path):
    from densekit.data import BeirDataset, Corpus

    positives = np.load(folder / "positives.npy")
    n = int(np.load(folder / "docs.npy", mmap_mode="r").shape[0])
    ids = [str(i) for i in range(n)]
    corpus = Corpus(ids, [""] * n, [""] * n)
    queries = {f"q{i}": f"q{i}" for i in range(len(positives))}
    qrels = {f"q{i}": {str(p): 1} for i, p in enumerate(positives)}
    return BeirDataset("synthetic", folder, corpus, queries, qrels, "test")


def mine_densekit(spec: dict) -> dict:
    os.environ["DENSEKIT_NO_CACHE"] = "1"  # the vectors are already on disk: nothing to cache
    from densekit.mining import DenseScorer, HardNegativeMiner, PercPosFilter
    from densekit.progress import set_quiet

    set_quiet(True)
    folder = Path(spec["folder"])
    dataset = synthetic_dataset(folder)
    before = rss_mb()
    start = time.perf_counter()
    teacher = DenseScorer(PrecomputedEncoder(folder), dataset.corpus, cache=False, show_progress=False)
    miner = HardNegativeMiner(teacher, filters=[PercPosFilter(PERCENTAGE)], negatives=NEGATIVES, depth=DEPTH)
    miner.mine(dataset, folder / "densekit.jsonl")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_before_mb": before}


def mine_dense_matrix(spec: dict) -> dict:
    """The same rule from one (queries x documents) float32 score matrix."""
    folder = Path(spec["folder"])
    docs, queries = np.load(folder / "docs.npy"), np.load(folder / "queries.npy")
    positives = np.load(folder / "positives.npy")
    before = rss_mb()
    start = time.perf_counter()
    scores = queries @ docs.T
    top = np.argpartition(-scores, DEPTH, axis=1)[:, :DEPTH]
    negatives = []
    for i, row in enumerate(top):
        row = row[np.argsort(-scores[i, row], kind="stable")]
        pos = scores[i, positives[i]]
        limit = pos - (1 - PERCENTAGE) * abs(pos)
        negatives.append([int(d) for d in row if d != positives[i] and scores[i, d] <= limit][:NEGATIVES])
    seconds = time.perf_counter() - start
    same = None
    if (folder / "densekit.jsonl").is_file():
        from densekit.mining import read_negatives

        ours = {r.query_id: {n.id for n in r.negatives} for r in read_negatives(folder / "densekit.jsonl")}
        same = sum(ours.get(f"q{i}") == {str(d) for d in n} for i, n in enumerate(negatives)) / len(negatives)
    return {"seconds": seconds, "rss_before_mb": before, "same_negatives_share": same}


def mining_points(grid: dict, workdir: Path) -> list[dict]:
    points = []
    for queries in grid["queries"]:
        for docs in grid["docs"]:
            if queries * docs > grid.get("max_pairs", float("inf")):
                print(f"skipped {queries} queries x {docs} documents (over max_pairs)", file=sys.stderr)
                continue
            folder = workdir / f"d{docs}-q{queries}-{grid['dim']}"
            make_vectors(folder, docs, queries, grid["dim"])
            spec = {"folder": str(folder)}
            ours = child("mine_densekit", spec)
            row = {"method": "densekit", "docs": docs, "queries": queries, **ours}
            points.append(row)
            fits = queries * docs * 4 * 2.5 < 0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            if fits:
                points.append(
                    {"method": "dense matrix", "docs": docs, "queries": queries, **child("mine_dense_matrix", spec)}
                )
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    return points


# ----------------------------------------------------------------------------- search


def search_point(spec: dict) -> dict:
    from densekit.index.dense import DenseIndex
    from densekit.index.synthetic import clustered_vectors

    n, dim = spec["docs"], spec["dim"]
    vectors = clustered_vectors(n, dim, clusters=min(1000, n // 10), seed=0)
    queries = clustered_vectors(spec["queries"], dim, clusters=min(1000, n // 10), seed=0, stream=1)
    ids = [str(i) for i in range(n)]
    before = rss_mb()
    start = time.perf_counter()
    index = DenseIndex.build(vectors, ids, spec["index"])
    build_s = time.perf_counter() - start
    del vectors
    index.search(queries[:10], 10)  # warm-up
    latencies = []
    for row in range(len(queries)):
        t0 = time.perf_counter()
        index.search(queries[row : row + 1], 10)
        latencies.append(time.perf_counter() - t0)
    start = time.perf_counter()
    index.search(queries, 10)
    qps = len(queries) / (time.perf_counter() - start)
    return {
        "build_s": build_s,
        "index_mb": index.index_bytes() / 2**20,
        "rss_before_mb": before,
        "latency_ms": float(np.median(latencies)) * 1000,
        "qps": qps,
    }


def search_points(grid: dict, workdir: Path) -> list[dict]:
    points = []
    for kind, factory in grid["indexes"].items():
        for docs in grid["docs"]:
            spec = {"index": factory, "docs": docs, "dim": grid["dim"], "queries": grid["queries"]}
            points.append({"method": kind, "docs": docs, **child("search_point", spec)})
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    return points


# ----------------------------------------------------------------------------- training


def train_point(spec: dict) -> dict:
    from densekit.progress import set_quiet
    from densekit.retriever.train import DataConfig, TrainConfig, train

    set_quiet(True)
    config = TrainConfig(
        model=spec["model"],
        output=Path(spec["out"]),
        data=DataConfig(negatives=Path(spec["negatives"]), corpus=spec["data"], negatives_per_query=1),
        batch_size=spec["batch"],
        chunk_size=spec["chunk"],
        max_steps=spec["steps"],
        max_length=spec["max_length"],
        device="cpu",
    )
    result = train(config, overwrite=True)  # the benchmark's own scratch folder: a rerun starts over
    return {"examples_per_s": result["examples_per_s"], "train_seconds": result["train_seconds"]}


def train_points(grid: dict, workdir: Path, size: str) -> list[dict]:
    import fixtures

    if size == "smoke":
        root = Path(os.environ.get("DENSEKIT_DATA", "").split(os.pathsep)[0] or "../shared/data/beir")
        data = str(fixtures.smoke_dataset(root / "scifact", workdir / "scifact-smoke"))
        model = str(fixtures.tiny_model(workdir / "tiny-bert"))
        negatives, max_length = fixtures.judged_negatives(data, workdir / "negatives.jsonl"), 32
    else:
        data, model, max_length = "scifact", "all-MiniLM-L6-v2", 256
        negatives = fixtures.mined_negatives(data, "train", model, workdir / "negatives-train.jsonl")
    points: list[dict] = []
    total_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    for batch in grid["batch"]:
        for method, chunk in (("whole batch", None), (f"GradCache chunk {grid['chunk']}", grid["chunk"])):
            need = _projected_peak_mb(points, method, batch)
            if need is not None and need > 0.8 * total_mb:  # the OOM killer would end the whole run
                points.append({"method": method, "batch": batch, "skipped": f"needs ~{need / 1024:.0f} GB"})
                print(json.dumps(points[-1]), file=sys.stderr, flush=True)
                continue
            spec = {"model": model, "data": data, "negatives": str(negatives), "batch": batch, "chunk": chunk}
            spec |= {"steps": grid["steps"], "max_length": max_length, "out": str(workdir / f"train-{batch}-{chunk}")}
            points.append({"method": method, "batch": batch, **child("train_point", spec)})
            print(json.dumps(points[-1]), file=sys.stderr, flush=True)
    return points


def _projected_peak_mb(points: list[dict], method: str, batch: int) -> float | None:
    """Peak RSS expected at `batch`, growing linearly from the method's largest measured batch."""
    measured = [p for p in points if p["method"] == method and "peak_rss_mb" in p]
    if not measured:
        return None
    last = max(measured, key=lambda p: p["batch"])
    return last["peak_rss_mb"] * batch / last["batch"]


# ----------------------------------------------------------------------------- points, slopes, plots


def child(function: str, spec: dict) -> dict:
    """Run `function(spec)` in a fresh process; its result with the process's peak RSS in MB.

    The peak is the child's own ``VmHWM`` (its memory's high-water mark since exec), not ``ru_maxrss``
    from wait4: Linux carries the forking parent's resident size over into the child's ``ru_maxrss``
    at exec, so a parent that had just generated 1M vectors made every later point read 1.86 GB.
    """
    command = [sys.executable, __file__, "point", function, json.dumps(spec)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, _ = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"point failed ({function} {spec})")
    result = json.loads(output.strip().splitlines()[-1])
    peak = result.pop("vm_hwm_mb")
    added = {"added_rss_mb": round(peak - result["rss_before_mb"], 1)} if "rss_before_mb" in result else {}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()} | {
        "peak_rss_mb": round(peak, 1),
        **added,
    }


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares exponent b of y ~ x^b (None with fewer than two distinct x)."""
    if len(set(xs)) < 2 or min(ys) <= 0:
        return None
    return round(float(np.polyfit(np.log(xs), np.log(ys), 1)[0]), 3)


SERIES = {  # kind -> (x key, y keys, series key: the points that share it form one line)
    "mining": ("docs", ("seconds", "peak_rss_mb", "added_rss_mb"), ("method", "queries")),
    "search": ("docs", ("latency_ms", "peak_rss_mb"), ("method",)),
    "train": ("batch", ("examples_per_s", "peak_rss_mb"), ("method",)),
}


def fit_and_plot(kind: str, points: list[dict], plot: Path) -> dict[str, float | None]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, y_keys, series_keys = SERIES[kind]
    figure, axes = plt.subplots(1, len(y_keys), figsize=(6 * len(y_keys), 4.5))
    slopes = {}
    for ax, y_key in zip(axes, y_keys, strict=True):
        for label in dict.fromkeys(tuple(p[k] for k in series_keys) for p in points):
            line = [p for p in points if tuple(p[k] for k in series_keys) == label and y_key in p]  # not skipped
            xs, ys = [p[x_key] for p in line], [p[y_key] for p in line]
            name = ", ".join(f"{k} {v}" if k != "method" else str(v) for k, v in zip(series_keys, label, strict=True))
            b = slope(xs, ys)
            slopes[f"{y_key} vs {x_key} ({name})"] = b
            ax.loglog(xs, ys, marker="o", label=f"{name}: slope {b}")
        ax.set_xlabel(x_key)
        ax.set_ylabel(y_key)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"densekit scaling: {kind} (log-log)")
    figure.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(plot, dpi=100)
    return slopes


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "point":  # a child: one measurement, one JSON line
        result = globals()[sys.argv[2]](json.loads(sys.argv[3]))
        with open("/proc/self/status", encoding="ascii") as handle:
            hwm = next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM:"))
        print(json.dumps({**result, "vm_hwm_mb": hwm}), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(GRIDS))
    parser.add_argument("--size", choices=("smoke", "full"), default="full")
    parser.add_argument("--plots", type=Path, default=Path("docs"), help="folder for scaling-<kind>.png")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/densekit-scaling"), help="vectors and outputs")
    parser.add_argument("--json-out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--docs", help="comma-separated corpus sizes instead of the size's grid")
    parser.add_argument("--queries", help="comma-separated query counts (mining) or the query count (search)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and FAISS threads of each point")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # the points inherit it
    grid = dict(GRIDS[args.kind][args.size])
    for key in ("docs", "queries"):
        if getattr(args, key) and key in grid:
            grid[key] = (
                [int(v) for v in getattr(args, key).split(",")]
                if isinstance(grid[key], list)
                else int(getattr(args, key))
            )
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.kind == "mining":
        points = mining_points(grid, args.workdir)
    elif args.kind == "search":
        points = search_points(grid, args.workdir)
    else:
        points = train_points(grid, args.workdir, args.size)
    plot = args.plots / f"scaling-{args.kind}{'-smoke' if args.size == 'smoke' else ''}.png"
    slopes = fit_and_plot(args.kind, points, plot)
    columns = list(dict.fromkeys(k for p in points for k in p))
    figures = {"kind": args.kind, "size": args.size, "grid": grid, "threads": args.threads}
    figures |= {"columns": columns, "points": points, "slopes": slopes, "plot": str(plot)}
    for name, value in slopes.items():
        print(f"slope {name}: {value}")
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
