"""Embedding cache: corpus embeddings keyed by model (weights + encoding config) and corpus content.

Re-evaluating, re-indexing or mining with the same model over the same corpus reads the `.npy`
(memory-mapped) instead of re-encoding. Entries live under `$DENSEKIT_HOME/embeddings/<key>/`
(`embeddings.npy`, `meta.json` with the sha256 of the array); a damaged entry is refused, and
`DENSEKIT_NO_CACHE=1` or `cache=False` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from densekit.data import Corpus
from densekit.errors import IntegrityError
from densekit.io import atomic_dir, sha256_file
from densekit.retriever.models import densekit_home


def cache_enabled() -> bool:
    return os.environ.get("DENSEKIT_NO_CACHE", "") in ("", "0", "false")


def cache_key(encoder_fingerprint: str, corpus_fingerprint: str, role: str = "document") -> str:
    return hashlib.sha256(f"{encoder_fingerprint}|{corpus_fingerprint}|{role}".encode()).hexdigest()[:32]


def cache_root() -> Path:
    return densekit_home() / "embeddings"


def load_cached(key: str, verify: bool = False) -> np.ndarray | None:
    """The cached array for `key` opened with mmap, or None when there is no entry."""
    entry = cache_root() / key
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    with open(meta_path, encoding="utf-8") as handle:
        meta = json.load(handle)
    array_path = entry / "embeddings.npy"
    if verify and sha256_file(array_path) != meta["sha256"]:
        raise IntegrityError(f"{array_path}: cache entry is damaged (sha256 mismatch); delete {entry}")
    array = np.load(array_path, mmap_mode="r")
    if list(array.shape) != meta["shape"]:
        raise IntegrityError(f"{array_path}: shape {array.shape} differs from its meta.json {meta['shape']}")
    return array


def store(key: str, embeddings: np.ndarray, meta: dict) -> np.ndarray:
    """Write an entry atomically and return it re-opened with mmap."""
    entry = cache_root() / key
    with atomic_dir(entry) as staging:
        np.save(staging / "embeddings.npy", np.ascontiguousarray(embeddings, dtype=np.float32))
        full = {**meta, "shape": list(embeddings.shape), "sha256": sha256_file(staging / "embeddings.npy")}
        with open(staging / "meta.json", "w", encoding="utf-8") as handle:
            json.dump(full, handle, indent=2)
    return np.load(entry / "embeddings.npy", mmap_mode="r")


def encode_corpus(encoder, corpus: Corpus, cache: bool = True, show_progress: bool = True) -> np.ndarray:
    """Document embeddings of `corpus` in corpus order, from the cache when possible."""
    use_cache = cache and cache_enabled()
    key = cache_key(encoder.fingerprint(), corpus.fingerprint()) if use_cache else ""
    if use_cache:
        cached = load_cached(key)
        if cached is not None:
            return cached
    embeddings = encoder.encode_documents(corpus.texts(), show_progress=show_progress)
    if use_cache:
        meta = {"model": encoder.model_id, "documents": len(corpus), "corpus": str(corpus.path or "")}
        return store(key, embeddings, meta)
    return embeddings
