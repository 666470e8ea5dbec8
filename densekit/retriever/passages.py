"""Documents ranked by their passages: MaxP, FirstP and SumP over a passage index.

An index built with ``--chunk-size`` holds passages (ids ``<doc id>#<n>``, see :mod:`densekit.chunking`).
:class:`PassageRetriever` searches it and returns documents, so runs, evaluation and mining stay per
document (Dai & Callan, "Deeper Text Understanding for IR with Contextual Neural Language Modeling",
SIGIR 2019):

- ``maxp``: a document scores its best passage's score. Exact: passages arrive best first, so the
  first `k` distinct documents among them are the top `k` by MaxP.
- ``firstp``: a document scores its first passage's score; hits on later passages are ignored.
- ``sump``: a document scores the sum of its passages' scores among the passages retrieved (a
  document with many matching passages ranks higher; bounded by the search depth).

Passages are fetched ``depth_factor * k`` at a time, growing fourfold for the queries that have fewer
than `k` documents yet, until they have `k` or the index is exhausted.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from densekit.chunking import AGGREGATIONS, parent_id, passage_number
from densekit.data import Run
from densekit.errors import DensekitError
from densekit.protocols import Retriever


class PassageRetriever:
    """A Retriever over a passage index that returns documents (see the module docstring)."""

    def __init__(self, passages: Retriever, aggregate: str = "maxp", depth_factor: int = 4, total: int | None = None):
        if aggregate not in AGGREGATIONS:
            raise DensekitError(f"aggregate must be one of {', '.join(AGGREGATIONS)}, got {aggregate!r}")
        if depth_factor < 1:
            raise DensekitError(f"depth_factor must be at least 1, got {depth_factor}")
        self.passages = passages
        self.aggregate = aggregate
        self.depth_factor = depth_factor
        self.total = total if total is not None else _count(passages)
        self.best_passages: dict[str, dict[str, str]] = {}  # query -> document -> its best passage (last search)

    @property
    def index(self) -> Any:
        """The passage retriever's index (search options such as ``--nprobe`` apply to it)."""
        return getattr(self.passages, "index", None)

    @property
    def encoder(self) -> Any:
        return getattr(self.passages, "encoder", None)

    def describe(self) -> dict:
        inner = getattr(self.passages, "describe", None)
        base = inner() if callable(inner) else dict(getattr(self.index, "model", None) or {})
        return {**base, "passages": {"aggregate": self.aggregate, "count": self.total}}

    def search_passages(self, queries: dict[str, str], k: int) -> Run:
        """The top `k` passages per query (ids ``<doc id>#<n>``)."""
        return self.passages.search(queries, k)

    def search(self, queries: dict[str, str], k: int) -> Run:
        """The top `k` documents per query by their passages' scores; :attr:`best_passages` then holds,
        for each document returned, the passage that scored it best."""
        if k <= 0:
            raise DensekitError(f"k must be positive, got {k}")
        run = Run()
        self.best_passages = {}
        pending = dict(queries)
        fetch = k * self.depth_factor
        while pending:
            fetch = min(fetch, self.total) if self.total else fetch
            found = self.passages.search(pending, fetch)
            unfinished = {}
            for query_id, text in pending.items():
                hits = found.get(query_id, [])
                documents, best = aggregate(hits, self.aggregate)
                exhausted = len(hits) < fetch or (self.total is not None and fetch >= self.total)
                if len(documents) >= k or exhausted:
                    run[query_id] = documents[:k]
                    self.best_passages[query_id] = {doc: best[doc] for doc, _ in documents[:k]}
                else:
                    unfinished[query_id] = text
            pending = unfinished
            fetch *= 4
        return run


def aggregate(hits: list[tuple[str, float]], how: str) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """Passage hits (best first) -> document hits (best first) and each document's best passage id."""
    scores: dict[str, float] = {}
    best: dict[str, str] = {}
    if how == "maxp":
        for passage, score in hits:
            doc = parent_id(passage)
            if doc not in scores:
                scores[doc], best[doc] = score, passage
        ranked = list(scores.items())  # first occurrence is the maximum, in descending order already
    elif how == "firstp":
        for passage, score in hits:
            if passage_number(passage) == 0:
                doc = parent_id(passage)
                scores[doc], best[doc] = score, passage
        ranked = list(scores.items())
    elif how == "sump":
        sums: dict[str, float] = defaultdict(float)
        for passage, score in hits:
            doc = parent_id(passage)
            sums[doc] += score
            best.setdefault(doc, passage)
        ranked = sorted(sums.items(), key=lambda item: -item[1])
    else:
        raise DensekitError(f"aggregate must be one of {', '.join(AGGREGATIONS)}, got {how!r}")
    return ranked, best


def _count(retriever: Any) -> int | None:
    index = getattr(retriever, "index", None)
    try:
        return len(index) if index is not None else None
    except TypeError:
        return None
