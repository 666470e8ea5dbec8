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
ivf-pqr    ``IVF1024,PQ48+128``            IVF-PQ with a residual PQ refinement held in memory
                                           (FAISS IndexIVFPQR, Jegou et al., ICASSP 2011): 184 B per
                                           vector, 0.12 of Flat; unit vectors only (see below)
hnsw       ``HNSW32``                      graph index (Malkov & Yashunin, TPAMI 2018), no training
sq8        ``SQ8``                         exhaustive, 8-bit scalar quantisation (1/4 of Flat)
fp16       ``SQfp16``                      exhaustive, float16 storage (1/2 of Flat)
int8       ``SQ8``                         int8 embedding quantisation: sq8 (8-bit codes over each
                                           dimension's trained range), meant with rescoring
binary     ``BFlat``                       sign bits in a FAISS binary index, Hamming search (1/32 of
                                           Flat; index/binary.py), meant with rescoring
binary-    ``BHNSW32``                     the sign bits in a graph (IndexBinaryHNSW), efSearch
hnsw
========== =============================== ==========================================================

The number of inverted lists follows FAISS's guideline of O(sqrt(n)) lists (the nearest power of two,
16 ... 65536), and the default ``nprobe`` visits 1/16 of them (at least 8): good recall on
clustered embeddings at a few per cent of the exhaustive cost. IVF training draws ``64 * nlist``
vectors (FAISS asks for 39 per centroid; more barely changes the centroids), at least 65,536 for PQ
codebooks, never more than the corpus.

FAISS implements IVFPQR for L2 only. On unit-length vectors ``|q - x|^2 = |q|^2 + 1 - 2 q.x``, so L2
ranks exactly like the inner product (cosine); :class:`~densekit.index.dense.DenseIndex` builds ivf-pqr
with the L2 metric, refuses vectors that are not unit length, and turns distances back into inner
products, so callers see the same scores as from any other ``ip`` index. ``k_factor`` (default 16)
is how many times k candidates the refinement re-scores.

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
from densekit.index.binary import is_binary

PRESETS = ("flat", "ivf-flat", "ivf-pq", "ivf-pqr", "hnsw", "sq8", "fp16", "int8", "binary", "binary-hnsw")
SEARCH_PARAMS = ("nprobe", "efSearch", "k_factor")
PQR_K_FACTOR = 16
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
    0.986 on the 1M set, and the ivf-pqr preset (:func:`pqr_subquantizers`) 0.904 without one in
    0.121 of Flat's memory (benchmarks/RESULTS.md, "Indexing at scale").
    """
    m = bytes_per_vector or max(1, dim // 4)
    while dim % m:
        m -= 1
    return m


def pqr_subquantizers(dim: int) -> tuple[int, int]:
    """(first-stage, refinement) PQ sizes for ivf-pqr: at most 1/8 of Flat's memory in all.

    Flat holds 4*dim bytes per vector; 1/8 of it is dim/2 bytes, of which the inverted lists' 8-byte
    ids take 8. The refinement gets the larger share (about dim/3 bytes: it decides the final
    order); the first stage, which only has to bring the true neighbours into the k_factor * k
    candidates, gets the rest. Both are divisors of `dim`. For 384-d: 48 + 128 = 176 bytes of codes;
    on 1M synthetic clustered vectors, recall@10 against Flat 0.904 at 0.121 of Flat's memory
    (0.717 for ivf-pq's 96 bytes, 0.878 for 176 bytes in one PQ after PCA).
    """
    refine = pq_subquantizers(dim, max(1, dim // 3))
    first = pq_subquantizers(dim, max(1, dim // 2 - 8 - refine))
    return first, refine


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
    elif name == "ivf-pqr":
        first, refine = pqr_subquantizers(dim)
        factory = f"IVF{lists},PQ{first}+{refine}"
    elif name == "hnsw":
        factory = f"HNSW{HNSW_M}"
    elif name in ("sq8", "int8"):
        factory = "SQ8"
    elif name == "binary":
        factory = "BFlat"
    elif name == "binary-hnsw":
        factory = f"BHNSW{HNSW_M}"
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


def is_pqr(factory: str) -> bool:
    """Whether `factory` makes an IndexIVFPQR (``IVF...,PQm+r``), which FAISS offers for L2 only."""
    return re.search(r"IVF\d+.*,PQ\d+\+\d+", factory) is not None


def needs_training(factory: str, dim: int) -> bool:
    """Whether an index made from `factory` must be trained (asks FAISS: an empty index is cheap)."""
    if is_binary(factory):
        return False
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
        return {"nprobe": default_nprobe(nlist), **({"k_factor": PQR_K_FACTOR} if is_pqr(factory) else {})}
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
