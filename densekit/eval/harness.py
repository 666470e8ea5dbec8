"""BEIR harness: retrieve for a dataset split with any Retriever and score the run.

Follows BEIR's and MTEB's protocol: every judged query of the split is searched against the whole
corpus, the top 1000 documents are kept (enough for recall@1000), and pytrec_eval scores the run.
A judged query the retriever returns nothing for scores 0 (``trec_eval -c``, as Pyserini's published
numbers), unless `skip_missing_queries` asks for BEIR's average over queries with results; see
:mod:`densekit.eval.metrics`. A model, an index, BM25, a hybrid and a run file all go through
:func:`evaluate_run`, so one retrieval gives one number whichever path scored it.

Example::

    ds = load_dataset("scifact", split="test")
    report = evaluate_retriever(DenseRetriever.build(Encoder("all-MiniLM-L6-v2"), ds.corpus), ds)
    report.result.metrics["ndcg@10"]      # 0.645 (MTEB publishes 0.6451)
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from densekit import __version__
from densekit.data import BeirDataset, Run
from densekit.eval.metrics import DEFAULT_METRICS, EvalResult, evaluate
from densekit.protocols import Retriever

DEFAULT_DEPTH = 1000


@dataclass
class EvalReport:
    """A scored run with the settings and timings that produced it."""

    dataset: str
    split: str | None
    result: EvalResult
    run: Run
    config: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self, per_query: bool = False) -> dict:
        return {
            "dataset": self.dataset,
            "split": self.split,
            **self.result.to_json(per_query=per_query),
            "config": self.config,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "versions": library_versions(),
        }


def library_versions() -> dict[str, str]:
    import faiss
    import numpy
    import pytrec_eval  # noqa: F401

    versions = {
        "densekit": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "faiss": getattr(faiss, "__version__", "?"),
    }
    try:
        import torch
        import transformers

        versions.update(torch=torch.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    return versions


def evaluate_retriever(
    retriever: Retriever,
    dataset: BeirDataset,
    metrics: Iterable[str] = DEFAULT_METRICS,
    depth: int = DEFAULT_DEPTH,
    ignore_identical_ids: bool = False,
    config: dict | None = None,
    timings: dict[str, float] | None = None,
    skip_missing_queries: bool = False,
) -> EvalReport:
    """Search `dataset.queries` with `retriever` to `depth` and score against `dataset.qrels`."""
    start = time.perf_counter()
    run = retriever.search(dataset.queries, depth)
    search_s = time.perf_counter() - start
    return evaluate_run(
        run,
        dataset,
        metrics,
        ignore_identical_ids,
        config,
        {**(timings or {}), "search": search_s},
        skip_missing_queries=skip_missing_queries,
    )


def evaluate_run(
    run: Run,
    dataset: BeirDataset,
    metrics: Iterable[str] = DEFAULT_METRICS,
    ignore_identical_ids: bool = False,
    config: dict | None = None,
    timings: dict[str, float] | None = None,
    skip_missing_queries: bool = False,
) -> EvalReport:
    """Score an existing run (e.g. read from a TREC file) against `dataset.qrels`."""
    start = time.perf_counter()
    result = evaluate(
        dataset.qrels,
        run,
        metrics,
        ignore_identical_ids=ignore_identical_ids,
        skip_missing_queries=skip_missing_queries,
    )
    return EvalReport(
        dataset=dataset.name,
        split=dataset.split,
        result=result,
        run=run,
        config={
            **(config or {}),
            "ignore_identical_ids": ignore_identical_ids,
            "missing_query_rule": result.missing_query_rule,
        },
        timings={**(timings or {}), "evaluate": time.perf_counter() - start},
    )
