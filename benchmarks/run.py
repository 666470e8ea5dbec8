"""Run densekit's benchmarks at a named size, one at a time, each in its own process, and keep a record.

    python benchmarks/run.py                          # every benchmark, full size (records in benchmarks/results/)
    python benchmarks/run.py --size smoke             # seconds each, tiny data (records in a temporary folder)
    python benchmarks/run.py --only encode,index      # some of them
    python benchmarks/run.py --list                   # the benchmarks and how each gives its figures
    python benchmarks/run.py --render                 # rewrite RESULTS.md's tables from the newest full records

Every run writes one JSON record (see benchmarks/record.py): the exact command, the commit, the
date, the machine, the threads, library versions, the load average before and after, and every
figure the benchmark script wrote (its own JSON output, rounds included). Full-size records go to
benchmarks/results/ and are committed; smoke records go to a temporary folder unless --results is
given. The smoke size runs each benchmark on a 20-query SciFact subset and a random tiny BERT (or a
few thousand synthetic vectors): it proves the benchmark still runs, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fixtures  # noqa: E402
import record as records  # noqa: E402
from recipes import (  # noqa: E402  (the recipes are re-exported: run.NFCORPUS_RECIPE)
    FINETUNE_RECIPE,
    GPU_OPTIONS,
    NFCORPUS_RECIPE,
    ablation_args,
    ablation_dev_args,
    ablation_nfcorpus_args,
    finetune_args,
    finetune_gpu_args,
    finetune_variant_args,
    rerank_args,
    rerank_nfcorpus_args,
    train_quality_args,
)
from renderers import (  # noqa: E402
    render_ablation,
    render_bm25,
    render_encode,
    render_finetune,
    render_index,
    render_matryoshka,
    render_milvus,
    render_mining,
    render_precision,
    render_rerank,
    render_scaling,
    render_serve,
    render_train,
    render_train_quality,
)

BENCH = Path(__file__).resolve().parent
SIZES = ("smoke", "full")


@dataclass
class Context:
    """What a benchmark's command is built from: its size, scratch folder, data and model."""

    size: str
    workdir: Path
    threads: int
    data: str = "scifact"
    model: str = "all-MiniLM-L6-v2"
    plots: Path = field(default_factory=lambda: records.REPO / "docs")
    extra: list[str] = field(default_factory=list)  # `--args`: appended to the one benchmark's command

    @property
    def smoke(self) -> bool:
        return self.size == "smoke"

    def negatives(self) -> Path:
        """Tuples for benchmarks/train.py: mined from SciFact train at full size, judged ones at smoke."""
        if self.smoke:
            return fixtures.judged_negatives(
                fixtures.smoke_scifact(self.workdir), self.workdir / "negatives-smoke.jsonl"
            )
        return fixtures.mined_negatives(self.data, "train", self.model, self.workdir / "negatives-train.jsonl")


@dataclass
class Benchmark:
    """One script of benchmarks/ as the runner sees it.

    `arguments(ctx)` is its command line at ctx.size (without the JSON-output option), `output` the
    option that makes it write its figures as JSON to a path (or `None` with `figures_file` naming the
    file it writes inside its `--out` folder), `render(record)` its table for RESULTS.md.
    """

    name: str
    script: str
    arguments: Callable[[Context], list[str]]
    render: Callable[[dict], str]
    output: str | None = "--out"
    figures_file: str | None = None
    threads: Callable[[Context], int | None] = lambda ctx: 1 if ctx.smoke else ctx.threads
    in_all: bool = True  # False: too long for `make bench` (hours on a CPU); run it with --only

    def command(self, ctx: Context, figures: Path) -> list[str]:
        command = [sys.executable, str(BENCH / self.script), *self.arguments(ctx), *ctx.extra]
        return command + ([self.output, str(figures)] if self.output else [])


# ----------------------------------------------------------------------------- the registry


def encode_args(ctx: Context) -> list[str]:
    if ctx.smoke:
        return [
            "--data",
            fixtures.smoke_scifact(ctx.workdir),
            "--model",
            fixtures.smoke_model(ctx.workdir),
            "--docs",
            "40",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--backends",
            "torch,onnx",
            "--latency",
            "--latency-repeats",
            "5",
        ]
    backends = "torch,onnx,onnx-int8,openvino,openvino-int8"
    # DENSEKIT_ST_PYTHON: sentence-transformers from a second venv where optimum works (docs/benchmarks.md)
    st_python = ["--st-python", os.environ["DENSEKIT_ST_PYTHON"]] if os.environ.get("DENSEKIT_ST_PYTHON") else []
    return ["--docs", "500", "--rounds", "5", "--threads", str(ctx.threads), "--backends", backends, "--latency",
            "--ndcg", *st_python]  # fmt: skip


