"""Index presets: named FAISS factory strings sized to the corpus, with their search-time defaults.

A preset turns ``(name, vector count, dimension)`` into a FAISS factory string, the number of
training vectors to draw, and search parameters (``nprobe`` for IVF, ``efSearch`` for HNSW) that the
index manifest stores and a search may override. Any raw FAISS factory string is accepted too.

========== =============================== ==========================================================
preset     factory string (n=1M, d=384)    what it is
========== =============================== ==========================================================
flat       ``Flat``                        exact inner product / L2 (the reference)
ivf-flat   ``IVF1024,Flat``                inverted file, full vectors (Jegou et al., TPAMI 2011)
ivf-pq     ``OPQ96,IVF1024,PQ96``          OPQ rotation + IVF + product quantisation, 8 bits per
                                           sub-vector (Ge et al., CVPR 2013; Jegou et al. 2011)
hnsw       ``HNSW32``                      graph index (Malkov & Yashunin, TPAMI 2018), no training
sq8        ``SQ8``                         exhaustive, 8-bit scalar quantisation (1/4 of Flat)
fp16       ``SQfp16``                      exhaustive, float16 storage (1/2 of Flat)
========== =============================== ==========================================================

The number of inverted lists follows FAISS's guideline of O(sqrt(n)) lists (the nearest power of two,
16 ... 65536), and the default ``nprobe`` visits 1/16 of them (at least 8): good recall on
clustered embeddings at a few per cent of the exhaustive cost. IVF training draws ``64 * nlist``
vectors (FAISS asks for 39 per centroid; more barely changes the centroids), at least 65,536 for PQ
codebooks, never more than the corpus.

Example::

    spec = resolve("ivf-pq", n=1_000_000, dim=384)
    spec.factory, spec.train_sample, spec.search_params   # 'OPQ96,IVF1024,PQ96', 65536, {'nprobe': 64}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import faiss

from densekit.errors import DensekitError

PRESETS = ("flat", "ivf-flat", "ivf-pq", "hnsw", "sq8", "fp16")
SEARCH_PARAMS = ("nprobe", "efSearch")
HNSW_M = 32
HNSW_EF_SEARCH = 128
HNSW_EF_CONSTRUCTION = 40


@dataclass(frozen=True)
class IndexSpec:
    """A resolved index recipe: what to build, how many vectors to train on, how to search."""

    factory: str
    train_sample: int | None = None
    search_params: dict = field(default_factory=dict)
    preset: str | None = None


def ivf_lists(n: int) -> int:
    """Number of inverted lists for `n` vectors: the power of two nearest sqrt(n), in [16, 65536]."""
    if n <= 0:
        raise DensekitError(f"an index needs at least one vector, got {n}")
    return int(min(65536, max(16, 2 ** round(math.log2(math.sqrt(n))))))


def default_nprobe(nlist: int) -> int:
    return max(8, nlist // 16)


def pq_subquantizers(dim: int, bytes_per_vector: int | None = None) -> int:
    """PQ sub-quantizer count (= bytes per vector at 8 bits): dim/4 by default, a divisor of `dim`.

    Four dimensions per 8-bit sub-quantizer is 1/16 of Flat's code size. Alone it ranks coarsely
    (recall@10 against Flat 0.72 on 1M synthetic clustered 384-d vectors, 0.87 on SciFact MiniLM
    embeddings); with an exact re-rank of the top 100 from the memory-mapped vectors it reaches
    0.986 on the 1M set (benchmarks/RESULTS.md, "Indexing at scale").
    """
    m = bytes_per_vector or max(1, dim // 4)
    while dim % m:
        m -= 1
    return m


def resolve(
    spec: str,
    n: int,
    dim: int,
    train_sample: int | None = None,
    nlist: int | None = None,
    pq_bytes: int | None = None,
) -> IndexSpec:
    """Turn a preset name or a raw FAISS factory string into an :class:`IndexSpec` for `n` x `dim`.

    `train_sample` overrides the preset's training-sample size; `nlist` and `pq_bytes` override the
    IVF list count and PQ code size of the ivf-* presets. A raw factory string gets search defaults
    from what it contains (IVF -> nprobe, HNSW -> efSearch).
    """
    if train_sample is not None and train_sample <= 0:
        raise DensekitError(f"train sample must be positive, got {train_sample}")
    name = spec.strip().lower()
    if name not in PRESETS:
        factory = spec.strip()
        return IndexSpec(factory, _train_sample(factory, n, dim, train_sample), search_defaults(factory), None)
    lists = nlist or ivf_lists(n)
    if name == "flat":
        factory = "Flat"
    elif name == "ivf-flat":
        factory = f"IVF{lists},Flat"
    elif name == "ivf-pq":
        m = pq_subquantizers(dim, pq_bytes)
        factory = f"OPQ{m},IVF{lists},PQ{m}"
    elif name == "hnsw":
        factory = f"HNSW{HNSW_M}"
    elif name == "sq8":
        factory = "SQ8"
    else:
        factory = "SQfp16"
    return IndexSpec(factory, _train_sample(factory, n, dim, train_sample), search_defaults(factory), name)


def _train_sample(factory: str, n: int, dim: int, requested: int | None) -> int | None:
    default = default_train_sample(factory, n, dim)
    if default is None:  # nothing to train: a requested size would only mislead the manifest
        return None
    return min(n, requested) if requested is not None else default


def _ivf_nlist(factory: str) -> int | None:
    match = re.search(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else None


def needs_training(factory: str, dim: int) -> bool:
    """Whether an index made from `factory` must be trained (asks FAISS: an empty index is cheap)."""
    try:
        return not faiss.index_factory(dim, factory).is_trained
    except RuntimeError as exc:
        raise DensekitError(f"invalid FAISS factory string {factory!r}: {str(exc).splitlines()[0]}") from None


def default_train_sample(factory: str, n: int, dim: int) -> int | None:
    """Training vectors for `factory` over `n` vectors (None: the index needs no training)."""
    if not needs_training(factory, dim):
        return None
    want = 65536
    nlist = _ivf_nlist(factory)
    if nlist:
        want = max(want if "PQ" in factory else 0, 64 * nlist)
    return min(n, want)


def search_defaults(factory: str) -> dict:
    """Search parameters stored in the manifest for `factory`."""
    nlist = _ivf_nlist(factory)
    if nlist:
        return {"nprobe": default_nprobe(nlist)}
    if "HNSW" in factory:
        return {"efSearch": HNSW_EF_SEARCH}
    return {}


def check_search_params(params: dict) -> dict:
    """Validate user-given search parameters: known names, positive integers."""
    out = {}
    for name, value in params.items():
        if value is None:
            continue
        if name not in SEARCH_PARAMS:
            raise DensekitError(f"unknown search parameter {name!r}; expected one of {', '.join(SEARCH_PARAMS)}")
        if int(value) != value or value <= 0:
            raise DensekitError(f"search parameter {name} must be a positive integer, got {value!r}")
        out[name] = int(value)
    return out
