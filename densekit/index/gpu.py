"""GPU placement for FAISS indexes, with an announced CPU fallback.

faiss-gpu (the `gpu` extra) exposes `faiss.get_num_gpus()` and `StandardGpuResources`; faiss-cpu has
neither or reports zero GPUs. FAISS GPU search is limited to k <= 2048 (and nprobe <= 2048):
:func:`gpu_k_limit` tells callers, which then search on a CPU copy for larger k.
"""

from __future__ import annotations

import faiss

from densekit.errors import DensekitError
from densekit.progress import announce

GPU_MAX_K = 2048


def gpu_count() -> int:
    """Number of GPUs FAISS can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def gpu_k_limit() -> int:
    return GPU_MAX_K


def place(index: faiss.Index, device: str, shard: bool = False, float16: bool = False) -> tuple[faiss.Index, str]:
    """Move `index` to `device` ("cpu", "gpu", "gpu:N", "auto"); return the index and where it lives.

    "auto" uses every GPU when FAISS sees one and announces the CPU fallback otherwise. Asking for
    "gpu" explicitly without one is an error, not a fallback.
    """
    if device == "cpu":
        return index, "cpu"
    n = gpu_count()
    if n == 0:
        if device == "auto":
            announce("no GPU visible to FAISS (faiss-cpu or no CUDA device): the index stays on the CPU")
            return index, "cpu"
        raise DensekitError(f"device {device!r} asked for, but FAISS sees no GPU (install the `gpu` extra)")
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    options.useFloat16 = float16
    if device.startswith("gpu:"):
        gpu_id = int(device.split(":", 1)[1])
        if gpu_id >= n:
            raise DensekitError(f"GPU {gpu_id} requested but FAISS sees {n}")
        resources = faiss.StandardGpuResources()
        single = faiss.GpuClonerOptions()
        single.useFloat16 = float16
        return faiss.index_cpu_to_gpu(resources, gpu_id, index, single), device
    return faiss.index_cpu_to_all_gpus(index, co=options, ngpu=n), f"gpu x{n}"


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a (possibly GPU) index; the index itself when it already is on the CPU."""
    if gpu_count() == 0:
        return index
    try:
        return faiss.index_gpu_to_cpu(index)
    except (RuntimeError, AttributeError):
        return index