def mining_args(ctx: Context) -> list[str]:
    if ctx.smoke:
        data, model = fixtures.smoke_scifact(ctx.workdir), fixtures.smoke_model(ctx.workdir)
        return ["--data", data, "--split", "test", "--model", model, "--rounds", "1", "--threads", "1"]
    caches = ["--home", str(ctx.workdir / "mining-home"), "--st-cache", str(ctx.workdir / "mining-st-cache")]
    return ["--mode", "warm", "--rounds", "5", "--threads", str(ctx.threads), *caches]


def index_args(ctx: Context) -> list[str]:
    work = ["--workdir", str(ctx.workdir / "index-vectors"), "--threads", str(1 if ctx.smoke else ctx.threads)]
    if ctx.smoke:
        factories = ["flat", "hnsw", "ivf-flat", "sq8", "binary"]
        return ["--datasets", "synthetic", "--n", "2000", "--queries", "20", "--dim", "32", *work] + [
            a for f in factories for a in ("--factory", f)
        ]
    factories = ["flat", "sq8", "fp16", "ivf-flat", "ivf-pq", "ivf-pqr", "PCAR352,IVF{nlist},PQ176", "hnsw", "binary"]
    return ["--datasets", "scifact,synthetic", *work] + [a for f in factories for a in ("--factory", f)]


def bm25_args(ctx: Context) -> list[str]:
    if ctx.smoke:
        return ["--corpora", "synthetic", "--docs", "500", "--queries", "20", "--vocab", "300", "--timeout", "300"]
    return []


def train_args(ctx: Context) -> list[str]:
    out = ["--out", str(ctx.workdir / "train-bench")]
    if ctx.smoke:
        data, model = fixtures.smoke_scifact(ctx.workdir), fixtures.smoke_model(ctx.workdir)
        negatives = ctx.negatives()
        steps = ["--max-steps", "1", "--throughput-rounds", "1", "--batch-size", "4", "--max-length", "32"]
        return ["--data", data, "--model", model, "--negatives-file", str(negatives), *steps, *out]
    return ["--negatives-file", str(ctx.negatives()), "--max-steps", "3", "--throughput-rounds", "3", *out]


def precision_args(ctx: Context) -> list[str]:
    out = ["--out", str(ctx.workdir / "precision")]
    if ctx.smoke:
        data, model = fixtures.smoke_scifact(ctx.workdir), fixtures.smoke_model(ctx.workdir)
        steps = ["--steps", "1", "--rounds", "1", "--batch-size", "4", "--max-length", "32"]
        return ["--data", data, "--model", model, "--negatives-file", str(ctx.negatives()), *steps, *out]
    return ["--negatives-file", str(ctx.negatives()), "--threads", str(ctx.threads), *out]


def serve_args(ctx: Context) -> list[str]:
    if ctx.smoke:
        data, model = fixtures.smoke_scifact(ctx.workdir), fixtures.smoke_model(ctx.workdir)
        index = ["--index", str(ctx.workdir / "serve-smoke.idx")]
        return ["--data", data, "--model", model, "--concurrency", "1,2", "--requests", "10", "--threads", "1", *index]
    return ["--threads", str(ctx.threads)]


def matryoshka_args(ctx: Context) -> list[str]:
    if ctx.smoke:
        data, model = fixtures.smoke_scifact(ctx.workdir), fixtures.smoke_model(ctx.workdir)
        steps = ["--max-steps", "1", "--batch-size", "4", "--max-length", "32", "--threads", "1"]
        out = ["--out", str(ctx.workdir / "matryoshka-smoke"), "--plot", str(ctx.workdir / "plots" / "mrl.png")]
        return [
            "--data",
            data,
            "--model",
            model,
            "--negatives-file",
            str(ctx.negatives()),
            "--dims",
            "32,16,8",
            *steps,
            *out,
        ]
    out = ["--out", str(ctx.workdir / "matryoshka"), "--plot", str(ctx.plots / "matryoshka-scifact.png")]
    return ["--negatives-file", str(ctx.negatives()), "--threads", str(ctx.threads), *out]


