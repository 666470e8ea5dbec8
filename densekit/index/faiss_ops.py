"""Small functions over FAISS indexes and numpy arrays that `DenseIndex` and the saved-index tools share.

Training with FAISS's k-means warnings turned into one announcement, seeded training samples, the
switch that skips PQ's polysemous training, memory-map flags, an index's structure for `index info`,
and the two ways of removing vectors that FAISS lacks (renumbering inverted lists, rebuilding HNSW).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import faiss
import numpy as np

from densekit.errors import DensekitError, IntegrityError
from densekit.index.gpu import base_index
from densekit.progress import announce

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
ADD_BLOCK = 65536


def as_float32(matrix: np.ndarray, dim: int | None = None) -> np.ndarray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise DensekitError(f"embeddings must be a 2-D array, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise DensekitError(f"embeddings have dimension {matrix.shape[1]}, the index has {dim}")
    return matrix


@contextlib.contextmanager
def captured_native_stderr() -> Iterator[list[str]]:
    """Capture what FAISS's C++ code prints on fd 2 (k-means prints one warning per OPQ iteration)."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no real fd 2 (embedded interpreters): nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def train_index(index: faiss.Index, sample: np.ndarray) -> None:
    """Train `index` on `sample`, turning FAISS's repeated k-means warnings into one announcement."""
    with captured_native_stderr() as lines:
        try:
            index.train(as_float32(sample))
        except RuntimeError as exc:
            reason = str(exc).splitlines()[-1].split("failed: ")[-1]
            raise DensekitError(
                f"training the index on {len(sample)} vectors failed: {reason} "
                "(use a larger --train-sample or fewer lists / PQ centroids)"
            ) from None
    warnings = [line for line in lines if line.startswith("WARNING clustering")]
    if warnings:
        announce(
            f"FAISS: {warnings[0].removeprefix('WARNING ')} "
            f"({len(warnings)} such warning(s); recall may suffer: use a larger --train-sample "
            "or fewer lists / PQ centroids)"
        )
    others = [line for line in lines if not line.startswith("WARNING clustering") and line.strip()]
    for line in others:
        announce(f"FAISS: {line}")


def sample_rows(n: int, size: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted row numbers of a seeded sample of `size` out of `n` (None: take every row)."""
    if size is None or size >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def skip_polysemous_training(index: faiss.Index) -> None:
    """Turn off FAISS's polysemous training of PQ codes (on by default for IndexPQ / IndexIVFPQ).

    It reorders the centroids so that Hamming distances between codes approximate PQ distances;
    only polysemous filtering (``polysemous_ht``) uses that, which densekit never sets, and it
    costs minutes (tens of seconds on a 2,000-vector sample).
    """
    base = base_index(index)
    if hasattr(base, "do_polysemous_training"):
        base.do_polysemous_training = False


def is_ivf(index: faiss.Index) -> bool:
    return isinstance(index, faiss.Index) and faiss.try_extract_index_ivf(index) is not None


def mmap_flags(factory: str) -> int:
    # Inverted lists map through OnDiskInvertedLists; flat code arrays through MMAP_IFC.
    # The two flags cannot be combined for IVF files.
    return faiss.IO_FLAG_MMAP if "IVF" in factory else faiss.IO_FLAG_MMAP_IFC


def structure(index: faiss.Index) -> dict:
    """FAISS classes from the outside in, and the build parameters that matter for memory and recall."""
    out: dict = {"faiss_classes": []}
    if not isinstance(index, faiss.Index):  # index/binary.py's BinaryCodes
        out["faiss_classes"].append(type(faiss.downcast_IndexBinary(index.binary)).__name__)
        out["bits"] = int(index.d)
        return out
    root = index  # owns the C++ object: the downcast wrappers below do not, and must not outlive it
    index = faiss.downcast_index(root)
    while True:
        out["faiss_classes"].append(type(index).__name__)
        if isinstance(index, faiss.IndexPreTransform):
            out["transforms"] = [
                type(faiss.downcast_VectorTransform(index.chain.at(i))).__name__ for i in range(index.chain.size())
            ]
            index = faiss.downcast_index(index.index)
            continue
        break
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        out["nlist"] = int(ivf.nlist)
    pq = getattr(index, "pq", None)
    if pq is not None:
        out["pq"] = {"M": int(pq.M), "nbits": int(pq.nbits)}
    if isinstance(index, faiss.IndexHNSW):
        out["hnsw"] = {"M": int(index.hnsw.nb_neighbors(1)), "efConstruction": int(index.hnsw.efConstruction)}
    return out


def compact_ivf_labels(ivf: faiss.IndexIVF, removed: np.ndarray) -> None:
    """After `remove_ids`, renumber the labels in every inverted list so they are 0..n-1 again,
    keeping their order (label j becomes j minus the number of removed labels below j)."""
    invlists = ivf.invlists
    code_size = invlists.code_size
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size == 0:
            continue
        old = faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy()
        codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * code_size).copy()
        new = old - np.searchsorted(removed, old)
        invlists.update_entries(list_no, 0, size, faiss.swig_ptr(new), faiss.swig_ptr(codes))
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        ivf.make_direct_map(True)


def rebuilt_hnsw_without(index: faiss.Index, labels: np.ndarray, factory: str, metric: str) -> faiss.Index:
    """A new HNSW index over `index`'s vectors except `labels` (HNSW cannot delete in place), announced."""
    dim = int(index.d)
    announce(f"HNSW cannot delete vectors in place: rebuilding the graph over {index.ntotal - len(labels)} vectors")
    keep = np.setdiff1d(np.arange(index.ntotal, dtype=np.int64), labels)
    vectors = index.reconstruct_batch(keep) if len(keep) else np.empty((0, dim), np.float32)
    rebuilt = faiss.index_factory(dim, factory, METRICS[metric])
    base_index(rebuilt).hnsw.efConstruction = base_index(index).hnsw.efConstruction
    if not rebuilt.is_trained:
        train_index(rebuilt, vectors)
    for start in range(0, len(vectors), ADD_BLOCK):
        rebuilt.add(vectors[start : start + ADD_BLOCK])
    return rebuilt


def without_labels(cpu: faiss.Index, labels: np.ndarray, factory: str, metric: str) -> faiss.Index:
    """`cpu` (a CPU index) with the vectors at sorted `labels` removed and the rest renumbered 0..n-1:
    FAISS's remove_ids, inverted lists compacted, HNSW rebuilt. Returns the (possibly new) index."""
    base = base_index(cpu)
    if hasattr(base, "without_labels"):  # index/binary.py's BinaryCodes
        return base.without_labels(labels)
    if isinstance(base, faiss.IndexHNSW):
        return rebuilt_hnsw_without(cpu, labels, factory, metric)
    try:
        removed = cpu.remove_ids(faiss.IDSelectorBatch(labels))
    except RuntimeError as exc:
        raise DensekitError(f"a {type(base).__name__} cannot remove vectors: {str(exc).splitlines()[-1]}") from None
    if removed != len(labels):
        raise IntegrityError(f"FAISS removed {removed} vectors, expected {len(labels)}")
    if is_ivf(cpu):
        compact_ivf_labels(faiss.extract_index_ivf(cpu), labels)
    return cpu
