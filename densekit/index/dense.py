"""`DenseIndex`: a FAISS index plus the document ids and a manifest, saved as one directory.

A saved index directory holds::

    index.faiss     the FAISS index (always written from a CPU copy)
    ids.json        the document id of each vector, in FAISS order
    manifest.json   format version, densekit version, model and encoding config, dimension, metric,
                    factory string, vector count, search parameters, and the sha256 of each file

Loading checks the manifest against the files (sha256, count, dimension); any mismatch raises
:class:`~densekit.errors.IntegrityError` instead of serving wrong answers. Saving is atomic.

Example::

    index = DenseIndex.build(doc_embeddings, corpus.ids, factory="Flat")
    scores, ids = index.search(query_embeddings, k=10)
    index.save("scifact.idx"); DenseIndex.load("scifact.idx")
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import faiss
import numpy as np

from densekit import __version__
from densekit.errors import DensekitError, IntegrityError
from densekit.index.gpu import GPU_MAX_K, place, to_cpu
from densekit.io import atomic_dir, sha256_file
from densekit.progress import announce

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
MANIFEST_FILE = "manifest.json"
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def _as_float32(matrix: np.ndarray, dim: int | None = None) -> np.ndarray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise DensekitError(f"embeddings must be a 2-D array, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise DensekitError(f"embeddings have dimension {matrix.shape[1]}, the index has {dim}")
    return matrix


class DenseIndex:
    """FAISS vectors with string ids. Build with :meth:`build`, reopen with :meth:`load`."""

    def __init__(
        self,
        index: faiss.Index,
        ids: list[str],
        factory: str,
        metric: str,
        model: dict | None = None,
        device: str = "cpu",
        search_params: dict | None = None,
    ) -> None:
        if index.ntotal != len(ids):
            raise IntegrityError(f"the FAISS index holds {index.ntotal} vectors but {len(ids)} ids were given")
        self.index = index
        self.ids = ids
        self.factory = factory
        self.metric = metric
        self.model = model or {}
        self.device = device
        self.search_params = dict(search_params or {})

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        ids: list[str],
        factory: str = "Flat",
        metric: str = "ip",
        model: dict | None = None,
        device: str = "cpu",
        train_sample: int | None = None,
        seed: int = 0,
    ) -> DenseIndex:
        """Build from `embeddings` (n, dim) and their `ids` with a FAISS factory string.

        Indexes that need training (IVF, PQ, ...) train on `train_sample` vectors drawn with `seed`
        (all of them when None).
        """
        if metric not in METRICS:
            raise DensekitError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
        if len(ids) != len(embeddings):
            raise DensekitError(f"{len(embeddings)} embeddings but {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise DensekitError("document ids must be unique")
        vectors = _as_float32(embeddings)
        try:
            index = faiss.index_factory(vectors.shape[1], factory, METRICS[metric])
        except RuntimeError as exc:
            raise DensekitError(f"invalid FAISS factory string {factory!r}: {str(exc).splitlines()[0]}") from None
        index, where = place(index, device)
        if not index.is_trained:
            sample = vectors
            if train_sample and train_sample < len(vectors):
                rng = np.random.default_rng(seed)
                sample = vectors[np.sort(rng.choice(len(vectors), train_sample, replace=False))]
            index.train(sample)
        index.add(vectors)
        return cls(index, list(ids), factory, metric, model, where)

    def add(self, embeddings: np.ndarray, ids: list[str]) -> None:
        """Append vectors; ids must be new."""
        known = set(self.ids)
        clash = [i for i in ids if i in known]
        if clash:
            raise DensekitError(f"{len(clash)} ids already in the index, e.g. {clash[0]!r}")
        self.index.add(_as_float32(embeddings, self.dim))
        self.ids.extend(ids)

    def search(self, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, list[list[str]]]:
        """Top-`k` for each query row: `(scores (n, k'), ids)` with k' = min(k, len(self))."""
        if k <= 0:
            raise DensekitError(f"k must be positive, got {k}")
        queries = _as_float32(queries, self.dim)
        k = min(k, len(self))
        searcher = self.index
        if self.device != "cpu" and k > GPU_MAX_K:
            announce(f"k={k} exceeds FAISS's GPU limit of {GPU_MAX_K}: searching a CPU copy of the index")
            searcher = to_cpu(self.index)
        self._apply_search_params(searcher)
        all_scores, all_ids = [], []
        for start in range(0, len(queries), batch_size):
            scores, labels = searcher.search(queries[start : start + batch_size], k)
            all_scores.append(scores)
            for row in labels:
                all_ids.append([self.ids[j] for j in row if j >= 0])
        return np.vstack(all_scores) if all_scores else np.empty((0, k), np.float32), all_ids

    def _apply_search_params(self, index: faiss.Index) -> None:
        if not self.search_params:
            return
        params = faiss.ParameterSpace()
        for name, value in self.search_params.items():
            params.set_index_parameter(index, name, value)

    def manifest(self, files: dict[str, str]) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "densekit_version": __version__,
            "kind": "dense",
            "model": self.model,
            "dim": self.dim,
            "metric": self.metric,
            "factory": self.factory,
            "count": len(self),
            "search_params": self.search_params,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the index directory atomically (see module docstring)."""
        directory = Path(directory)
        with atomic_dir(directory) as staging:
            faiss.write_index(to_cpu(self.index), str(staging / INDEX_FILE))
            with open(staging / IDS_FILE, "w", encoding="utf-8") as handle:
                json.dump(self.ids, handle)
            files = {name: sha256_file(staging / name) for name in (INDEX_FILE, IDS_FILE)}
            with open(staging / MANIFEST_FILE, "w", encoding="utf-8") as handle:
                json.dump(self.manifest(files), handle, indent=2)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", verify: bool = True, mmap: bool = False) -> DenseIndex:
        """Open a saved index directory, checking it against its manifest."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest.get("kind", "dense") != "dense":
            raise DensekitError(f"{directory}: a {manifest.get('kind')} index, not a dense one")
        if verify:
            verify_files(directory, manifest)
        flags = faiss.IO_FLAG_MMAP if mmap else 0
        try:
            index = faiss.read_index(str(directory / INDEX_FILE), flags)
        except RuntimeError as exc:
            reason = str(exc).splitlines()[0]
            raise IntegrityError(f"{directory / INDEX_FILE}: FAISS cannot read it ({reason})") from None
        with open(directory / IDS_FILE, encoding="utf-8") as handle:
            ids = json.load(handle)
        if index.ntotal != manifest["count"] or len(ids) != manifest["count"] or index.d != manifest["dim"]:
            raise IntegrityError(
                f"{directory}: manifest says {manifest['count']} vectors of dimension {manifest['dim']}, "
                f"files hold {index.ntotal} vectors, {len(ids)} ids, dimension {index.d}"
            )
        index, where = place(index, device)
        return cls(index, ids, manifest["factory"], manifest["metric"], manifest.get("model"), where,
                   manifest.get("search_params"))


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a saved index directory, with a clear error when it is missing or unreadable."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise DensekitError(f"{directory}: no such index directory")
    if not path.is_file():
        raise IntegrityError(f"{path}: missing; {directory} is not a densekit index")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IntegrityError(f"{path}: format_version {version!r}; this densekit reads version {FORMAT_VERSION}")
    return manifest


def verify_files(directory: Path, manifest: dict) -> None:
    """Check every file the manifest lists against its sha256."""
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(f"{path}: sha256 {actual[:12]}... differs from the manifest's {expected[:12]}... "
                                 "(the file was altered or truncated)")