def milvus_args(ctx: Context) -> list[str]:
    backends = ["--backends", "faiss,lite-file,lite-grpc"]  # the gRPC server too: the path a cluster uses
    if ctx.smoke:
        return ["--size", "1000", "--queries", "20", "--dim", "32", *backends]
    # FLAT only at 1M: each Milvus index type needs its own million-row ingestion (dropping and rebuilding the
    # vector index on the same Lite collection did not finish: docs/milvus.md); HNSW is in the 20k table.
    full = ["--size", "1000000", "--dim", "384", "--queries", "1000", "--factory", "flat"]
    return [*full, *backends]


def scaling_args(kind: str) -> Callable[[Context], list[str]]:
    def arguments(ctx: Context) -> list[str]:
        plots = ctx.workdir / "plots" if ctx.smoke else ctx.plots
        work = ["--workdir", str(ctx.workdir / f"scaling-{kind}"), "--threads", str(1 if ctx.smoke else ctx.threads)]
        return [kind, "--size", ctx.size, "--plots", str(plots), *work]

    return arguments


REGISTRY: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("encode", "encode.py", encode_args, render_encode, output="--json-out"),
        Benchmark("index", "index.py", index_args, render_index),
        Benchmark("mining", "mining.py", mining_args, render_mining, output="--json"),
        Benchmark("bm25", "bm25.py", bm25_args, render_bm25, threads=lambda ctx: 1),
        Benchmark(
            "train", "train.py", train_args, render_train, output=None, figures_file="train-bench/throughput.json"
        ),
        Benchmark(
            "train-quality",
            "train_quality.py",
            train_quality_args,
            render_train_quality,
            output="--json-out",
            in_all=False,
        ),
        Benchmark("precision", "precision.py", precision_args, render_precision, output="--json-out"),
        Benchmark("serve", "serve.py", serve_args, render_serve),
        Benchmark("matryoshka", "matryoshka.py", matryoshka_args, render_matryoshka, output="--json-out"),
        Benchmark("milvus", "milvus.py", milvus_args, render_milvus, output="--json"),
        Benchmark("ablation", "ablation.py", ablation_args, render_ablation, output="--json-out", in_all=False),
        Benchmark("ablation-dev", "ablation.py", ablation_dev_args, render_ablation, output="--json-out", in_all=False),
        Benchmark(
            "ablation-nfcorpus",
            "ablation.py",
            ablation_nfcorpus_args,
            render_ablation,
            output="--json-out",
            in_all=False,
        ),
        Benchmark("finetune", "finetune.py", finetune_args, render_finetune, output="--json-out", in_all=False),
        # recipe changes tried on the dev slice with the test split unread, before `finetune` reports them
        Benchmark(
            "finetune-dev",
            "finetune.py",
            finetune_variant_args("finetune-dev", "--test-split none"),
            render_finetune,
            output="--json-out",
            in_all=False,
        ),
        # the dev choice trained again with the dev slice (finetune's stage 6), beside the dev-chosen model
        Benchmark(
            "finetune-refit",
            "finetune.py",
            finetune_variant_args("finetune-refit", "--refit"),
            render_finetune,
            output="--json-out",
            in_all=False,
        ),
        # on a lent GPU (benchmarks/device/run.sh): SciFact with a trained cross-encoder, and NFCorpus
        Benchmark(
            "finetune-gpu",
            "finetune.py",
            finetune_gpu_args("finetune-gpu", "scifact", f"{FINETUNE_RECIPE} {GPU_OPTIONS}"),
            render_finetune,
            output="--json-out",
            in_all=False,
        ),
        Benchmark(
            "finetune-nfcorpus",
            "finetune.py",
            finetune_gpu_args("finetune-nfcorpus", "nfcorpus", NFCORPUS_RECIPE),
            render_finetune,
            output="--json-out",
            in_all=False,
        ),
        Benchmark("rerank", "rerank.py", rerank_args, render_rerank, output="--json-out", in_all=False),
        Benchmark(
            "rerank-nfcorpus", "rerank.py", rerank_nfcorpus_args, render_rerank, output="--json-out", in_all=False
        ),
        Benchmark("scaling-mining", "scaling.py", scaling_args("mining"), render_scaling, output="--json-out"),
        Benchmark("scaling-search", "scaling.py", scaling_args("search"), render_scaling, output="--json-out"),
        Benchmark("scaling-train", "scaling.py", scaling_args("train"), render_scaling, output="--json-out"),
    )
    if (BENCH / b.script).is_file()
}


# ----------------------------------------------------------------------------- running


