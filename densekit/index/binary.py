"""Binary embedding quantisation: sign bits in a FAISS binary index, searched by Hamming distance.

Each float32 dimension becomes one bit (``x > 0``), packed eight to a byte with ``np.packbits``: a
384-d MiniLM vector takes 48 bytes instead of 1,536 (1/32 of Flat). FAISS keeps such codes in an
``IndexBinary`` (``IndexBinaryFlat``: exhaustive Hamming search with popcount), a class family apart
from ``faiss.Index``. :class:`BinaryCodes` wraps one behind the few members
:class:`~densekit.index.dense.DenseIndex` uses (``d`` in float dimensions, ``ntotal``, ``add`` and
``search`` over float32 rows, ``remove_ids``), so building, adding, removing, updating, shards and the
manifest work unchanged; :func:`new_index`, :func:`write_index`, :func:`read_index` and
:func:`serialized_bytes` choose the binary or the float FAISS call from the factory string.

Scores: a search returns ``1 - 2 h / d`` for Hamming distance ``h`` over ``d`` bits, which is the
inner product of the two +-1 sign vectors divided by ``d``: the same order as ``-h``, and on the
[-1, 1] scale of a cosine so that score fusion sees numbers like the other indexes'. Ranking by
sign bits alone is coarse (Yamada et al., ACL 2021; the sentence-transformers "embedding
quantization" recipe); re-scoring the top ``rescore_multiplier * k`` candidates against the float32
vectors on disk (:mod:`densekit.index.exact_rerank`) restores nearly all of Flat's recall.

Factory strings: ``BFlat`` (preset ``binary``) and ``BHNSW<M>`` (preset ``binary-hnsw``: FAISS's
IndexBinaryHNSW, a graph over the codes searched with ``efSearch``; it cannot delete in place, so
removing documents rebuilds it from its stored codes, announced). The dimension must be a multiple of 8.
"""

from __future__ import annotations

import re

import faiss
import numpy as np

from densekit.errors import DensekitError
from densekit.progress import announce

BINARY_FACTORY = re.compile(r"BFlat|BHNSW\d+")


def is_binary(factory: str) -> bool:
    """Whether `factory` names a FAISS binary index (densekit offers ``BFlat`` and ``BHNSW<M>``)."""
    return BINARY_FACTORY.fullmatch(factory.strip()) is not None


def binarize(vectors: np.ndarray) -> np.ndarray:
    """Sign bits of float rows packed to uint8: (n, d) float -> (n, d / 8) uint8; bit set where x > 0."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


class BinaryCodes:
    """A FAISS ``IndexBinary`` seen through float32 rows (see the module docstring).

    `binary` is the FAISS object (``d`` counts bits); this wrapper's ``d`` is the float dimension,
    equal to the bit count.
    """

    metric_type = faiss.METRIC_INNER_PRODUCT
    is_trained = True

    def __init__(self, binary: faiss.IndexBinary, factory: str = "BFlat") -> None:
        self.binary = binary
        self.factory = factory

    @property
    def d(self) -> int:
        return int(self.binary.d)

    @property
    def ntotal(self) -> int:
        return int(self.binary.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        self.binary.add(binarize(vectors))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores ``1 - 2 h / d`` as float32, labels) of the `k` nearest codes by Hamming distance."""
        distances, labels = self.binary.search(binarize(queries), k)
        scores = 1.0 - 2.0 * distances.astype(np.float32) / self.d
        scores[labels < 0] = -np.inf
        return scores, labels

    def reconstruct_batch(self, labels: np.ndarray) -> np.ndarray:
        # RuntimeError, as FAISS raises for an index that cannot return vectors: callers fall back on it
        raise RuntimeError("a binary index keeps sign bits, not the vectors")

    def without_labels(self, labels: np.ndarray) -> BinaryCodes:
        """These codes without the sorted `labels`, the rest renumbered 0..n-1 (the flat index in place;
        HNSW rebuilt from its stored codes)."""
        hnsw = faiss.downcast_IndexBinary(self.binary)
        if not isinstance(hnsw, faiss.IndexBinaryHNSW):
            self.binary.remove_ids(faiss.IDSelectorBatch(labels))
            return self
        announce(f"HNSW cannot delete vectors in place: rebuilding the graph over {self.ntotal - len(labels)} codes")
        storage = faiss.downcast_IndexBinary(hnsw.storage)
        codes = faiss.vector_to_array(storage.xb).reshape(self.ntotal, storage.code_size)
        rebuilt = faiss.index_binary_factory(self.d, self.factory)
        rebuilt.hnsw.efConstruction = hnsw.hnsw.efConstruction
        rebuilt.hnsw.efSearch = hnsw.hnsw.efSearch
        rebuilt.add(codes[np.setdiff1d(np.arange(self.ntotal), labels)])
        return BinaryCodes(rebuilt, self.factory)


def new_index(dim: int, factory: str, metric: int) -> faiss.Index | BinaryCodes:
    """An empty FAISS index of `factory` over `dim` dimensions (binary factories give :class:`BinaryCodes`)."""
    if not is_binary(factory):
        return faiss.index_factory(dim, factory, metric)
    if metric != faiss.METRIC_INNER_PRODUCT:
        raise DensekitError("a binary index ranks by sign agreement (inner product / cosine): use --metric ip")
    if dim % 8:
        raise DensekitError(f"a binary index packs 8 dimensions per byte; dimension {dim} is not a multiple of 8")
    return BinaryCodes(faiss.index_binary_factory(dim, factory.strip()), factory.strip())


def write_index(index: faiss.Index | BinaryCodes, path: str) -> None:
    """Write `index` (a CPU index) to `path` with the FAISS writer of its kind."""
    if isinstance(index, BinaryCodes):
        faiss.write_index_binary(index.binary, path)
    else:
        faiss.write_index(index, path)


def read_index(path: str, factory: str, flags: int = 0) -> faiss.Index | BinaryCodes:
    """Read an index file written by :func:`write_index`; `factory` (from the manifest) says its kind."""
    if is_binary(factory):
        return BinaryCodes(faiss.read_index_binary(path, flags), factory.strip())
    return faiss.read_index(path, flags)


def serialized_bytes(index: faiss.Index | BinaryCodes) -> int:
    """Bytes of `index` (a CPU index) as serialised: what it occupies in memory, within a few KB."""
    if isinstance(index, BinaryCodes):
        return int(faiss.serialize_index_binary(index.binary).nbytes)
    return int(faiss.serialize_index(index).nbytes)
