"""Exact re-ranking of a compressed index's candidates against full-precision vectors on disk.

Jegou et al., "Searching in one billion vectors: re-rank with source coding" (ICASSP 2011), with the
source itself as the refinement: an IVF-PQ index proposes `candidates` per query, and only their rows
of the float32 embeddings (memory-mapped `.npy` or shard directory) are read to re-score them. A mixin
of :class:`~densekit.index.dense.DenseIndex`, kept apart because it is an optional search stage.

The same step rescores quantised embeddings (the ``binary`` and ``int8`` presets): with a
`multiplier`, the depth follows k, ``multiplier * k`` candidates (sentence-transformers'
``rescore_multiplier``), instead of a fixed count. An index saved while rescoring keeps its vectors
as ``vectors.npy`` beside the FAISS file (the manifest's ``rescore`` entry says how deep), and
:meth:`open_rescore_vectors` turns rescoring back on, memory-mapped, when it is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from densekit.errors import DensekitError, IntegrityError
from densekit.index.faiss_ops import ADD_BLOCK, as_float32
from densekit.io import sha256_file
from densekit.progress import announce

RESCORE_FILE = "vectors.npy"


class ExactRerank:
    """`use_reranking` / `search_reranked` for :class:`~densekit.index.dense.DenseIndex` (see the module
    docstring); relies on its `ids`, `dim`, `metric`, `edited` and `search_labels`."""

    _rerank: tuple[object, int] | None = None
    _rescore_multiplier: int | None = None

    def use_reranking(self, vectors, candidates: int = 100, multiplier: int | None = None) -> None:
        """Make :meth:`search` re-rank its top `candidates` exactly against `vectors` (see
        :meth:`search_reranked`), or its top ``multiplier * k`` when `multiplier` is given; `vectors`
        None turns it off.

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
        if multiplier is not None and multiplier <= 0:
            raise DensekitError(f"--rescore-multiplier must be positive, got {multiplier}")
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
        self._rescore_multiplier = multiplier

    def search_rescored(
        self, queries: np.ndarray, k: int, params: dict | None = None
    ) -> tuple[np.ndarray, list[list[str]]]:
        """:meth:`search_reranked` with what :meth:`use_reranking` set (vectors, candidates or multiplier)."""
        vectors, candidates = self._rerank
        if len(vectors) != len(self):
            raise DensekitError(
                f"documents were added or removed since rescoring was set up ({len(vectors)} vectors for "
                f"{len(self)} documents): set the vectors again (use_reranking) or save and rebuild"
            )
        if self._rescore_multiplier is not None:
            candidates = self._rescore_multiplier * k
        return self.search_reranked(queries, k, vectors, candidates, params=params)

    def set_rescore_multiplier(self, multiplier: int) -> None:
        """Re-score the top ``multiplier * k`` from now on, against the vectors already set."""
        if self._rerank is None:
            raise DensekitError(
                "--rescore-multiplier needs float32 vectors: an index built with --rescore-multiplier "
                "(it keeps vectors.npy) or --rerank-vectors"
            )
        self.use_reranking(self._rerank[0], self._rerank[1], multiplier)

    def save_rescore_vectors(self, staging: Path, files: dict[str, str]) -> dict | None:
        """Copy the rescoring vectors into `staging` (block by block, from a memory map or shards) and add
        them to `files`; the manifest's ``rescore`` entry, or None when the index does not rescore."""
        if self._rerank is None:
            return None
        vectors, candidates = self._rerank
        if len(vectors) != len(self) or (self.edited and not callable(getattr(vectors, "ids", None))):
            announce(
                "documents were removed or updated, so the rescoring vectors no longer follow the labels: "
                "the saved index does not rescore (rebuild it, or search with --rerank-vectors)"
            )
            return None
        out = np.lib.format.open_memmap(
            staging / RESCORE_FILE, mode="w+", dtype=np.float32, shape=(len(self), self.dim)
        )
        for start in range(0, len(self), ADD_BLOCK):
            out[start : start + ADD_BLOCK] = vectors[np.arange(start, min(start + ADD_BLOCK, len(self)))]
        out.flush()
        del out
        files[RESCORE_FILE] = sha256_file(staging / RESCORE_FILE)
        return {"file": RESCORE_FILE, "candidates": candidates, "multiplier": self._rescore_multiplier}

    def open_rescore_vectors(self, directory: Path, manifest: dict) -> None:
        """Rescore as the manifest's ``rescore`` entry says, against its vectors opened memory-mapped."""
        entry = manifest.get("rescore")
        if not entry:
            return
        if entry.get("file") not in manifest.get("files", {}):
            raise IntegrityError(f"{directory}: the manifest's rescore entry names a file it does not list")
        if self.edited:
            announce(f"{directory}: documents were removed or updated since it was built: rescoring is off")
            return
        vectors = np.load(directory / entry["file"], mmap_mode="r")
        self.use_reranking(vectors, int(entry.get("candidates") or 100), entry.get("multiplier"))

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
