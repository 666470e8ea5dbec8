"""Synthetic embeddings that behave like sentence embeddings, for index benchmarks and tests.

Uniform noise on the sphere is the worst case for every approximate index (all distances are
alike) and tells nothing about real corpora. Real embeddings are clustered by topic and have a fast
decaying spectrum. :func:`clustered_vectors` draws each vector as a random cluster centre plus
Gaussian noise whose variance decays as a power law over a random orthonormal basis, then
L2-normalises it, block by block so a million 384-d vectors never need more than the output array.
"""

from __future__ import annotations

import numpy as np


def _geometry(dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = (1.0 + np.arange(dim)) ** -0.5
    spectrum *= 1.2 / np.linalg.norm(spectrum)  # noise norm ~1.2 (centre norm 1): cos(x, centre) ~ 0.6
    return centers, basis.astype(np.float32), spectrum.astype(np.float32)


def clustered_vectors(
    n: int, dim: int = 384, clusters: int = 1000, seed: int = 0, stream: int = 0, block: int = 65536
) -> np.ndarray:
    """`n` unit vectors (float32, (n, dim)) from `clusters` clusters of a geometry fixed by `seed`.

    Different `stream` values draw different points from the same geometry: use stream 0 for the
    corpus and stream 1 for queries.
    """
    centers, basis, spectrum = _geometry(dim, clusters, seed)
    rng = np.random.default_rng([seed, stream + 1])
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        size = min(block, n - start)
        noise = rng.standard_normal((size, dim), dtype=np.float32) * spectrum
        vectors = centers[rng.integers(clusters, size=size)] + noise @ basis
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        out[start : start + size] = vectors
    return out
