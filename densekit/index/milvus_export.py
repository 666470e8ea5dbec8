"""The full-precision vectors of a saved FAISS index or a shard directory, for moving them to Milvus
without re-encoding.

In order of preference: vectors the user names (a ``.npy`` in label order or a shard directory), the
embedding cache entry of the index's model over the documents it stores (found by the same key
:func:`~densekit.index.cache.encode_corpus` uses, so an index built from a corpus finds its
embeddings), or the vectors read back from the FAISS index when it stores them exactly (Flat, HNSW
over flat storage, IVF-Flat). A quantised index (PQ, SQ) cannot give its vectors back: that is an
error naming the way out, never lossy vectors in silence. A shard directory (`densekit index encode`,
one process or torchrun ranks on several nodes) is read shard by shard through memory maps.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from densekit.data import Corpus
from densekit.errors import DensekitError
from densekit.index.binary import is_binary
from densekit.index.cache import cache_enabled, cache_key, load_cached
from densekit.index.dense import DenseIndex
from densekit.index.docstore import DocStore


class ReconstructedVectors:
    """The vectors of an exact FAISS index, read back block by block (sliceable like an array)."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.make_direct_map()
        self.shape = (int(index.ntotal), int(index.d))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise IndexError("only contiguous slices")
        return self.index.reconstruct_n(start, max(stop - start, 0))


class ShardSlices:
    """A shard directory's vectors, sliceable like one memory-mapped array (rows gathered shard by shard)."""

    def __init__(self, sharded) -> None:
        self.sharded = sharded
        self.shape = tuple(sharded.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self))
        return self.sharded.take(np.arange(start, max(stop, start), dtype=np.int64))


def shard_source(directory: str | Path) -> tuple[list[str], ShardSlices, dict]:
    """(ids, vectors, model) of a shard directory written by `densekit index encode` (checked shard by shard)."""
    from densekit.index.shards import ShardedEmbeddings

    sharded = ShardedEmbeddings(directory)  # refuses a directory with unfinished shards
    return sharded.ids(), ShardSlices(sharded), dict(sharded.plan.model_info)


def is_exact(factory: str) -> bool:
    """Whether a FAISS factory string stores full float32 vectors (so they can be read back as they were)."""
    if is_binary(factory):  # sign bits only
        return False
    parts = [p.strip() for p in factory.split(",")]
    return all(not p.startswith(("PQ", "SQ", "OPQ", "LSH", "RQ", "LSQ")) and "PQ" not in p for p in parts)


def index_vectors(
    index: DenseIndex, store: DocStore | None, vectors: str | Path | None = None, cache: bool = True
) -> tuple[object, str]:
    """(the vectors of `index` in label order, where they came from); see the module docstring."""
    if vectors is not None:
        from densekit.index.shards import open_vectors

        array = open_vectors(vectors)
        if not isinstance(array, np.ndarray):
            array = ShardSlices(array)
        if tuple(array.shape) != (len(index), index.dim):
            raise DensekitError(
                f"{vectors}: shape {tuple(array.shape)} does not match the index's {len(index)} x {index.dim}"
            )
        return array, str(vectors)
    fingerprint = (index.model or {}).get("fingerprint")
    if cache and cache_enabled() and fingerprint and store is not None and not index.edited:
        docs = [store.get(doc_id) for doc_id in index.ids]
        corpus = Corpus([d.id for d in docs], [d.title for d in docs], [d.text for d in docs])
        cached = load_cached(cache_key(fingerprint, corpus.fingerprint()))
        if cached is not None and cached.shape == (len(index), index.dim):
            return cached, "embedding cache"
    if is_exact(index.factory):
        return ReconstructedVectors(index.index), f"FAISS {index.factory} (vectors stored exactly)"
    raise DensekitError(
        f"{index.factory} stores quantised vectors, and no embedding cache entry matches this index; "
        "give --vectors (the embeddings .npy in label order, or the shard directory it was built from)"
    )
