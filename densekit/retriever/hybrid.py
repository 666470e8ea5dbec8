"""Hybrid retrieval: fuse the runs of any retrievers (BM25, dense, ...) into one ranking.

Two fusions, kept apart from searching (as in Pyserini) so they also work on run files:

* :func:`reciprocal_rank_fusion` -- Cormack, Clarke and Buettcher, "Reciprocal Rank Fusion
  outperforms Condorcet and individual Rank Learning Methods" (SIGIR 2009): a document scores
  sum_i w_i / (k + rank_i), rank_i its 1-based rank in run i (a run that misses it adds nothing),
  with k = 60 as in the paper. Only ranks matter, so score scales never need to agree.
* :func:`interpolate` -- a weighted sum of per-query normalised scores, sum_i w_i * norm_i(s_i).
  `minmax` maps each run's scores for a query to [0, 1]; `zscore` to mean 0 and standard deviation
  1. A document missing from a run gets that run's lowest normalised score for the query (it ranked
  below everything the run returned), the convention of Pyserini's dense-sparse hybrid.

Ties are broken by document id so fused runs are deterministic.

Example::

    hybrid = HybridRetriever([bm25, dense], fusion="rrf")                  # k=60, equal weights
    hybrid = HybridRetriever([bm25, dense], fusion="interpolate", weights=[0.3, 0.7],
                             normalization="zscore")
    run = hybrid.search(queries, k=10)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from densekit.data import Run
from densekit.errors import DensekitError
from densekit.retriever.base import Retriever

FUSIONS = ("rrf", "interpolate")
NORMALIZATIONS = ("minmax", "zscore")
RRF_K = 60


def _weights(count: int, weights: Sequence[float] | None) -> list[float]:
    if count == 0:
        raise DensekitError("fusion needs at least one run")
    if weights is None:
        return [1.0] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise DensekitError(f"{len(weights)} fusion weights for {count} runs; give one weight per run")
    if any(w < 0 or not math.isfinite(w) for w in weights) or not any(weights):
        raise DensekitError(f"fusion weights must be finite, non-negative and not all zero, got {weights}")
    return weights


def _ranked(scores: dict[str, float], k: int | None) -> list[tuple[str, float]]:
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return ranked if k is None else ranked[:k]


def reciprocal_rank_fusion(
    runs: Sequence[Run], k: int = RRF_K, weights: Sequence[float] | None = None, depth: int | None = None
) -> Run:
    """Fuse `runs` by RRF: sum_i w_i / (k + rank_i). Keeps the top `depth` per query (all when None).

    Tie-break rule: documents with equal fused scores are ordered by ascending document id, so the
    result depends neither on the order of the runs nor on how a run ordered its own ties. This is the
    package's one RRF: hybrid retrieval and mining's candidate fusion
    (:func:`densekit.mining.sources.fuse`) both call it.
    """
    if k < 0:
        raise DensekitError(f"the RRF constant k must be >= 0, got {k}")
    weights = _weights(len(runs), weights)
    fused = Run()
    for query_id in _query_ids(runs):
        scores: dict[str, float] = {}
        for run, weight in zip(runs, weights, strict=True):
            for rank, (doc_id, _) in enumerate(run.get(query_id, []), start=1):
                scores[doc_id] = scores.get(doc_id, 0.0) + weight / (k + rank)
        fused[query_id] = _ranked(scores, depth)
    return fused


def normalize(hits: Sequence[tuple[str, float]], method: str = "minmax") -> dict[str, float]:
    """One query's scores normalised: `minmax` to [0, 1] (all 1 when equal), `zscore` to mean 0, sd 1
    (all 0 when equal)."""
    if method not in NORMALIZATIONS:
        raise DensekitError(f"unknown score normalisation {method!r}; expected one of: {', '.join(NORMALIZATIONS)}")
    if not hits:
        return {}
    values = [s for _, s in hits]
    if method == "minmax":
        low, high = min(values), max(values)
        span = high - low
        return {d: (s - low) / span if span > 0 else 1.0 for d, s in hits}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {d: (s - mean) / sd if sd > 0 else 0.0 for d, s in hits}


def interpolate(
    runs: Sequence[Run], weights: Sequence[float] | None = None, normalization: str = "minmax", depth: int | None = None
) -> Run:
    """Fuse `runs` by sum_i w_i * norm_i(score); a document a run missed gets that run's minimum."""
    weights = _weights(len(runs), weights)
    fused = Run()
    for query_id in _query_ids(runs):
        normalised = [normalize(run.get(query_id, []), normalization) for run in runs]
        docs = {d for scores in normalised for d in scores}
        floors = [min(scores.values()) if scores else 0.0 for scores in normalised]
        fused[query_id] = _ranked(
            {
                d: sum(w * scores.get(d, floor) for w, scores, floor in zip(weights, normalised, floors, strict=True))
                for d in docs
            },
            depth,
        )
    return fused


def _query_ids(runs: Sequence[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run))
    return list(seen)


class HybridRetriever:
    """Search several retrievers to `depth` each and fuse their runs; keeps the Retriever protocol.

    `fusion` is "rrf" (with `rrf_k`) or "interpolate" (with `normalization` "minmax" or "zscore");
    `weights` gives one non-negative weight per retriever (equal by default).
    """

    def __init__(
        self,
        retrievers: Sequence[Retriever],
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        rrf_k: int = RRF_K,
        normalization: str = "minmax",
        depth: int = 1000,
    ) -> None:
        if len(retrievers) < 2:
            raise DensekitError(f"a hybrid retriever fuses at least two retrievers, got {len(retrievers)}")
        if fusion not in FUSIONS:
            raise DensekitError(f"unknown fusion {fusion!r}; expected one of: {', '.join(FUSIONS)}")
        if normalization not in NORMALIZATIONS:
            raise DensekitError(
                f"unknown score normalisation {normalization!r}; expected one of: {', '.join(NORMALIZATIONS)}"
            )
        if depth <= 0:
            raise DensekitError(f"the fusion depth must be positive, got {depth}")
        for retriever in retrievers:
            if not isinstance(retriever, Retriever):
                raise DensekitError(f"{type(retriever).__name__} does not keep the Retriever protocol")
        self.retrievers = list(retrievers)
        self.fusion = fusion
        self.weights = _weights(len(retrievers), weights)
        self.rrf_k = rrf_k
        self.normalization = normalization
        self.depth = depth

    def fuse(self, runs: Sequence[Run], k: int) -> Run:
        if self.fusion == "rrf":
            return reciprocal_rank_fusion(runs, self.rrf_k, self.weights, k)
        return interpolate(runs, self.weights, self.normalization, k)

    def search(self, queries: dict[str, str], k: int) -> Run:
        if k <= 0:
            raise DensekitError(f"k must be positive, got {k}")
        depth = max(k, self.depth)
        return self.fuse([r.search(queries, depth) for r in self.retrievers], k)

    def describe(self) -> dict:
        info = {"fusion": self.fusion, "weights": self.weights, "fusion_depth": self.depth}
        if self.fusion == "rrf":
            info["rrf_k"] = self.rrf_k
        else:
            info["normalization"] = self.normalization
        return info
