"""`EvalConfig`: what `densekit eval` evaluates (a retriever or a run file), on which split, with which metrics.

`evaluate(config)` is the one library call behind the command: it checks the configuration before
anything loads, builds the retriever (:func:`densekit.retriever.compose.build_retriever`), runs the
BEIR harness (pytrec_eval) and writes the outputs asked for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from densekit.errors import DensekitError
from densekit.eval.harness import EvalReport
from densekit.eval.metrics import DEFAULT_METRICS, parse_metric
from densekit.retriever.compose import RetrieverSpec


def parse_metrics(metrics: str | None) -> tuple[str, ...]:
    """'ndcg@10,recall@100' -> ('ndcg@10', 'recall@100'), each checked; None or '' -> the defaults."""
    if not metrics:
        return DEFAULT_METRICS
    names = tuple(m.strip().lower() for m in metrics.split(",") if m.strip())
    for name in names:
        parse_metric(name)
    return names


@dataclass
class EvalConfig:
    """One evaluation: `retriever` (built now) or `run` (a TREC file evaluated as it is) on `data`'s `split`."""

    data: str = field(metadata={"help": "BEIR folder or dataset name."})
    split: str = field(default="test", metadata={"help": "qrels split."})
    metrics: tuple[str, ...] = field(
        default=DEFAULT_METRICS, metadata={"help": "Comma-separated, e.g. ndcg@10,recall@100."}
    )
    ignore_identical_ids: bool = field(
        default=False, metadata={"help": "Drop hits whose id equals the query id (BEIR)."}
    )
    skip_missing_queries: bool = field(
        default=False,
        metadata={
            "help": "Average only over judged queries that have results (BEIR's convention); by default a judged "
            "query without results counts as 0 (trec_eval -c, Pyserini's published numbers)."
        },
    )
    run: Path | None = field(default=None, metadata={"help": "Evaluate an existing TREC run file."})
    retriever: RetrieverSpec | None = None
    out: Path | None = field(default=None, metadata={"help": "Write results JSON (with per-query values)."})
    run_out: Path | None = field(default=None, metadata={"help": "Also write the run as a TREC file."})

    def validate(self) -> None:
        """Every check that needs no model and no data read (so a mistake costs no loading time)."""
        spec = self.retriever
        given = [s for s in (self.run, spec and spec.model, spec and spec.index) if s is not None]
        bm25 = bool(spec and spec.bm25)
        if len(given) + int(bm25) == 0 or len(given) > 1:
            raise DensekitError(
                "give exactly one of --model, --index or --run (or --bm25, alone or with --model/--index)"
            )
        if self.run is not None and spec is not None and (spec.bm25 or spec.fusion or spec.rerank):
            raise DensekitError("--run evaluates a run file as it is; --bm25, --fusion and --rerank need retrievers")
        for name in self.metrics:
            parse_metric(name)
        if spec is not None and self.run is None:
            spec.validate()


def evaluate(config: EvalConfig) -> EvalReport:
    """Run `config` and return the :class:`~densekit.eval.harness.EvalReport` (metrics, per-query, run)."""
    from densekit.data import Run, load_dataset
    from densekit.eval.harness import evaluate_retriever, evaluate_run
    from densekit.io import write_json
    from densekit.retriever.compose import build_retriever

    config.validate()
    ds = load_dataset(config.data, split=config.split)
    if config.run is not None:
        report = evaluate_run(
            Run.read_trec(config.run),
            ds,
            config.metrics,
            config.ignore_identical_ids,
            config={"run": str(config.run)},
            skip_missing_queries=config.skip_missing_queries,
        )
    else:
        spec = config.retriever
        start = time.perf_counter()
        retriever, described = build_retriever(spec, ds.corpus)
        report = evaluate_retriever(
            retriever,
            ds,
            config.metrics,
            spec.depth,
            config.ignore_identical_ids,
            {**described, "depth": spec.depth},
            {"index": time.perf_counter() - start},
            skip_missing_queries=config.skip_missing_queries,
        )
    if config.run_out is not None:
        report.run.write_trec(config.run_out)
    if config.out is not None:
        write_json(config.out, report.to_json(per_query=True))
    return report


def read_prompt_file(path: Path) -> dict[str, str]:
    """An mteb prompts file: a JSON object mapping prompt keys (task names, "query", "document") to prompts."""
    import json

    from densekit.errors import InputError

    try:
        prompts = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON ({exc.msg})", exc.lineno) from None
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise InputError(path, "expected a JSON object mapping prompt keys to prompt strings")
    return prompts


def compare_run_files(
    runs_a: Sequence[Path],
    runs_b: Sequence[Path],
    data: str,
    split: str = "test",
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    trials: int = 10_000,
    seed: int = 0,
    out: Path | None = None,
    plot: Path | None = None,
    unit: str = "query",
) -> tuple[object, dict]:
    """`densekit compare`: TREC runs judged by `data`'s `split` qrels, per query (paired tests).

    One run a side compares them on the judged queries. Several (one per training seed, in the same seed
    order on each side, or one fixed baseline against a recipe's seeds) go through
    :func:`~densekit.eval.compare.compare_seeds` with `unit` ``"query"`` (each query's value averaged over
    the seeds, n = queries) or ``"seed-query"`` (query q of A's seed i with query q of B's seed i), and the
    summary adds each seed's means under "per_seed". Returns the
    :class:`~densekit.eval.compare.Comparison` and its JSON summary. `out` gets the per-query JSON;
    `plot` a PNG of per-query deltas of the first metric. Without matplotlib the plot is skipped: the
    summary says so under "plot_skipped" (the comparison itself is never thrown away).
    """
    import importlib.util

    from densekit.data import Run, qrels_path, read_qrels, resolve_dataset
    from densekit.eval.compare import SEED_UNITS, compare_runs, compare_seeds, plot_deltas

    if unit not in SEED_UNITS:
        raise DensekitError(f"--unit must be one of {', '.join(SEED_UNITS)}, got {unit!r}")
    root = resolve_dataset(data)
    qrels = read_qrels(qrels_path(root, split))
    read_a, read_b = [Run.read_trec(p) for p in runs_a], [Run.read_trec(p) for p in runs_b]
    names = (",".join(p.name for p in runs_a), ",".join(p.name for p in runs_b))
    if len(read_a) == len(read_b) == 1:
        comparison = compare_runs(read_a[0], read_b[0], qrels, metrics, trials, seed, *names)
        result = comparison.to_json(per_query=False)
        result.update(dataset=root.name, split=split, seeds=1)
    else:
        seeds = compare_seeds(read_a, read_b, qrels, metrics, trials, seed, names, unit)
        comparison = seeds.comparison
        result = comparison.to_json(per_query=False)
        result.update(dataset=root.name, split=split, seeds=seeds.seeds, unit=seeds.unit, per_seed=seeds.per_seed)
    if out is not None:
        from densekit.io import write_json

        write_json(out, {**comparison.to_json(per_query=True), **result})
        result["json"] = str(out)
    if plot is not None:
        if importlib.util.find_spec("matplotlib") is None:
            result["plot"] = None
            result["plot_skipped"] = "plotting needs matplotlib: pip install 'densekit[plot]'"
        else:
            plot_deltas(comparison, metrics[0], plot)
            result["plot"] = str(plot)
    return comparison, result
