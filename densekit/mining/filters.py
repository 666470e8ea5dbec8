"""Positive-aware filters for hard-negative candidates.

NV-Retriever (arXiv 2407.15831) for the teacher filters, GISTEmbed (arXiv 2402.16829) for the guide.

A query's candidates arrive as :class:`Candidates`: document ids in candidate-list order with the
teacher's score of each (and the guide's, when a guide model is used; and any other teacher's, such
as a cross-encoder's or BM25's, by name in `extra_scores`), plus the query's labelled positives and
their scores. Every filter is a small dataclass whose :meth:`keep` returns a boolean
mask over the candidates it is given; :func:`apply_filters` runs them in order, each on what the
previous ones left, and counts what each removed.

Positive-aware thresholds are relative to the teacher's score of the query's positive; with several
positives the *lowest* one is used (the most conservative choice: a candidate scoring above the
weakest true positive is the likeliest false negative). All comparisons are strict ``>`` for the teacher
filters ("drop if score > threshold"), so a candidate tied with the threshold survives, and ``>=`` for the
GIST guide ("at or above the guide's query-positive score"), as in GISTEmbed.

Filters:

==================  ===============================================================================
``ExcludePositives``  labelled positives never become negatives (always applied first)
``ShiftFilter(n)``    drop the first ``n`` remaining candidates ("top-k shifted by N")
``AbsFilter(t)``      TopK-Abs: drop ``score > t``
``MarginPosFilter(m)`` TopK-MarginPos: drop ``score > pos - m``
``PercPosFilter(p)``  TopK-PercPos: drop ``score > pos - (1 - p) * |pos|``
``GuideFilter(m)``    GIST: drop ``guide_score >= guide_pos - m``
``CrossEncoderFilter(m)`` drop ``ce_score >= ce_pos - m`` (a cross-encoder as the guide)
``VoteFilter(k)``     drop when at least ``k`` teachers call the candidate a probable positive
==================  ===============================================================================

"Probable positive" is one definition per kind of teacher, the one its own filter uses: a dense
teacher or BM25 (scores of one model over the corpus) by TopK-PercPos, ``score > pos - (1 - p) * |pos|``
(p = ``--percentage``, 0.95); a guide or cross-encoder (a stronger judge of the pair) by GIST's
``score >= pos - margin``. BM25 scores only what it retrieved: it votes only when it retrieved the
candidate and every positive of the query (otherwise it abstains, counted as no vote).

PercPos is written with ``|pos|`` so that negative scores behave: NV-Retriever's ``score > p * pos`` puts
the threshold *above* a negative positive score (``0.95 * -0.2 = -0.19 > -0.2``), which would keep
candidates the teacher scores higher than the positive. ``pos - (1 - p) * |pos|`` equals ``p * pos`` for
``pos >= 0`` and stays below the positive otherwise. It is exactly sentence-transformers'
``relative_margin = 1 - p`` (``pos - |pos| * relative_margin``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import ClassVar, Protocol

import numpy as np

from densekit.errors import DensekitError


@dataclass
class Candidates:
    """One query's candidates in candidate-list order (rank 1 first) and its positives.

    `teacher_scores[i]` and `guide_scores[i]` belong to `doc_ids[i]`; `ranks[i]` is its 1-based rank in
    the candidate list. `positive_scores` / `positive_guide_scores` are aligned with `positive_ids`.
    """

    query_id: str
    doc_ids: list[str]
    teacher_scores: np.ndarray
    positive_ids: list[str]
    positive_scores: np.ndarray
    ranks: np.ndarray = field(default=None)  # type: ignore[assignment]
    guide_scores: np.ndarray | None = None
    positive_guide_scores: np.ndarray | None = None
    # other teachers by name ("ce", "bm25"): (candidate scores, positive scores); NaN = not scored
    extra_scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.teacher_scores = np.asarray(self.teacher_scores, dtype=np.float32)
        self.positive_scores = np.asarray(self.positive_scores, dtype=np.float32)
        if self.ranks is None:
            self.ranks = np.arange(1, len(self.doc_ids) + 1)
        self.ranks = np.asarray(self.ranks, dtype=np.int64)
        if self.guide_scores is not None:
            self.guide_scores = np.asarray(self.guide_scores, dtype=np.float32)
        if self.positive_guide_scores is not None:
            self.positive_guide_scores = np.asarray(self.positive_guide_scores, dtype=np.float32)
        n = len(self.doc_ids)
        if len(self.teacher_scores) != n or len(self.ranks) != n:
            raise DensekitError(f"query {self.query_id!r}: {n} candidates, {len(self.teacher_scores)} scores")
        if self.guide_scores is not None and len(self.guide_scores) != n:
            raise DensekitError(f"query {self.query_id!r}: {n} candidates, {len(self.guide_scores)} guide")
        if len(self.positive_scores) != len(self.positive_ids):
            raise DensekitError(f"query {self.query_id!r}: positives and their scores differ in length")
        for name, (scores, positive) in list(self.extra_scores.items()):
            scores, positive = np.asarray(scores, np.float32), np.asarray(positive, np.float32)
            if len(scores) != n or len(positive) != len(self.positive_ids):
                raise DensekitError(f"query {self.query_id!r}: {name} scores do not match candidates and positives")
            self.extra_scores[name] = (scores, positive)

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def min_positive_score(self) -> float:
        """The teacher's score of the weakest positive: the reference of every positive-aware filter."""
        if len(self.positive_scores) == 0:
            raise DensekitError(f"query {self.query_id!r} has no positive to compare with")
        return float(self.positive_scores.min())

    def subset(self, keep: np.ndarray) -> Candidates:
        """The candidates where `keep` is True, order and ranks preserved."""
        idx = np.flatnonzero(keep)
        doc_ids = self.doc_ids
        subset = object.__new__(Candidates)  # every array is already checked: skip __post_init__
        subset.__dict__.update(
            self.__dict__,
            doc_ids=[doc_ids[i] for i in idx.tolist()],
            teacher_scores=self.teacher_scores[idx],
            ranks=self.ranks[idx],
            guide_scores=None if self.guide_scores is None else self.guide_scores[idx],
            extra_scores={name: (scores[idx], positive) for name, (scores, positive) in self.extra_scores.items()},
        )
        return subset

    def scores_of(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(candidate scores, positive scores) of teacher `name`: teacher, guide, or an extra one."""
        if name == "teacher":
            return self.teacher_scores, self.positive_scores
        if name == "guide":
            if self.guide_scores is None or self.positive_guide_scores is None:
                raise DensekitError("guide scores are needed: give a guide model")
            return self.guide_scores, self.positive_guide_scores
        if name not in self.extra_scores:
            raise DensekitError(f"{name} scores are needed but no {name} teacher is configured")
        return self.extra_scores[name]


class CandidateFilter(Protocol):
    """`keep(candidates) -> bool mask` of those that survive; `label` names it in statistics."""

    @property
    def label(self) -> str: ...

    def keep(self, candidates: Candidates) -> np.ndarray: ...

    def describe(self) -> dict: ...


class _Described:
    kind: ClassVar[str]

    def describe(self) -> dict:
        return {"name": self.kind, **asdict(self)}  # type: ignore[call-overload]

    @cached_property
    def label(self) -> str:  # computed once: filters are not changed after construction
        params = ",".join(f"{v}" for v in asdict(self).values())  # type: ignore[call-overload]
        return f"{self.kind}({params})" if params else self.kind


@dataclass
class ExcludePositives(_Described):
    """Drop every labelled positive of the query. The miner always applies it first."""

    kind: ClassVar[str] = "positives"

    def keep(self, candidates: Candidates) -> np.ndarray:
        positives = set(candidates.positive_ids)
        return np.array([d not in positives for d in candidates.doc_ids], dtype=bool)


@dataclass
class ShiftFilter(_Described):
    """Top-k shifted by N: drop the first `n` candidates still present when this filter runs.

    Placed after `ExcludePositives` (the default), it skips the N best non-positive candidates, like
    sentence-transformers' `range_min`.
    """

    n: int
    kind: ClassVar[str] = "shift"

    def __post_init__(self) -> None:
        if self.n < 0:
            raise DensekitError(f"shift must be >= 0, got {self.n}")

    def keep(self, candidates: Candidates) -> np.ndarray:
        mask = np.ones(len(candidates), dtype=bool)
        mask[: self.n] = False
        return mask


@dataclass
class AbsFilter(_Described):
    """TopK-Abs: drop candidates the teacher scores above an absolute `threshold`."""

    threshold: float
    kind: ClassVar[str] = "abs"

    def keep(self, candidates: Candidates) -> np.ndarray:
        return ~(candidates.teacher_scores > np.float32(self.threshold))


@dataclass
class MarginPosFilter(_Described):
    """TopK-MarginPos: drop candidates scoring above `lowest positive - margin`."""

    margin: float
    kind: ClassVar[str] = "margin"

    def keep(self, candidates: Candidates) -> np.ndarray:
        threshold = candidates.min_positive_score - self.margin
        return ~(candidates.teacher_scores > threshold)


@dataclass
class PercPosFilter(_Described):
    """TopK-PercPos: drop candidates scoring above `pos - (1 - percentage) * |pos|` (lowest positive).

    For a non-negative `pos` that is NV-Retriever's `percentage * pos`; for a negative `pos` the
    threshold still lies below the positive (see the module docstring). NV-Retriever's best: 0.95.
    """

    percentage: float = 0.95
    kind: ClassVar[str] = "percpos"

    def __post_init__(self) -> None:
        if not 0.0 < self.percentage <= 1.0:
            raise DensekitError(f"percentage must be in (0, 1], got {self.percentage}")

    def threshold(self, positive: float) -> float:
        return positive - (1.0 - self.percentage) * abs(positive)

    def keep(self, candidates: Candidates) -> np.ndarray:
        return ~(candidates.teacher_scores > self.threshold(candidates.min_positive_score))


@dataclass
class GuideFilter(_Described):
    """GIST guide: drop candidates the guide scores at or above its own score of the (lowest) positive
    minus `margin` -- they are probable false negatives (GISTEmbed, arXiv 2402.16829)."""

    margin: float = 0.0
    kind: ClassVar[str] = "guide"

    def keep(self, candidates: Candidates) -> np.ndarray:
        if candidates.guide_scores is None or candidates.positive_guide_scores is None:
            raise DensekitError("the guide filter needs guide scores: give a guide model")
        if len(candidates.positive_guide_scores) == 0:
            raise DensekitError(f"query {candidates.query_id!r} has no positive to compare with")
        threshold = float(candidates.positive_guide_scores.min()) - self.margin
        return ~(candidates.guide_scores >= threshold)


def _lowest_positive(candidates: Candidates, scores: np.ndarray) -> float:
    if len(scores) == 0:
        raise DensekitError(f"query {candidates.query_id!r} has no positive to compare with")
    return float(scores.min())


@dataclass
class CrossEncoderFilter(_Described):
    """Drop candidates the cross-encoder scores at or above its score of the (lowest) positive minus
    `margin`: the GIST rule with a cross-encoder as the judge (its scores are logits, so `margin` is in
    logit units)."""

    margin: float = 0.0
    kind: ClassVar[str] = "ce"

    def keep(self, candidates: Candidates) -> np.ndarray:
        scores, positive = candidates.scores_of("ce")
        return ~(scores >= _lowest_positive(candidates, positive) - self.margin)


#: How each kind of teacher calls a candidate a probable positive (see the module docstring).
VOTE_RULES = {"teacher": "percpos", "bm25": "percpos", "guide": "gist", "ce": "gist"}


@dataclass
class VoteFilter(_Described):
    """Drop a candidate when at least `k` of the `voters` call it a probable positive.

    Voters: ``teacher`` (the dense miner), ``bm25``, ``guide``, ``ce``; each by its own rule (module
    docstring): PercPos with `percentage` for teacher and BM25, GIST with `guide_margin` / `ce_margin`
    for the guide and the cross-encoder. ``k = 1`` drops what any teacher doubts; ``k = len(voters)``
    only what all doubt.
    """

    k: int
    voters: tuple[str, ...] = ("teacher",)
    percentage: float = 0.95
    guide_margin: float = 0.0
    ce_margin: float = 0.0
    kind: ClassVar[str] = "vote"

    def __post_init__(self) -> None:
        self.voters = tuple(self.voters)
        unknown = [v for v in self.voters if v not in VOTE_RULES]
        if unknown:
            raise DensekitError(f"unknown voter {unknown[0]!r}; expected {', '.join(VOTE_RULES)}")
        if not 1 <= self.k <= len(self.voters):
            raise DensekitError(
                f"--vote-k must be between 1 and the {len(self.voters)} teachers that vote "
                f"({', '.join(self.voters)}), got {self.k}"
            )
        PercPosFilter(self.percentage)  # validates the percentage

    @property
    def label(self) -> str:
        return f"vote({self.k} of {'+'.join(self.voters)})"

    def describe(self) -> dict:
        return {**super().describe(), "voters": list(self.voters)}  # as JSON reads it back (resume compares)

    def votes(self, candidates: Candidates) -> dict[str, np.ndarray]:
        """Each voter's boolean "probable positive" mask over the candidates."""
        out = {}
        for voter in self.voters:
            scores, positive = candidates.scores_of(voter)
            if VOTE_RULES[voter] == "gist":
                margin = self.ce_margin if voter == "ce" else self.guide_margin
                out[voter] = scores >= _lowest_positive(candidates, positive) - margin
            elif np.isnan(positive).any():  # BM25 did not retrieve a positive: it cannot judge, abstains
                out[voter] = np.zeros(len(candidates), dtype=bool)
            else:
                threshold = PercPosFilter(self.percentage).threshold(_lowest_positive(candidates, positive))
                out[voter] = scores > threshold  # NaN (not retrieved) compares False: no vote
        return out

    def keep(self, candidates: Candidates) -> np.ndarray:
        votes = self.votes(candidates)
        count = np.sum([v for v in votes.values()], axis=0) if votes else np.zeros(len(candidates))
        return ~(count >= self.k)


FILTERS: dict[str, type] = {
    f.kind: f
    for f in (ShiftFilter, AbsFilter, MarginPosFilter, PercPosFilter, GuideFilter, CrossEncoderFilter, VoteFilter)
}


def apply_filters(
    candidates: Candidates,
    filters: list[CandidateFilter],
    removed_log: list[tuple[str, Candidates]] | None = None,
) -> tuple[Candidates, dict[str, int]]:
    """Run `filters` in order, each on the survivors of the previous; return survivors and removals.

    The removal counts are keyed by each filter's `label`, in filter order. When `removed_log` is a
    list, `(label, removed candidates)` is appended to it for every filter that removed something.
    """
    removed: dict[str, int] = {}
    current = candidates
    for candidate_filter in filters:
        mask = np.asarray(candidate_filter.keep(current), dtype=bool)
        if mask.shape != (len(current),):
            raise DensekitError(f"filter {candidate_filter.label} returned a mask of shape {mask.shape}")
        removed[candidate_filter.label] = removed.get(candidate_filter.label, 0) + int((~mask).sum())
        if mask.all():  # the common case: nothing to copy
            continue
        if removed_log is not None:
            removed_log.append((candidate_filter.label, current.subset(~mask)))
        current = current.subset(mask)
    return current, removed


METHODS = ("naive", "shift", "abs", "margin", "percpos", "ce", "vote")


def filters_from_options(
    methods: list[str],
    percentage: float | None = None,
    margin: float | None = None,
    threshold: float | None = None,
    shift: int | None = None,
    ce_margin: float | None = None,
    vote_k: int | None = None,
    voters: tuple[str, ...] = ("teacher",),
    guide_margin: float | None = None,
) -> list[CandidateFilter]:
    """The filters named by `methods` (in that order), each with its parameter.

    `naive` adds none; `percpos` defaults to 0.95; `ce` (the cross-encoder filter) to margin 0;
    `shift`, `abs`, `margin` and `vote` (needs `vote_k`; `voters` are the configured teachers, judged
    with `percentage`, `guide_margin` and `ce_margin`) need their parameter. A parameter given for a
    method that is not named is an error, not silently ignored.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise DensekitError(f"unknown method {unknown[0]!r}; expected one of {', '.join(METHODS)}")
    if "naive" in methods and len(methods) > 1:
        raise DensekitError("method 'naive' (no filter) cannot be combined with other methods")
    given = {"percpos": percentage, "margin": margin, "abs": threshold, "shift": shift, "ce": ce_margin, "vote": vote_k}
    option = {
        "percpos": "--percentage",
        "margin": "--margin",
        "abs": "--threshold",
        "shift": "--shift",
        "ce": "--ce-margin",
        "vote": "--vote-k",
    }
    for method, value in given.items():
        if value is None or method in methods:
            continue
        if method == "percpos" and "vote" in methods:
            continue  # the dense teacher's vote uses it
        if method == "ce" and "vote" in methods and "ce" in voters:
            continue  # the cross-encoder's vote uses it
        raise DensekitError(f"{option[method]} is given but method {method!r} is not used (add it to --method)")
    filters: list[CandidateFilter] = []
    for method in methods:
        if method == "naive":
            continue
        if method == "percpos":
            filters.append(PercPosFilter(0.95 if percentage is None else percentage))
            continue
        if method == "ce":
            filters.append(CrossEncoderFilter(ce_margin or 0.0))
            continue
        if method == "vote" and vote_k is not None:
            filters.append(
                VoteFilter(
                    int(vote_k),
                    voters,
                    0.95 if percentage is None else percentage,
                    guide_margin or 0.0,
                    ce_margin or 0.0,
                )
            )
            continue
        if given[method] is None:
            raise DensekitError(f"method {method!r} needs {option[method]}")
        if method == "shift":
            filters.append(ShiftFilter(int(shift)))  # type: ignore[arg-type]
        elif method == "abs":
            filters.append(AbsFilter(float(threshold)))  # type: ignore[arg-type]
        else:
            filters.append(MarginPosFilter(float(margin)))  # type: ignore[arg-type]
    return filters
