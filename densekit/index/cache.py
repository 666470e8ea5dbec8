"""Embedding cache: corpus (and query) embeddings keyed by model (weights + encoding config) and content.

Re-evaluating, re-indexing or mining with the same model over the same corpus reads the `.npy`
(memory-mapped) instead of re-encoding. Entries live under `$DENSEKIT_HOME/embeddings/<key>/`
(`embeddings.npy`, `meta.json` with the array's shape and sha256). Every read verifies the entry: a
missing or broken `meta.json`, a truncated array, a shape that differs from `meta.json` or a sha256
that differs (a flipped value) is :class:`~densekit.errors.IntegrityError` saying to delete the entry
or pass ``--no-cache``; a damaged entry is never used. The cache is optional: when an entry cannot
be written (a full disk, a read-only `$DENSEKIT_HOME`), that is announced and the work goes on
with the embeddings in memory. `DENSEKIT_NO_CACHE=1` or `cache=False` turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from densekit.data import Corpus
from densekit.errors import DensekitError, IntegrityError
from densekit.faults import fault_point
from densekit.io import atomic_dir, read_json, read_lock, sha256_file, write_lock
from densekit.paths import embeddings_dir
from densekit.progress import announce

ARRAY_FILE = "embeddings.npy"
META_FILE = "meta.json"


def cache_enabled() -> bool:
    return os.environ.get("DENSEKIT_NO_CACHE", "") in ("", "0", "false")


def cache_key(encoder_fingerprint: str, corpus_fingerprint: str, role: str = "document") -> str:
    return hashlib.sha256(f"{encoder_fingerprint}|{corpus_fingerprint}|{role}".encode()).hexdigest()[:32]


def cache_root() -> Path:
    return embeddings_dir()


def _damaged(entry: Path, why: str) -> IntegrityError:
    return IntegrityError(f"{entry}: embedding cache entry is damaged ({why}); delete that folder or use --no-cache")


def load_cached(key: str) -> np.ndarray | None:
    """The cached array for `key`, verified and opened with mmap, or None when there is no entry."""
    entry = cache_root() / key
    meta_path = entry / META_FILE
    if not entry.is_dir():
        return None
    with read_lock(entry):
        if not meta_path.is_file():
            raise _damaged(entry, f"no {META_FILE}")
        try:
            meta = read_json(meta_path, IntegrityError)
            shape, digest = list(meta["shape"]), str(meta["sha256"])
        except (IntegrityError, KeyError, TypeError) as exc:
            raise _damaged(entry, f"{META_FILE} unreadable: {exc}") from None
        array_path = entry / ARRAY_FILE
        if not array_path.is_file():
            raise _damaged(entry, f"no {ARRAY_FILE}")
        if sha256_file(array_path) != digest:
            raise _damaged(entry, f"{ARRAY_FILE} sha256 differs from {META_FILE}: the values were altered or cut")
        try:
            array = np.load(array_path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise _damaged(entry, f"{ARRAY_FILE} is not a readable array: {exc}") from None
    if list(array.shape) != shape or array.dtype != np.float32:
        raise _damaged(entry, f"shape {array.shape} / dtype {array.dtype} differ from {META_FILE}'s {shape}")
    return array


def store_with(
    key: str, shape: tuple[int, int], fill: Callable[[np.ndarray], None], meta: dict, fallback: Callable[[], np.ndarray]
) -> np.ndarray:
    """Write an entry atomically by letting `fill` write rows into a memory-mapped array of `shape`.

    Returns the entry re-opened with mmap. When the entry cannot be written (no space, no
    permission), that is announced and `fallback()` computes the array in memory instead.
    """
    entry = cache_root() / key
    try:
        with atomic_dir(entry, kind="cache") as staging:
            path = staging / ARRAY_FILE
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
            fill(array)
            array.flush()
            del array
            fault_point("cache-store")
            full = {**meta, "shape": list(shape), "sha256": sha256_file(path)}
            with open(staging / META_FILE, "w", encoding="utf-8") as handle:
                json.dump(full, handle, indent=2)
    except OSError as exc:
        announce(
            f"the embedding cache cannot be written at {entry} ({exc.strerror or exc}); "
            "going on without caching this entry"
        )
        return fallback()
    return load_cached(key)  # type: ignore[return-value]


def store(key: str, embeddings: np.ndarray, meta: dict) -> np.ndarray:
    """Write an entry for `embeddings` and return it re-opened with mmap (or `embeddings` itself when
    the cache cannot be written, announced)."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise DensekitError(f"cache entries are 2-D arrays, got shape {embeddings.shape}")

    def fill(array: np.ndarray) -> None:
        array[:] = embeddings

    return store_with(key, embeddings.shape, fill, meta, lambda: embeddings)


def encode_corpus(encoder, corpus: Corpus, cache: bool = True, show_progress: bool = True) -> np.ndarray:
    """Document embeddings of `corpus` in corpus order, from the cache when possible."""
    use_cache = cache and cache_enabled()
    if not use_cache:
        return _encode(encoder, corpus, show_progress)
    key = cache_key(encoder.fingerprint(), corpus.fingerprint())
    cached = load_cached(key)
    if cached is None:
        with contextlib.ExitStack() as held:
            # Another process encoding the same corpus with the same model (parallel evaluations, test
            # workers) holds this lock: wait for its entry instead of encoding it a second time.
            with contextlib.suppress(OSError):  # an unwritable cache: store() announces it
                held.enter_context(write_lock(cache_root() / f"{key}.encoding", timeout=math.inf))
            cached = load_cached(key)
            if cached is None:
                return _encode(encoder, corpus, show_progress, key)
    announce_cut(encoder, cached_meta(key).get("cut"), len(corpus))
    return cached


def _encode(encoder, corpus: Corpus, show_progress: bool, key: str | None = None) -> np.ndarray:
    """Encode `corpus`; store the result under `key` when one is given."""
    embeddings = encoder.encode_documents(corpus.texts(), show_progress=show_progress)
    cut = getattr(encoder, "last_cut", None)
    announce_cut(encoder, cut, len(corpus))
    if key is None:
        return embeddings
    meta = {"model": encoder.model_id, "documents": len(corpus), "corpus": str(corpus.path or ""), "cut": cut}
    meta["backend"] = getattr(encoder, "backend_name", "torch")  # also in the key, through the fingerprint
    return store(key, embeddings, meta)


def cached_meta(key: str) -> dict:
    """The `meta.json` of a cache entry that :func:`load_cached` has just verified."""
    return read_json(cache_root() / key / META_FILE, IntegrityError)


_ANNOUNCED_CUTS: set[tuple[str, int, int]] = set()


def announce_cut(encoder, cut: int | None, total: int) -> None:
    """Say once per process and corpus how many texts were longer than the encoder's window (their rest
    is never seen)."""
    if not cut or (encoder.model_id, cut, total) in _ANNOUNCED_CUTS:
        return
    _ANNOUNCED_CUTS.add((encoder.model_id, cut, total))
    window = getattr(getattr(encoder, "config", None), "max_length", "?")
    announce(
        f"{cut} of {total} texts are longer than {encoder.model_id}'s window of {window} tokens and were cut: "
        "the rest of their text cannot be found; index passages instead (--chunk-size, see docs/indexing.md)"
    )
