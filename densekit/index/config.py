"""`IndexBuildConfig`: how a FAISS index is built, shared by `DenseIndex.build` and `build_from_shards`.

The help text on each field is what `densekit index build/encode/from-shards` show for the option.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class IndexBuildConfig:
    """Index type, its training sample, default search parameters and FAISS placement while building."""

    factory: str = field(
        default="Flat",
        metadata={
            "help": "Index preset (flat, ivf-flat, ivf-pq, ivf-pqr, hnsw, sq8, fp16, int8, binary, binary-hnsw) "
            "or FAISS factory string, e.g. OPQ96,IVF1024,PQ96."
        },
    )
    metric: str = field(default="ip", metadata={"help": "ip (inner product; cosine on normalised vectors) or l2."})
    train_sample: int | None = field(
        default=None, metadata={"help": "Vectors drawn to train IVF/PQ/SQ (default: the preset's)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the training sample."})
    search_params: dict | None = field(
        default=None,
        metadata={"help": "Default search parameters stored in the manifest (nprobe, efSearch, k_factor)."},
    )
    rescore_multiplier: int | None = field(
        default=None,
        metadata={
            "help": "Keep the float32 vectors beside the index (vectors.npy, memory-mapped when searching) and "
            "re-score the top multiplier x k candidates exactly against them (for the binary and int8 presets)."
        },
    )
    device: str = field(default="cpu", metadata={"help": "Where FAISS builds: cpu, gpu, gpu:N, gpu:0,1, auto."})
    shard: bool = field(
        default=False, metadata={"help": "On several GPUs: split the vectors (capacity) or copy them (throughput)."}
    )
    float16: bool = field(default=False, metadata={"help": "GPU: half-precision vectors / PQ tables."})

    def options(self) -> dict:
        """As keyword arguments of :meth:`DenseIndex.build` / :func:`build_from_shards`."""
        return asdict(self)

    def validate(self) -> None:
        """What can be checked before any vector exists (so a mistake fails before encoding, not after)."""
        from densekit.errors import DensekitError
        from densekit.index.factory import check_search_params

        if not self.factory.strip():
            raise DensekitError("--factory is empty")
        if self.metric not in ("ip", "l2"):
            raise DensekitError(f"metric must be ip or l2, got {self.metric!r}")
        if self.train_sample is not None and self.train_sample <= 0:
            raise DensekitError(f"--train-sample must be positive, got {self.train_sample}")
        check_search_params(dict(self.search_params or {}))
        if self.rescore_multiplier is not None and self.rescore_multiplier <= 0:
            raise DensekitError(f"--rescore-multiplier must be positive, got {self.rescore_multiplier}")
