"""Corpora larger than memory: encode in shards to `.npy`, resume after an interruption, build an index
shard by shard, and split the encoding across torchrun processes.

A shard directory holds::

    plan.json               model fingerprint, corpus fingerprint, document count, shard size, dim
    shard-00000.npy         float32 embeddings of documents [0, shard_size)
    shard-00000.json        the shard's document ids, row count and the sha256 of its .npy; written
    ...                     last, so a shard without it is unfinished and is encoded again

Each shard's `.npy` and `.json` are written atomically (beside, then renamed), so an interrupted run
leaves finished shards and nothing half-written; running the same command again skips the finished
shards. A plan that differs (another model, corpus or shard size) is refused instead of mixing
embeddings. Under torchrun, rank r of w encodes shards r, r + w, r + 2w, ... into the same directory
(a shared file system), waits for the others, and rank 0 merges the shards into one index: the
embeddings are the same as one process would write, so is the index. Joining the torchrun group and
the barrier are :mod:`densekit.distributed`'s.

Building (:func:`build_from_shards`) draws the training sample across shards with the same seeded
row choice as :meth:`DenseIndex.build`, trains once, then adds the shards one after the other,
reading each through a memory map: the corpus embeddings never need to fit in memory, and the index
equals the one built from the concatenated array.

Example::

    encode_shards(Encoder("all-MiniLM-L6-v2"), corpus, "scifact.shards", shard_size=100_000)
    index = build_from_shards("scifact.shards", factory="ivf-pq", model=encoder.describe())
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from densekit.data import Corpus
from densekit.errors import DensekitError, IntegrityError
from densekit.faults import fault_point
from densekit.index.dense import DenseIndex, sample_rows
from densekit.io import atomic_file, sha256_file, write_json
from densekit.progress import announce, progress_bar

PLAN_FILE = "plan.json"
DEFAULT_SHARD_SIZE = 100_000


@dataclass(frozen=True)
class ShardPlan:
    """What a shard directory holds: which model over which corpus, cut into shards of what size."""

    model: str
    corpus: str
    documents: int
    shard_size: int
    dim: int
    model_info: dict = field(default_factory=dict, compare=False)  # what an index manifest records

    @property
    def shards(self) -> int:
        return -(-self.documents // self.shard_size)

    def rows(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.documents, (shard + 1) * self.shard_size))


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def read_plan(directory: str | Path) -> ShardPlan:
    path = Path(directory) / PLAN_FILE
    if not path.is_file():
        raise DensekitError(f"{path}: missing; {directory} is not a shard directory (see `densekit index encode`)")
    try:
        return ShardPlan(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise IntegrityError(f"{path}: not a shard plan ({exc})") from None


def _start_plan(directory: Path, plan: ShardPlan) -> None:
    """Write the plan, or check that an existing directory was started with the same one."""
    path = directory / PLAN_FILE
    if path.is_file():
        existing = read_plan(directory)
        if existing != plan:
            changed = [k for k in asdict(plan) if k != "model_info" and getattr(plan, k) != getattr(existing, k)]
            raise DensekitError(
                f"{directory} holds shards of another plan ({', '.join(changed)} differ); "
                "use a new directory or delete this one"
            )
        return
    directory.mkdir(parents=True, exist_ok=True)
    write_json(path, asdict(plan))


def finished_shards(directory: str | Path, plan: ShardPlan | None = None) -> set[int]:
    """Shard numbers whose ids file exists (it is written after the embeddings, so they are complete)."""
    directory = Path(directory)
    plan = plan or read_plan(directory)
    return {s for s in range(plan.shards) if (directory / f"{shard_name(s)}.json").is_file()}


def _write_shard(directory: Path, shard: int, ids: list[str], embeddings: np.ndarray) -> None:
    name = shard_name(shard)
    with atomic_file(directory / f"{name}.npy", "wb") as handle:
        np.save(handle, np.ascontiguousarray(embeddings, dtype=np.float32))
    digest = sha256_file(directory / f"{name}.npy")
    write_json(directory / f"{name}.json", {"ids": ids, "rows": len(ids), "sha256": digest})


def encode_shards(
    encoder,
    corpus: Corpus,
    directory: str | Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    rank: int = 0,
    world_size: int = 1,
    show_progress: bool = True,
) -> ShardPlan:
    """Encode `corpus` with `encoder` into shards of `shard_size` documents under `directory`.

    Finished shards are skipped (resume). With `world_size` > 1 this process encodes only the shards
    whose number is `rank` modulo `world_size`. Returns the plan.
    """
    if shard_size <= 0:
        raise DensekitError(f"shard size must be positive, got {shard_size}")
    if len(corpus) == 0:
        raise DensekitError("cannot encode an empty corpus")
    if not 0 <= rank < world_size:
        raise DensekitError(f"rank {rank} outside a world of {world_size} processes")
    directory = Path(directory)
    plan = ShardPlan(
        encoder.fingerprint(), corpus.fingerprint(), len(corpus), shard_size, int(encoder.dim), encoder.describe()
    )
    _start_plan(directory, plan)
    mine = [s for s in range(plan.shards) if s % world_size == rank]
    done = finished_shards(directory, plan)
    todo = [s for s in mine if s not in done]
    if len(todo) < len(mine):
        announce(f"{directory}: {len(mine) - len(todo)} of {len(mine)} shard(s) already encoded; resuming")
    texts = corpus.texts()
    bar = (
        progress_bar("encoding shards", total=sum(len(plan.rows(s)) for s in todo), unit="doc")
        if show_progress
        else None
    )
    for shard in todo:
        rows = plan.rows(shard)
        embeddings = encoder.encode_documents(texts[rows.start : rows.stop], show_progress=False)
        _write_shard(directory, shard, corpus.ids[rows.start : rows.stop], embeddings)
        fault_point("shard-written")
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return plan


def iter_shards(directory: str | Path, verify: bool = True) -> Iterator[tuple[list[str], np.ndarray]]:
    """`(ids, embeddings)` of each shard in order, the embeddings memory-mapped read-only.

    Every shard must be finished; with `verify` each `.npy` is checked against its sha256.
    """
    directory = Path(directory)
    plan = read_plan(directory)
    missing = sorted(set(range(plan.shards)) - finished_shards(directory, plan))
    if missing:
        raise DensekitError(
            f"{directory}: {len(missing)} of {plan.shards} shard(s) not encoded yet "
            f"(first: {shard_name(missing[0])}); run the encoding again to finish them"
        )
    for shard in range(plan.shards):
        name = shard_name(shard)
        meta = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
        path = directory / f"{name}.npy"
        if verify and sha256_file(path) != meta["sha256"]:
            raise IntegrityError(f"{path}: sha256 differs from {name}.json (the file was altered or truncated)")
        embeddings = np.load(path, mmap_mode="r")
        if embeddings.shape != (meta["rows"], plan.dim) or len(meta["ids"]) != meta["rows"]:
            raise IntegrityError(f"{path}: shape {embeddings.shape}, expected ({meta['rows']}, {plan.dim})")
        yield meta["ids"], embeddings


class ShardedEmbeddings:
    """The shards of a directory seen as one (n, dim) array for row gathers (training samples)."""

    def __init__(self, directory: str | Path, verify: bool = True) -> None:
        self.plan = read_plan(directory)
        self.parts = list(iter_shards(directory, verify=verify))

    def __len__(self) -> int:
        return self.plan.documents

    def ids(self) -> list[str]:
        return [doc_id for ids, _ in self.parts for doc_id in ids]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.plan.documents, self.plan.dim)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """Rows by ascending row number (what :meth:`DenseIndex.search_reranked` asks for)."""
        return self.take(np.asarray(rows, dtype=np.int64))

    def take(self, rows: np.ndarray | None) -> np.ndarray:
        """Rows in ascending order (all rows when None), gathered shard by shard."""
        if rows is None:
            return np.concatenate([np.asarray(part) for _, part in self.parts])
        size = self.plan.shard_size
        return np.concatenate(
            [np.asarray(self.parts[s][1][rows[rows // size == s] - s * size]) for s in range(self.plan.shards)]
        )


def open_vectors(path: str | Path):
    """Full-precision vectors for exact re-ranking, memory-mapped: a `.npy` file or a shard directory."""
    path = Path(path)
    if path.is_dir():
        return ShardedEmbeddings(path)
    if path.suffix != ".npy" or not path.is_file():
        raise DensekitError(f"{path}: expected a .npy file of embeddings or a shard directory")
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as exc:
        raise IntegrityError(f"{path}: not a readable .npy array ({exc})") from None


def build_from_shards(
    directory: str | Path,
    factory: str = "Flat",
    metric: str = "ip",
    model: dict | None = None,
    device: str = "cpu",
    train_sample: int | None = None,
    seed: int = 0,
    search_params: dict | None = None,
    shard: bool = False,
    float16: bool = False,
    verify: bool = True,
    show_progress: bool = False,
    rescore_multiplier: int | None = None,
) -> DenseIndex:
    """A :class:`DenseIndex` over every shard: train once on a seeded sample, then add shard by shard.

    With `rescore_multiplier`, the index re-scores its top ``multiplier * k`` against the shards (and
    saving it keeps them as one vectors.npy; see :mod:`densekit.index.exact_rerank`).

    `model` (what the manifest records) defaults to the encoder the shards were written with.
    Gives the same index as :meth:`DenseIndex.build` over the concatenated embeddings with the same
    arguments.
    """
    shards = ShardedEmbeddings(directory, verify=verify)
    model = model if model is not None else shards.plan.model_info
    index = DenseIndex.create(shards.plan.dim, len(shards), factory, metric, model, train_sample, search_params)
    index.to_device(device, shard=shard, float16=float16)
    if index.needs_training:
        index.train(shards.take(sample_rows(len(shards), index.train_sample, seed)))
    bar = progress_bar("adding shards", total=len(shards), unit="vec") if show_progress else None
    for ids, embeddings in shards.parts:
        index.add_blocks(embeddings, list(ids))
        if bar is not None:
            bar.update(len(ids))
    if bar is not None:
        bar.close()
    if rescore_multiplier is not None:
        index.use_reranking(shards, multiplier=rescore_multiplier)
    return index
