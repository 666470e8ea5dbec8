"""`DenseIndex`: a FAISS index plus the document ids and a manifest, saved as one directory.

A saved index directory holds::

    index.faiss     the FAISS index (always written from a CPU copy)
    ids.json        the document id of each vector, in FAISS label order
    manifest.json   versions, model (with its fingerprint) and encoding config, dimension, metric, factory,
                    training-sample size, count, search parameters, sha256 of each file (index/manifest.py)

Loading checks the manifest and the files (sha256, count, dimension): a mismatch is an IntegrityError,
never a wrong answer. Saving is atomic (densekit.io.atomic_dir). FAISS labels are always the positions
0..n-1 of ``ids``: removing documents compacts them (index/faiss_ops.py: without_labels).

Example::

    index = DenseIndex.build(doc_embeddings, corpus.ids, factory="ivf-pq")   # preset or factory string
    scores, ids = index.search(query_embeddings, k=10, params={"nprobe": 32})
    index.save("scifact.idx"); DenseIndex.load("scifact.idx", mmap=True)
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import faiss
import numpy as np

from densekit import __version__
from densekit.errors import DensekitError, IntegrityError
from densekit.index.binary import new_index, read_index, serialized_bytes, write_index
from densekit.index.exact_rerank import ExactRerank
from densekit.index.factory import check_search_params, is_pqr, resolve
from densekit.index.faiss_ops import (
    ADD_BLOCK,
    METRICS,
    as_float32,
    mmap_flags,
    sample_rows,
    skip_polysemous_training,
    train_index,
    without_labels,
)
from densekit.index.gpu import GPU_MAX_K, needs_cpu_search, parameter_space, place, to_cpu
from densekit.index.manifest import (
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    previous_manifest,
    read_manifest,
    timestamp,
    verify_files,
)
from densekit.io import atomic_dir, read_json, read_lock, sha256_file
from densekit.progress import announce, progress_bar, stage

UNIT_TOLERANCE = 1e-3  # float32 embeddings normalised by a model are within ~1e-6 of length 1

# Re-exported for callers that open an index through this module.
__all__ = ["DenseIndex", "read_manifest", "verify_files", "sample_rows", "train_index", "GPU_MAX_K"]


class DenseIndex(ExactRerank):
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
        preset: str | None = None,
        train_sample: int | None = None,
        read_only: bool = False,
        placement: dict | None = None,
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
        self.preset = preset
        self.train_sample = train_sample
        self.read_only = read_only
        self.placement = placement or {"device": device, "shard": False, "float16": False}
        self._positions: dict[str, int] | None = None
        self._cpu_copy: faiss.Index | None = None
        self.edited = False  # labels no longer follow the order of the vectors the index was built from
        self._rerank: tuple[object, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    # -- building ------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        dim: int,
        n_expected: int,
        factory: str = "Flat",
        metric: str = "ip",
        model: dict | None = None,
        train_sample: int | None = None,
        search_params: dict | None = None,
    ) -> DenseIndex:
        """An empty, untrained index for about `n_expected` vectors of `dim` (a preset or factory string).

        Train it with :meth:`train` (when ``needs_training``), then :meth:`add` blocks or shards.
        """
        if metric not in METRICS:
            raise DensekitError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
        spec = resolve(factory, n_expected, dim, train_sample=train_sample)
        faiss_metric = METRICS[metric]
        if metric == "ip" and is_pqr(spec.factory):
            faiss_metric = faiss.METRIC_L2  # same ranking on unit vectors; see _ip_over_l2
        try:
            index = new_index(dim, spec.factory, faiss_metric)
        except RuntimeError as exc:
            raise DensekitError(f"invalid FAISS factory string {spec.factory!r}: {str(exc).splitlines()[0]}") from None
        skip_polysemous_training(index)
        params = {**spec.search_params, **check_search_params(search_params or {})}
        return cls(index, [], spec.factory, metric, model, "cpu", params, spec.preset, spec.train_sample)

    @property
    def _ip_over_l2(self) -> bool:
        """Inner-product search served by an L2 index (ivf-pqr: FAISS has IVFPQR for L2 only).

        Only sound for unit-length document vectors, which :meth:`train` and :meth:`add` check;
        :meth:`search_labels` turns the distances back into inner products.
        """
        return self.metric == "ip" and self.index.metric_type == faiss.METRIC_L2

    def _check_unit_length(self, vectors: np.ndarray, what: str) -> None:
        norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > UNIT_TOLERANCE)
        if len(bad):
            raise DensekitError(
                f"{self.factory} serves inner-product search through FAISS's L2-only IVFPQR, which ranks "
                f"like the inner product only for unit-length vectors; {what} row {int(bad[0])} has norm "
                f"{norms[bad[0]]:.4f} ({len(bad)} rows off by more than {UNIT_TOLERANCE}). Normalise the "
                "embeddings (e.g. a model ending in a Normalize layer) or choose another index"
            )

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def train(self, sample: np.ndarray) -> None:
        """Train the (empty) index on `sample` vectors."""
        sample = as_float32(sample, self.dim)
        if len(sample) == 0:
            raise DensekitError("cannot train an index on zero vectors")
        if self._ip_over_l2:
            self._check_unit_length(sample, "the training sample's")
        with stage(f"training {self.factory} on {len(sample)} vectors"):
            train_index(self.index, sample)

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
        search_params: dict | None = None,
        shard: bool = False,
        float16: bool = False,
        show_progress: bool = False,
        rescore_multiplier: int | None = None,
    ) -> DenseIndex:
        """Build from `embeddings` (n, dim; an mmap is read block by block) and their `ids`.

        `factory` is a preset (flat, ivf-flat, ivf-pq, ivf-pqr, hnsw, sq8, fp16; see
        :mod:`densekit.index.factory`) or a FAISS factory string. Indexes that need training draw
        `train_sample` vectors with `seed` (the preset's default when None). `device` places the
        index (cpu, gpu, gpu:N, gpu:0,1, auto) before training, so training and adding run there;
        `shard` and `float16` are the multi-GPU layout and half-precision storage options.
        `rescore_multiplier`: search rescores its top multiplier x k against `embeddings` (exact_rerank.py).
        """
        if len(ids) != len(embeddings):
            raise DensekitError(f"{len(embeddings)} embeddings but {len(ids)} ids")
        if getattr(embeddings, "ndim", 2) != 2:
            raise DensekitError(f"embeddings must be a 2-D array, got shape {embeddings.shape}")
        if len(embeddings) == 0:
            raise DensekitError("cannot build an index from zero embeddings")
        index = cls.create(
            int(embeddings.shape[1]), len(embeddings), factory, metric, model, train_sample, search_params
        )
        index.to_device(device, shard=shard, float16=float16)
        long_add = index.needs_training or len(ids) > ADD_BLOCK  # quantising codes or many blocks: say so
        if index.needs_training:
            rows = sample_rows(len(embeddings), index.train_sample, seed)
            index.train(embeddings if rows is None else embeddings[rows])
        with stage(f"adding {len(ids)} vectors to {index.factory}") if long_add else contextlib.nullcontext():
            index.add_blocks(embeddings, list(ids), show_progress=show_progress)
        if rescore_multiplier is not None:
            index.use_reranking(embeddings, multiplier=rescore_multiplier)
        return index

    def add_blocks(
        self, embeddings: np.ndarray, ids: list[str], block: int = ADD_BLOCK, show_progress: bool = False
    ) -> None:
        """:meth:`add` `embeddings` block by block (an mmap never has to fit in memory)."""
        if len(ids) != len(embeddings):
            raise DensekitError(f"{len(embeddings)} embeddings but {len(ids)} ids")
        bar = progress_bar("adding vectors", total=len(ids), unit="vec") if show_progress else None
        for start in range(0, len(ids), block):
            self.add(embeddings[start : start + block], ids[start : start + block])
            if bar is not None:
                bar.update(min(block, len(ids) - start))
        if bar is not None:
            bar.close()

    # -- changing ------------------------------------------------------------------------------------

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise DensekitError(
                f"cannot {what}: the index was opened memory-mapped (read-only); load it without mmap to change it"
            )

    def _changed(self) -> None:
        self._positions = None
        self._cpu_copy = None

    def positions(self) -> dict[str, int]:
        """Doc id -> FAISS label."""
        if self._positions is None:
            self._positions = {doc_id: i for i, doc_id in enumerate(self.ids)}
        return self._positions

    def add(self, embeddings: np.ndarray, ids: list[str]) -> None:
        """Append vectors; ids must be new (use :meth:`update` to replace documents)."""
        self._check_writable("add documents")
        if len(ids) != len(embeddings):
            raise DensekitError(f"{len(embeddings)} embeddings but {len(ids)} ids")
        if self.needs_training:
            raise DensekitError(f"the {self.factory} index is not trained yet; train it before adding")
        known = self.positions()
        clash = [i for i in ids if i in known]
        if clash:
            raise DensekitError(f"{len(clash)} ids already in the index, e.g. {clash[0]!r} (use update)")
        if len(set(ids)) != len(ids):
            raise DensekitError("document ids must be unique")
        embeddings = as_float32(embeddings, self.dim)
        if self._ip_over_l2:
            self._check_unit_length(embeddings, "the added embeddings'")
        self.index.add(embeddings)
        self.ids.extend(ids)
        self._changed()

    def remove(self, ids: list[str], missing_ok: bool = False) -> int:
        """Remove documents by id; return how many were removed. Unknown ids are an error unless
        `missing_ok`."""
        self._check_writable("remove documents")
        known = self.positions()
        unknown = [i for i in ids if i not in known]
        if unknown and not missing_ok:
            raise DensekitError(f"{len(unknown)} ids are not in the index, e.g. {unknown[0]!r}")
        labels = np.array(sorted({known[i] for i in ids if i in known}), dtype=np.int64)
        if len(labels) == 0:
            return 0
        cpu = without_labels(to_cpu(self.index), labels, self.factory, self.metric)
        drop = set(labels.tolist())
        self.ids = [doc_id for i, doc_id in enumerate(self.ids) if i not in drop]
        self.edited = True
        self._replace_index(cpu)
        return len(labels)

    def _replace_index(self, cpu_index: faiss.Index) -> None:
        placement = self.placement
        self.index, self.device = (
            (cpu_index, "cpu")
            if placement["device"] == "cpu"
            else place(cpu_index, placement["device"], placement["shard"], placement["float16"])
        )
        self._changed()

    def update(self, embeddings: np.ndarray, ids: list[str]) -> tuple[int, int]:
        """Insert or replace documents: existing ids are removed, then all are added.

        Returns ``(replaced, added)``. Replaced documents move to the end of the label order.
        """
        known = self.positions()
        replaced = self.remove([i for i in ids if i in known]) if any(i in known for i in ids) else 0
        self.add(embeddings, list(ids))
        return replaced, len(ids) - replaced

    # -- placement -----------------------------------------------------------------------------------

    def to_device(self, device: str, shard: bool = False, float16: bool = False) -> DenseIndex:
        """Move the index to `device` (cpu, gpu, gpu:N, gpu:0,1, auto); results stay the same up to
        float16 rounding when `float16`."""
        cpu = to_cpu(self.index)
        self.placement = {"device": device, "shard": shard, "float16": float16}
        self.index, self.device = place(cpu, device, shard, float16)
        self._changed()
        return self

    # -- searching -----------------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        batch_size: int = 4096,
        params: dict | None = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Top-`k` for each query row: `(scores (n, k'), ids)` with k' = min(k, len(self)).

        `params` (nprobe, efSearch) override the manifest's search parameters for this call.
        """
        if k <= 0:
            raise DensekitError(f"k must be positive, got {k}")
        queries = as_float32(queries, self.dim)
        k = min(k, len(self))
        if k == 0:
            return np.empty((len(queries), 0), np.float32), [[] for _ in range(len(queries))]
        if self._rerank is not None:
            return self.search_rescored(queries, k, params)
        all_scores, all_labels = self.search_labels(queries, k, batch_size, params)
        return all_scores, [[self.ids[j] for j in row if j >= 0] for row in all_labels]

    def search_labels(
        self, queries: np.ndarray, k: int, batch_size: int = 4096, params: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, but FAISS labels (positions in ``ids``; -1 pads a short row)."""
        queries = as_float32(queries, self.dim)
        effective = {**self.search_params, **check_search_params(params or {})}
        searcher = self.index
        if self.device != "cpu":
            reason = needs_cpu_search(k, effective)
            if reason:
                announce(f"{reason}: searching a CPU copy of the index")
                if self._cpu_copy is None:
                    self._cpu_copy = to_cpu(self.index)
                searcher = self._cpu_copy
        self._apply_search_params(searcher, effective)
        all_scores, all_labels = [], []
        ip_over_l2 = self._ip_over_l2
        for start in range(0, len(queries), batch_size):
            batch = queries[start : start + batch_size]
            scores, labels = searcher.search(batch, k)
            if ip_over_l2:  # |q - x|^2 = |q|^2 + 1 - 2 q.x for a unit x
                scores = ((batch * batch).sum(axis=1, keepdims=True) + 1.0 - scores) / 2.0
            all_scores.append(scores)
            all_labels.append(labels)
        if not all_scores:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        return np.vstack(all_scores), np.vstack(all_labels)

    def set_search_params(self, params: dict) -> None:
        """Change the default search parameters (nprobe, efSearch) that :meth:`save` writes to the
        manifest; parameters that do not apply to this index type are an error."""
        checked = check_search_params(params)
        self._apply_search_params(self.index, checked)
        self.search_params.update(checked)

    @staticmethod
    def _apply_search_params(index: faiss.Index, params: dict) -> None:
        if not params:
            return
        space = parameter_space(index)
        for name, value in params.items():
            try:
                space.set_index_parameter(getattr(index, "binary", index), name, value)  # BinaryCodes: its IndexBinary
            except RuntimeError as exc:
                raise DensekitError(
                    f"search parameter {name}={value} does not apply to this index: {str(exc).splitlines()[-1]}"
                ) from None

    # -- describing ----------------------------------------------------------------------------------

    def index_bytes(self) -> int:
        """Bytes of the FAISS index as serialised (what it occupies in memory, within a few KB)."""
        return serialized_bytes(to_cpu(self.index))

    def manifest(self, files: dict[str, str]) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "densekit_version": __version__,
            "kind": "dense",
            "model": self.model,
            "dim": self.dim,
            "metric": self.metric,
            "factory": self.factory,
            "preset": self.preset,
            "train_sample": self.train_sample,
            "count": len(self),
            "search_params": self.search_params,
            "edited": self.edited,
            "created": timestamp(),
            "files": files,
        }

    # -- saving and loading --------------------------------------------------------------------------

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the index directory atomically (see module docstring).

        Saving over an existing dense index directory keeps the other files its manifest lists (a
        document store beside the index, for instance) and the manifest entries densekit does not
        write itself. Anything else at `directory` is refused unless `overwrite`
        (:func:`densekit.io.check_output_target`).
        """
        directory = Path(directory)
        with atomic_dir(directory, kind="index:dense", overwrite=overwrite) as staging:
            previous = previous_manifest(directory) if not overwrite else {}
            write_index(to_cpu(self.index), str(staging / INDEX_FILE))
            with open(staging / IDS_FILE, "w", encoding="utf-8") as handle:
                json.dump(self.ids, handle)
            files = {name: sha256_file(staging / name) for name in (INDEX_FILE, IDS_FILE)}
            rescore = self.save_rescore_vectors(staging, files)
            manifest = {**self.manifest(files), "rescore": rescore}
            for name, digest in previous.get("files", {}).items():
                if name not in files and (directory / name).is_file():
                    shutil.copy2(directory / name, staging / name)
                    files[name] = digest
            for key, value in previous.items():
                manifest.setdefault(key, value)
            with open(staging / MANIFEST_FILE, "w", encoding="utf-8") as handle:
                json.dump(manifest, handle, indent=2)
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str = "cpu",
        verify: bool = True,
        mmap: bool = False,
        shard: bool = False,
        float16: bool = False,
    ) -> DenseIndex:
        """Open a saved index directory, checking it against its manifest.

        `mmap` maps the vectors from disk instead of reading them (inverted lists for IVF indexes,
        the code array for flat, SQ and HNSW ones), so an index larger than memory can be searched;
        such an index is read-only.
        """
        directory = Path(directory)
        with read_lock(directory):
            manifest = read_manifest(directory)
            if manifest["kind"] != "dense":
                raise DensekitError(f"{directory}: a {manifest['kind']} index, not a dense one")
            if verify:
                verify_files(directory, manifest)
            flags = mmap_flags(manifest["factory"]) if mmap else 0
            try:
                index = read_index(str(directory / INDEX_FILE), manifest["factory"], flags)
            except RuntimeError as exc:
                reason = str(exc).splitlines()[-1]
                raise IntegrityError(f"{directory / INDEX_FILE}: FAISS cannot read it ({reason})") from None
            ids = read_json(directory / IDS_FILE, IntegrityError)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise IntegrityError(f"{directory / IDS_FILE}: expected a JSON list of document ids")
        if index.ntotal != manifest["count"] or len(ids) != manifest["count"] or index.d != manifest["dim"]:
            raise IntegrityError(
                f"{directory}: manifest says {manifest['count']} vectors of dimension {manifest['dim']}, "
                f"files hold {index.ntotal} vectors, {len(ids)} ids, dimension {index.d}"
            )
        if mmap and device != "cpu":
            announce("a memory-mapped index is copied into GPU memory: --mmap only saves host memory on the CPU")
        placed, where = place(index, device, shard, float16)
        loaded = cls(
            placed,
            ids,
            manifest["factory"],
            manifest["metric"],
            manifest.get("model"),
            where,
            manifest.get("search_params"),
            manifest.get("preset"),
            manifest.get("train_sample"),
            read_only=mmap and where == "cpu",
            placement={"device": device, "shard": shard, "float16": float16},
        )
        loaded.edited = bool(manifest.get("edited", False))
        loaded.open_rescore_vectors(directory, manifest)
        return loaded
