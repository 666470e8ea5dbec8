"""Exact re-ranking of a compressed index's candidates against full-precision vectors on disk.

Jegou et al., "Searching in one billion vectors: re-rank with source coding" (ICASSP 2011), with the
source itself as the refinement: an IVF-PQ index proposes `candidates` per query, and only their rows
of the float32 embeddings (memory-mapped `.npy` or shard directory) are read to re-score them. A mixin
of :class:`~densekit.index.dense.DenseIndex`, kept apart because it is an optional search stage.
"""

from __future__ import annotations

import numpy as np

from densekit.errors import DensekitError
from densekit.index.faiss_ops import as_float32


class ExactRerank:
    """`use_reranking` / `search_reranked` for :class:`~densekit.index.dense.DenseIndex` (see the module
    docstring); relies on its `ids`, `dim`, `metric`, `edited` and `search_labels`."""

    _rerank: tuple[object, int] | None = None

    def use_reranking(self, vectors, candidates: int = 100) -> None:
        """Make :meth:`search` re-rank its top `candidates` exactly against `vectors` (see
        :meth:`search_reranked`); `vectors` None turns it off.

        `vectors` is an (n, dim) array in label order (a memory-mapped `.npy` of the embeddings the
        index was built from) or :class:`~densekit.index.shards.ShardedEmbeddings`, whose ids are
        checked against the index's. A bare array cannot prove its order, so an index edited by
        remove/update (labels moved) refuses one.
        """
        if vectors is None:
            self._rerank = None
            return
        if candidates <= 0:
            raise DensekitError(f"re-rank candidates must be positive, got {candidates}")
        ids = getattr(vectors, "ids", None)
        if callable(ids):
            if ids() != self.ids:
                raise DensekitError(
                    "the shards' document ids differ from the index's (order or content): they cannot re-rank it"
                )
        elif self.edited:
            raise DensekitError(
                "documents were removed or updated since the index was built, so its labels no "
                "longer follow the vectors file; re-rank from a shard directory or rebuild"
            )
        if len(vectors) != len(self) or vectors.shape[1] != self.dim:
            raise DensekitError(
                f"re-ranking needs the ({len(self)}, {self.dim}) vectors in label order, "
                f"got shape {tuple(vectors.shape)}"
            )
        self._rerank = (vectors, candidates)

    def search_reranked(
        self, queries: np.ndarray, k: int, vectors: np.ndarray, candidates: int = 100, params: dict | None = None
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Top-`k` after re-scoring the index's top-`candidates` exactly against `vectors`.

        `vectors` holds the full float32 embeddings in label order (row i is ``ids[i]``), typically
        memory-mapped from disk (the cache's or the shards' `.npy`): a compressed index (IVF-PQ) stays
        in memory and only the candidates' rows are read. This is the re-ranking step of Jegou et al.,
        "Searching in one billion vectors: re-rank with source coding" (ICASSP 2011), with the source
        itself as the refinement. Returns what :meth:`search` returns, with exact scores.
        """
        if len(vectors) != len(self) or getattr(vectors, "ndim", 2) != 2 or vectors.shape[1] != self.dim:
            raise DensekitError(
                f"re-ranking needs the ({len(self)}, {self.dim}) vectors in label order, "
                f"got shape {getattr(vectors, 'shape', None)}"
            )
        if k <= 0:
            raise DensekitError(f"k must be positive, got {k}")
        queries = as_float32(queries, self.dim)
        k = min(k, len(self))
        _, labels = self.search_labels(queries, min(max(candidates, k), len(self)), params=params)
        out_scores = np.full((len(queries), k), np.nan, dtype=np.float32)
        out_ids: list[list[str]] = []
        for i, row in enumerate(labels):
            rows = np.sort(row[row >= 0])  # ascending: sequential reads from a memory map
            candidates_matrix = np.asarray(vectors[rows], dtype=np.float32)
            if self.metric == "ip":
                exact = candidates_matrix @ queries[i]
                order = np.argsort(-exact, kind="stable")[:k]
            else:
                exact = ((candidates_matrix - queries[i]) ** 2).sum(axis=1)
                order = np.argsort(exact, kind="stable")[:k]
            out_scores[i, : len(order)] = exact[order]
            out_ids.append([self.ids[j] for j in rows[order]])
        return out_scores, out_ids
