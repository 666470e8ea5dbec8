"""GPU placement for FAISS indexes (faiss-gpu, the `gpu` extra), with announced CPU fallbacks.

Devices are written ``cpu``, ``gpu`` (every GPU FAISS sees), ``gpu:N`` (one GPU), ``gpu:0,2`` (a
subset) or ``auto`` (every GPU when there is one, else the CPU, announced). On several GPUs an index
is either *replicated* (each GPU holds all vectors and serves part of the queries: more QPS) or
*sharded* (each GPU holds 1/n of the vectors: n times the capacity), as FAISS's
``GpuMultipleClonerOptions.shard`` chooses. ``float16`` stores Flat / IVF-Flat vectors and IVF-PQ
lookup tables in half precision (half the GPU memory; IVF-PQ with many sub-quantizers needs it).

FAISS GPU can hold Flat, IVF-Flat, IVF-SQ and IVF-PQ (with or without an OPQ/PCA pre-transform).
Other indexes (HNSW, flat SQ8/fp16, flat PQ) stay on the CPU, announced. FAISS GPU search returns
at most k = 2048 neighbours and visits at most nprobe = 2048 lists: :func:`needs_cpu_search` tells a
caller to search a CPU copy beyond that (announced by the caller).

A StandardGpuResources object per GPU is created once and kept for the process: it owns the
temporary memory pool, and an index placed with it must not outlive it.
"""

from __future__ import annotations

import faiss

from densekit.errors import DensekitError
from densekit.progress import announce

GPU_MAX_K = 2048
GPU_MAX_NPROBE = 2048
GPU_CAPABLE = ("IndexFlat", "IndexFlatIP", "IndexFlatL2", "IndexIVFFlat", "IndexIVFPQ", "IndexIVFScalarQuantizer")

_resources: dict[int, object] = {}


def gpu_count() -> int:
    """Number of GPUs FAISS can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def parse_device(device: str) -> list[int] | None:
    """GPU ids a device string names (None for "cpu"); "auto" and "gpu" name every visible GPU."""
    device = device.strip().lower()
    if device == "cpu":
        return None
    n = gpu_count()
    if device in ("gpu", "auto"):
        return list(range(n))
    if device.startswith("gpu:"):
        try:
            ids = [int(part) for part in device[4:].split(",") if part.strip()]
        except ValueError:
            raise DensekitError(f"bad device {device!r}; expected cpu, gpu, gpu:N, gpu:N,M or auto") from None
        for gpu_id in ids:
            if gpu_id < 0 or (n > 0 and gpu_id >= n):
                raise DensekitError(f"GPU {gpu_id} requested but FAISS sees {n} GPU(s)")
        return ids
    raise DensekitError(f"bad device {device!r}; expected cpu, gpu, gpu:N, gpu:N,M or auto")


def base_index(index: faiss.Index) -> faiss.Index:
    """The index under any pre-transform (OPQ, PCA), downcast to its concrete class."""
    if not isinstance(index, faiss.Index):  # index/binary.py's BinaryCodes: CPU only, no transform
        return index
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def gpu_capable(index: faiss.Index) -> bool:
    """Whether faiss-gpu can hold this index type."""
    return type(base_index(index)).__name__ in GPU_CAPABLE


def is_on_gpu(index: faiss.Index) -> bool:
    if not isinstance(index, faiss.Index):
        return False
    name = type(faiss.downcast_index(index)).__name__
    if name.startswith("Gpu") or name in ("IndexShards", "IndexReplicas"):
        return True
    return isinstance(index, faiss.IndexPreTransform) and is_on_gpu(index.index)


def _gpu_resources(gpu_id: int):
    if gpu_id not in _resources:
        _resources[gpu_id] = faiss.StandardGpuResources()
    return _resources[gpu_id]


def place(index: faiss.Index, device: str, shard: bool = False, float16: bool = False) -> tuple[faiss.Index, str]:
    """Move `index` to `device` (see module docstring); return the index and where it now lives.

    "auto" without a GPU, or an index type faiss-gpu cannot hold, stays on the CPU with an
    announcement. Asking for "gpu"/"gpu:N" explicitly when FAISS sees no GPU is an error.
    """
    gpus = parse_device(device)
    if gpus is None:
        return index, "cpu"
    if not gpus:
        if device.strip().lower() == "auto":
            announce("no GPU visible to FAISS (faiss-cpu or no CUDA device): the index stays on the CPU")
            return index, "cpu"
        raise DensekitError(f"device {device!r} asked for, but FAISS sees no GPU (install the `gpu` extra)")
    if not gpu_capable(index):
        announce(f"faiss-gpu cannot hold a {type(base_index(index)).__name__}: the index stays on the CPU")
        return index, "cpu"
    try:
        if len(gpus) == 1:
            options = faiss.GpuClonerOptions()
            options.useFloat16 = float16
            placed = faiss.index_cpu_to_gpu(_gpu_resources(gpus[0]), gpus[0], index, options)
            return placed, f"gpu:{gpus[0]}"
        options = faiss.GpuMultipleClonerOptions()
        options.shard = shard
        options.useFloat16 = float16
        resources = [_gpu_resources(g) for g in gpus]
        placed = faiss.index_cpu_to_gpu_multiple_py(resources, index, co=options, gpus=gpus)
    except RuntimeError as exc:  # e.g. IVF-PQ with many sub-quantizers needs float16 lookup tables
        hint = "" if float16 else " (IVF-PQ with more than 48 bytes per vector needs --float16)"
        raise DensekitError(
            f"faiss-gpu cannot place this {type(base_index(index)).__name__}: {str(exc).splitlines()[-1]}{hint}"
        ) from None
    mode = "sharded" if shard else "replicated"
    return placed, f"gpu:{','.join(map(str, gpus))} ({mode})"


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU (or multi-GPU) index; the index itself when it already is on the CPU."""
    if gpu_count() == 0 or not is_on_gpu(index):
        return index
    return faiss.index_gpu_to_cpu(index)


def needs_cpu_search(k: int, search_params: dict) -> str | None:
    """Why a GPU index cannot serve this search (k or nprobe beyond FAISS's GPU limits), or None."""
    if k > GPU_MAX_K:
        return f"k={k} exceeds FAISS's GPU limit of {GPU_MAX_K}"
    nprobe = search_params.get("nprobe", 0)
    if nprobe > GPU_MAX_NPROBE:
        return f"nprobe={nprobe} exceeds FAISS's GPU limit of {GPU_MAX_NPROBE}"
    return None


def parameter_space(index: faiss.Index) -> faiss.ParameterSpace:
    """The parameter setter for `index`: GpuParameterSpace reaches GPU IVF's nprobe."""
    if is_on_gpu(index) and hasattr(faiss, "GpuParameterSpace"):
        return faiss.GpuParameterSpace()
    return faiss.ParameterSpace()
