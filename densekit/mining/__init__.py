"""Hard-negative mining: candidate sources -> positive-aware filters -> samplers -> negatives file.

Follows NV-Retriever (arXiv 2407.15831) for the positive-aware filters (default TopK-PercPos 0.95,
four negatives, candidate depth 100) and GISTEmbed (arXiv 2402.16829) for the guide filter.

Modules: :mod:`~densekit.mining.sources` (teacher/guide scoring, dense and Retriever sources, fusion),
:mod:`~densekit.mining.filters`, :mod:`~densekit.mining.samplers`, :mod:`~densekit.mining.miner`
(the driver, resumable), :mod:`~densekit.mining.output` (output paths), :mod:`~densekit.mining.stats`,
:mod:`~densekit.mining.teachers` (a cross-encoder scorer: stored ``ce_score``, the ``ce`` filter, votes).

The negatives file is JSON lines, one query per line; its schema (what is required, which scores)
and its one reader, :func:`read_negatives` (records as :class:`~densekit.negatives.NegativesRecord`),
live in :mod:`densekit.negatives`, shared with the trainer. Negatives are in rank order; a query may
have fewer than asked (counted in the statistics). Beside `<out>`: `<out>.config.json` (models,
sources, filters, sampler, seed, densekit version) and `<out>.stats.json` (candidates seen, removed
per filter, queries short of negatives), both written atomically; the negatives file itself appears
(by rename) only when mining finished.
"""

from densekit.mining.filters import (
    AbsFilter,
    Candidates,
    CrossEncoderFilter,
    ExcludePositives,
    GuideFilter,
    MarginPosFilter,
    PercPosFilter,
    ShiftFilter,
    VoteFilter,
    apply_filters,
)
from densekit.mining.miner import HardNegativeMiner, MiningResult
from densekit.mining.output import config_path, read_negatives, stats_path
from densekit.mining.samplers import (
    ScoreWeightedSampler,
    TopOnePlusSampled,
    TopSampler,
    UniformSampler,
    query_rng,
)
from densekit.mining.sources import DenseScorer, DenseSource, RetrieverSource, fuse
from densekit.mining.stats import MiningStats
from densekit.mining.teachers import CrossEncoderScorer

__all__ = [
    "AbsFilter",
    "Candidates",
    "CrossEncoderFilter",
    "CrossEncoderScorer",
    "DenseScorer",
    "DenseSource",
    "ExcludePositives",
    "GuideFilter",
    "HardNegativeMiner",
    "MarginPosFilter",
    "MiningResult",
    "MiningStats",
    "PercPosFilter",
    "RetrieverSource",
    "ScoreWeightedSampler",
    "ShiftFilter",
    "TopOnePlusSampled",
    "TopSampler",
    "UniformSampler",
    "VoteFilter",
    "apply_filters",
    "config_path",
    "fuse",
    "query_rng",
    "read_negatives",
    "stats_path",
]
