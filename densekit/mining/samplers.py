"""Samplers: pick `n` negatives from a query's filtered candidates, seeded and reproducible.

Each sampler takes the surviving candidates' teacher scores in candidate-list order (rank 1 first),
the number wanted and a numpy `Generator`, and returns the positions it chose, in ascending order
(so negatives are always written best rank first). When fewer than `n` candidates survive, every
sampler returns all of them.

==========================  ====================================================================
``TopSampler``              the first `n` (NV-Retriever's "top-k"; sentence-transformers' "top")
``UniformSampler``          `n` uniformly at random, without replacement
``ScoreWeightedSampler(t)`` `n` without replacement with probability softmax(score / t)
``TopOnePlusSampled``       the first one, plus `n - 1` uniformly from the rest
==========================  ====================================================================

:func:`query_rng` derives each query's generator from the run's seed and the query id alone, so
a query's sample does not depend on which other queries are mined, on chunking, or on resuming.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

import numpy as np

from densekit.errors import DensekitError


def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """A generator that depends only on `seed` and `query_id` (sha256, not Python's salted hash)."""
    if seed < 0:
        raise DensekitError(f"seed must be >= 0, got {seed}")
    digest = int.from_bytes(hashlib.sha256(query_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


class Sampler(Protocol):
    def sample(self, scores: np.ndarray, n: int, rng: np.random.Generator | None) -> np.ndarray: ...

    def describe(self) -> dict: ...


class _Described:
    kind: ClassVar[str]
    #: whether `sample` reads its generator; the miner builds a query's generator only when it does
    random: ClassVar[bool] = True

    def describe(self) -> dict:
        return {"name": self.kind, **asdict(self)}  # type: ignore[call-overload]


def _check(n: int) -> None:
    if n < 1:
        raise DensekitError(f"the number of negatives must be >= 1, got {n}")


@dataclass
class TopSampler(_Described):
    """The first `n` candidates in candidate-list order."""

    kind: ClassVar[str] = "top"
    random: ClassVar[bool] = False

    def sample(self, scores: np.ndarray, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        _check(n)
        return np.arange(min(n, len(scores)))


@dataclass
class UniformSampler(_Described):
    """`n` candidates uniformly at random without replacement."""

    kind: ClassVar[str] = "uniform"

    def sample(self, scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        _check(n)
        if len(scores) <= n:
            return np.arange(len(scores))
        return np.sort(rng.choice(len(scores), size=n, replace=False))


@dataclass
class ScoreWeightedSampler(_Described):
    """`n` candidates without replacement, each draw with probability softmax(score / temperature).

    Implemented with the Gumbel-top-k trick (top `n` of `score / t + Gumbel noise`), which is exactly
    successive sampling without replacement and stays stable for any temperature or score sign.
    """

    temperature: float = 0.05
    kind: ClassVar[str] = "weighted"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise DensekitError(f"temperature must be > 0, got {self.temperature}")

    def sample(self, scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        _check(n)
        if len(scores) <= n:
            return np.arange(len(scores))
        keys = np.asarray(scores, dtype=np.float64) / self.temperature + rng.gumbel(size=len(scores))
        chosen = np.argpartition(-keys, n - 1)[:n]
        return np.sort(chosen)


@dataclass
class TopOnePlusSampled(_Described):
    """The top candidate, plus `n - 1` drawn uniformly without replacement from the others."""

    kind: ClassVar[str] = "top1+sampled"

    def sample(self, scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        _check(n)
        if len(scores) <= n:
            return np.arange(len(scores))
        rest = 1 + rng.choice(len(scores) - 1, size=n - 1, replace=False)
        return np.concatenate([[0], np.sort(rest)]).astype(np.int64)


SAMPLERS: dict[str, type] = {s.kind: s for s in (TopSampler, UniformSampler, ScoreWeightedSampler, TopOnePlusSampled)}


def sampler_from_options(name: str, temperature: float | None = None) -> Sampler:
    """The sampler called `name`; `temperature` only for "weighted" (default 0.05)."""
    if name not in SAMPLERS:
        raise DensekitError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    if temperature is not None and name != "weighted":
        raise DensekitError(f"--temperature applies to the 'weighted' sampler, not {name!r}")
    if name == "weighted":
        return ScoreWeightedSampler(0.05 if temperature is None else temperature)
    return SAMPLERS[name]()