class BenchmarkFailed(Exception):
    """A benchmark exited with an error, ran out of time or wrote no figures."""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(bench: Benchmark, ctx: Context, results: Path, quiet: bool, timeout: float | None) -> Path:
    """Run one benchmark in its own process; write and return its record (BenchmarkFailed when it fails)."""
    figures = ctx.workdir / f"{bench.name}-figures.json"
    figures.unlink(missing_ok=True)
    command = bench.command(ctx, figures)
    if bench.figures_file:
        figures = ctx.workdir / bench.figures_file
        figures.unlink(missing_ok=True)
    env = {**os.environ, "DENSEKIT_QUIET": "1"}
    if ctx.smoke:  # a private cache: smoke runs neither read nor fill the user's
        env["DENSEKIT_HOME"] = str(ctx.workdir / "home")
    rec = records.new_record(bench.name, ctx.size, command, bench.threads(ctx))
    log = ctx.workdir / f"{bench.name}.log"
    print(f"[{bench.name}] {shlex.join(command)}", flush=True)
    start, cpu = time.perf_counter(), _children_cpu()
    with open(log, "w", encoding="utf-8") as handle:
        sink = handle if quiet else None
        try:
            done = subprocess.run(command, env=env, stdout=sink, stderr=sink, timeout=timeout, cwd=records.REPO)
        except subprocess.TimeoutExpired:
            raise BenchmarkFailed(f"[{bench.name}] did not finish within {timeout} s (log: {log})") from None
    rec["wall_s"] = round(time.perf_counter() - start, 1)
    rec["cpu_s"] = round(_children_cpu() - cpu, 1)  # all its processes' user + system time: load-independent-ish
    rec["load_after"] = records.load_average()
    if done.returncode != 0 or not figures.is_file():
        tail = log.read_text(encoding="utf-8").splitlines()[-15:] if quiet else []
        reason = f"exit {done.returncode}" if done.returncode else f"no figures at {figures}"
        raise BenchmarkFailed(f"[{bench.name}] failed ({reason}); log {log}:\n" + "\n".join(tail))
    rec["figures"] = json.loads(figures.read_text(encoding="utf-8"))
    path = records.write_record(rec, results)
    print(
        f"[{bench.name}] {rec['wall_s']} s, load {rec['load_before'][0]} -> {rec['load_after'][0]}: {path}", flush=True
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="full")
    everything = ",".join(n for n, b in REGISTRY.items() if b.in_all)
    hours = ",".join(n for n, b in REGISTRY.items() if not b.in_all)
    parser.add_argument("--only", help=f"comma-separated benchmarks (default all: {everything}; only by name: {hours})")
    parser.add_argument("--results", type=Path, help="where records go (default: benchmarks/results/ at full size, "
                        "a temporary folder at smoke size)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="scratch folder (data, models, logs; default: a temporary one)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads at full size")
    parser.add_argument("--timeout", type=float, help="seconds per benchmark (default: none at full size, 900 smoke)")
    parser.add_argument("--quiet", action="store_true", help="benchmark output to <workdir>/<name>.log only")
    parser.add_argument("--args", help="more options for the one benchmark of --only (kept in its record's command), "
                        "e.g. --only ablation --args '--variants naive,percpos'")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the benchmarks and how each gives its figures")
    parser.add_argument("--render", action="store_true", help="rewrite RESULTS.md's tables from full records")
    args = parser.parse_args(argv)

    if args.render:
        renderers = {name: bench.render for name, bench in REGISTRY.items()}
        for name, outcome in records.render_results(renderers, args.results or records.RESULTS_DIR).items():
            print(f"{name}: {outcome}")
        return 0
    names = args.only.split(",") if args.only else [n for n, b in REGISTRY.items() if b.in_all]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    if args.args and len(names) != 1:
        parser.error("--args needs exactly one benchmark in --only")
    if args.list:
        for name in names:
            bench = REGISTRY[name]
            hours = "" if bench.in_all else " [hours at full size: not in the default set, run it with --only]"
            print(f"{name}: benchmarks/{bench.script} (figures via {bench.output or '--out DIR'}){hours}")
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"densekit-bench-{args.size}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = args.results or (records.RESULTS_DIR if args.size == "full" else workdir / "results")
    timeout = args.timeout or (900.0 if args.size == "smoke" else None)
    ctx = Context(args.size, workdir.resolve(), args.threads, extra=shlex.split(args.args or ""))
    written, failed = [], []
    for name in names:
        try:
            written.append(run_one(REGISTRY[name], ctx, results, args.quiet, timeout))
        except BenchmarkFailed as error:
            print(error, file=sys.stderr, flush=True)
            failed.append(name)
    print(f"{len(written)} record(s) in {results}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
