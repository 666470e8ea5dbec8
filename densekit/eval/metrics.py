"""IR metrics with pytrec_eval (the C trec_eval code BEIR and MTEB use): aggregate and per query.

Metric names are `name@k` with name one of `ndcg`, `map`, `recall`, `p`, `mrr`:

- ndcg@k, map@k, recall@k, p@k are trec_eval's `ndcg_cut_k`, `map_cut_k`, `recall_k`, `P_k`.
- mrr@k is the reciprocal rank of the first relevant document (relevance > 0) within the top k,
  ranking by score with trec_eval's tie-break (ties in score go to the larger doc id), 0 when none.

One rule for judged queries without results, used by every evaluation path (a model, an index,
BM25, hybrid, a run file, ``compare``, ``reproduce``): a query of the qrels that the run does not
contain, or contains with no hits, scores 0 on every metric and counts in the average
(``missing_query_rule = "zero"``). This is ``trec_eval -c`` and how Pyserini's published BEIR numbers
are computed; without it a retriever that returns nothing for its hardest queries (BM25 on a query
whose terms are all absent from the corpus) would score higher for failing. The BEIR/MTEB/pytrec_eval
convention, averaging only over queries with results, is available with
``skip_missing_queries=True`` (``missing_query_rule = "skip"``). Either way ``missing_queries``
counts the judged queries without results and ``queries`` the number averaged over.
With `ignore_identical_ids`, a retrieved document whose id equals the query id is dropped first
(BEIR's convention for datasets such as ArguAna and Quora, where a query is also a document);
whether a query has results is decided before that.

A run that has results for none of the judged queries, or a non-finite score, is an error: either
would otherwise be reported as a plausible-looking number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytrec_eval

from densekit.data import Qrels, Run
from densekit.errors import DensekitError, InputError

DEFAULT_METRICS = ("ndcg@10", "recall@100", "map@10", "mrr@10", "p@10")
TREC_MEASURES = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "p": "P"}
_METRIC = re.compile(r"^(ndcg|map|recall|p|mrr)@([1-9][0-9]*)$")


def parse_metric(name: str) -> tuple[str, int]:
    """`"nDCG@10"` -> `("ndcg", 10)`; an unknown name is an error listing the valid forms."""
    match = _METRIC.match(name.strip().lower())
    if not match:
        raise DensekitError(f"unknown metric {name!r}; expected name@k with name in ndcg, map, recall, p, mrr")
    return match.group(1), int(match.group(2))


MISSING_QUERY_RULES = ("zero", "skip")


@dataclass
class EvalResult:
    """Mean of each metric over `queries` judged queries, and every averaged query's values.

    `missing_queries` judged queries had no results; `missing_query_rule` says how they were treated:
    ``"zero"`` (scored 0 and averaged, so they are in `per_query` too) or ``"skip"`` (left out).
    """

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    queries: int
    missing_queries: int = 0
    removed_identical: int = 0
    settings: dict = field(default_factory=dict)
    missing_query_rule: str = "zero"

    def describe_queries(self) -> str:
        """One phrase for a report title, e.g. ``"323 queries, 15 without results counted as 0"``."""
        if not self.missing_queries:
            return f"{self.queries} queries"
        treated = "counted as 0" if self.missing_query_rule == "zero" else "skipped"
        return f"{self.queries} queries, {self.missing_queries} without results {treated}"

    def to_json(self, per_query: bool = False) -> dict:
        out = {
            "metrics": self.metrics,
            "queries": self.queries,
            "missing_queries": self.missing_queries,
            "missing_query_rule": self.missing_query_rule,
            "removed_identical_ids": self.removed_identical,
        }
        if per_query:
            out["per_query"] = self.per_query
        return out


def queries_without_results(query_ids: Iterable[str], run: Mapping[str, object]) -> list[str]:
    """The ids among `query_ids` that `run` lacks or holds with no hits (a TREC file has no line for them)."""
    return [q for q in query_ids if not run.get(q)]


def _mrr_at(ranked: Mapping[str, float], relevant: set[str], k: int) -> float:
    order = sorted(ranked.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k]
    for rank, (doc_id, _) in enumerate(order, start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def _run_error(run: object, message: str) -> DensekitError:
    """An InputError naming the run file when `run` was read from one, else a plain DensekitError."""
    path = getattr(run, "path", None)
    return InputError(path, message) if path is not None else DensekitError(message)


def _check_finite(scores: Mapping[str, Mapping[str, float]], run: object) -> None:
    for query_id, docs in scores.items():
        for doc_id, score in docs.items():
            if not math.isfinite(score):
                raise _run_error(
                    run,
                    f"score {score} for query {query_id!r}, document {doc_id!r} is not a finite number; "
                    "a ranking with NaN or infinite scores has no defined order",
                )


def evaluate(
    qrels: Qrels,
    run: Run | Mapping[str, Mapping[str, float]],
    metrics: Iterable[str] = DEFAULT_METRICS,
    ignore_identical_ids: bool = False,
    skip_missing_queries: bool = False,
) -> EvalResult:
    """Score `run` against `qrels`. `run` is a :class:`Run` or `{qid: {doc_id: score}}`.

    Judged queries without results score 0 (``trec_eval -c``) unless `skip_missing_queries`
    (BEIR's pytrec_eval average over the queries with results); see the module docstring. Raises
    DensekitError (InputError naming the file for a run read from one) when `qrels` is empty, when the
    run has results for none of the judged queries, or when a score is NaN or infinite.
    """
    parsed = [(name.strip().lower(), *parse_metric(name)) for name in metrics]
    if not qrels:
        raise DensekitError("no judged queries: the qrels are empty, nothing can be evaluated")
    scores = run.to_dict() if isinstance(run, Run) else {q: dict(d) for q, d in run.items()}
    _check_finite(scores, run)
    missing = queries_without_results(qrels, scores)
    if len(missing) == len(qrels):
        sample = ", ".join(repr(q) for q in list(scores)[:3]) or "none"
        raise _run_error(
            run,
            f"the run has results for none of the {len(qrels)} judged queries (its query ids: {sample}); "
            "wrong dataset or split?",
        )
    missing_set = set(missing)
    scores = {q: docs for q, docs in scores.items() if q in qrels and q not in missing_set}
    removed = 0
    if ignore_identical_ids:
        for query_id, docs in scores.items():
            if query_id in docs:
                del docs[query_id]
                removed += 1
    measures: dict[str, set[int]] = {}
    for _, kind, k in parsed:
        if kind != "mrr":
            measures.setdefault(TREC_MEASURES[kind], set()).add(k)
    trec_names = {f"{m}.{','.join(str(k) for k in sorted(ks))}" for m, ks in measures.items()}
    judged = {q: qrels[q] for q in scores}
    evaluator = pytrec_eval.RelevanceEvaluator(judged, trec_names) if trec_names else None
    trec = evaluator.evaluate(scores) if evaluator else {q: {} for q in judged}
    per_query: dict[str, dict[str, float]] = {}
    for query_id in qrels:  # in qrels order, so per-query tables line up across runs
        if query_id in missing_set:
            if not skip_missing_queries:
                per_query[query_id] = {name: 0.0 for name, _, _ in parsed}
            continue
        values = {}
        relevant = {d for d, rel in qrels[query_id].items() if rel > 0}
        for name, kind, k in parsed:
            if kind == "mrr":
                values[name] = _mrr_at(scores[query_id], relevant, k)
            else:
                values[name] = float(trec[query_id][f"{TREC_MEASURES[kind]}_{k}"])
        per_query[query_id] = values
    n = len(per_query)
    means = {name: sum(v[name] for v in per_query.values()) / n for name, _, _ in parsed}
    rule = "skip" if skip_missing_queries else "zero"
    return EvalResult(
        metrics=means,
        per_query=per_query,
        queries=n,
        missing_queries=len(missing),
        removed_identical=removed,
        settings={"ignore_identical_ids": ignore_identical_ids, "missing_query_rule": rule},
        missing_query_rule=rule,
    )
