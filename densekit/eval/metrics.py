"""IR metrics with pytrec_eval (the C trec_eval code BEIR and MTEB use): aggregate and per query.

Metric names are `name@k` with name one of `ndcg`, `map`, `recall`, `p`, `mrr`:

- ndcg@k, map@k, recall@k, p@k are trec_eval's `ndcg_cut_k`, `map_cut_k`, `recall_k`, `P_k`.
- mrr@k is the reciprocal rank of the first relevant document (relevance > 0) within the top k,
  ranking by score with trec_eval's tie-break (ties in score go to the larger doc id), 0 when none.

Averages are over the queries that have both judgements and results, as in BEIR, MTEB and
trec_eval without `-c`; judged queries missing from the run are counted in `missing_queries`.
With `ignore_identical_ids`, a retrieved document whose id equals the query id is dropped first
(BEIR's convention for datasets such as ArguAna and Quora, where a query is also a document).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytrec_eval

from densekit.data import Qrels, Run
from densekit.errors import DensekitError

DEFAULT_METRICS = ("ndcg@10", "recall@100", "map@10", "mrr@10", "p@10")
TREC_MEASURES = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "p": "P"}
_METRIC = re.compile(r"^(ndcg|map|recall|p|mrr)@([1-9][0-9]*)$")


def parse_metric(name: str) -> tuple[str, int]:
    """`"nDCG@10"` -> `("ndcg", 10)`; an unknown name is an error listing the valid forms."""
    match = _METRIC.match(name.strip().lower())
    if not match:
        raise DensekitError(f"unknown metric {name!r}; expected name@k with name in ndcg, map, recall, p, mrr")
    return match.group(1), int(match.group(2))


@dataclass
class EvalResult:
    """Mean of each metric over evaluated queries, and every query's values."""

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    queries: int
    missing_queries: int = 0
    removed_identical: int = 0
    settings: dict = field(default_factory=dict)

    def to_json(self, per_query: bool = False) -> dict:
        out = {
            "metrics": self.metrics,
            "queries": self.queries,
            "missing_queries": self.missing_queries,
            "removed_identical_ids": self.removed_identical,
        }
        if per_query:
            out["per_query"] = self.per_query
        return out


def _mrr_at(ranked: Mapping[str, float], relevant: set[str], k: int) -> float:
    order = sorted(ranked.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k]
    for rank, (doc_id, _) in enumerate(order, start=1):
        if doc_id in relevant:
            return 1.0 / rank
    return 0.0


def evaluate(
    qrels: Qrels,
    run: Run | Mapping[str, Mapping[str, float]],
    metrics: Iterable[str] = DEFAULT_METRICS,
    ignore_identical_ids: bool = False,
) -> EvalResult:
    """Score `run` against `qrels`. `run` is a :class:`Run` or `{qid: {doc_id: score}}`."""
    parsed = [(name.strip().lower(), *parse_metric(name)) for name in metrics]
    scores = run.to_dict() if isinstance(run, Run) else {q: dict(d) for q, d in run.items()}
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
    judged = {q: docs for q, docs in qrels.items() if q in scores}
    evaluator = pytrec_eval.RelevanceEvaluator(judged, trec_names) if trec_names else None
    trec = evaluator.evaluate(scores) if evaluator else {q: {} for q in judged if q in scores}
    per_query: dict[str, dict[str, float]] = {}
    for query_id in trec:
        values = {}
        relevant = {d for d, rel in qrels[query_id].items() if rel > 0}
        for name, kind, k in parsed:
            if kind == "mrr":
                values[name] = _mrr_at(scores[query_id], relevant, k)
            else:
                values[name] = float(trec[query_id][f"{TREC_MEASURES[kind]}_{k}"])
        per_query[query_id] = values
    n = len(per_query)
    means = {name: (sum(v[name] for v in per_query.values()) / n if n else 0.0) for name, _, _ in parsed}
    return EvalResult(
        metrics=means,
        per_query=per_query,
        queries=n,
        missing_queries=sum(1 for q in qrels if q not in scores),
        removed_identical=removed,
        settings={"ignore_identical_ids": ignore_identical_ids},
    )
