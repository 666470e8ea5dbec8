"""Filters, samplers, fusion and the negatives reader on hand-made scores.

Scores are binary fractions (0.375, 0.4375, ...) so that thresholds and ties are exact in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from densekit.errors import DensekitError, InputError
from densekit.mining import (
    AbsFilter,
    Candidates,
    ExcludePositives,
    GuideFilter,
    MarginPosFilter,
    PercPosFilter,
    ScoreWeightedSampler,
    ShiftFilter,
    TopOnePlusSampled,
    TopSampler,
    UniformSampler,
    apply_filters,
    fuse,
    query_rng,
    read_negatives,
)
from densekit.mining.filters import filters_from_options
from densekit.mining.samplers import sampler_from_options


def make(scores, positives=(0.5,), doc_ids=None, positive_ids=None, guide=None, guide_pos=None) -> Candidates:
    doc_ids = doc_ids or [f"d{i}" for i in range(len(scores))]
    positive_ids = positive_ids or [f"p{i}" for i in range(len(positives))]
    return Candidates(
        "q",
        list(doc_ids),
        np.array(scores, np.float32),
        list(positive_ids),
        np.array(positives, np.float32),
        guide_scores=None if guide is None else np.array(guide, np.float32),
        positive_guide_scores=None if guide_pos is None else np.array(guide_pos, np.float32),
    )


def kept(candidate_filter, candidates: Candidates) -> list[bool]:
    return candidate_filter.keep(candidates).tolist()


# -- filters -----------------------------------------------------------------------------------------


def test_exclude_positives_with_several_positives() -> None:
    c = make([0.9, 0.8, 0.7, 0.6], positives=(0.9, 0.6), doc_ids=list("abcd"), positive_ids=["a", "d"])
    assert kept(ExcludePositives(), c) == [False, True, True, False]


def test_percpos_positive_scores_and_tie_at_threshold() -> None:
    # pos 0.5, p 0.75 -> threshold 0.375; a candidate exactly at the threshold survives (strict >).
    c = make([0.5, 0.4375, 0.375, 0.25], positives=(0.5,))
    assert kept(PercPosFilter(0.75), c) == [False, False, True, True]


def test_percpos_negative_positive_score_keeps_threshold_below_positive() -> None:
    # pos -0.5, p 0.75 -> threshold -0.5 - 0.25 * 0.5 = -0.625. NV-Retriever's literal `p * pos` would be
    # -0.375, above the positive, and would keep a candidate (-0.4375) that the teacher prefers to it.
    c = make([-0.4375, -0.5, -0.5625, -0.625, -0.75], positives=(-0.5,))
    assert kept(PercPosFilter(0.75), c) == [False, False, False, True, True]
    assert PercPosFilter(0.75).threshold(-0.5) == -0.625


def test_percpos_uses_lowest_of_several_positives() -> None:
    c = make([0.5, 0.25, -0.1875, -0.25], positives=(0.5, -0.25, 0.75))
    # lowest positive -0.25, p 0.75 -> threshold -0.3125: everything here scores above it.
    assert kept(PercPosFilter(0.75), c) == [False, False, False, False]
    c = make([0.5, 0.25, -0.3125, -0.375], positives=(0.5, -0.25))
    assert kept(PercPosFilter(0.75), c) == [False, False, True, True]


def test_percpos_matches_sentence_transformers_relative_margin() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        positives = rng.uniform(-1, 1, size=rng.integers(1, 4)).astype(np.float32)
        scores = rng.uniform(-1, 1, size=30).astype(np.float32)
        pos = float(positives.min())
        st_removed = scores > np.float32(pos - abs(pos) * 0.05)  # mine_hard_negatives(relative_margin=0.05)
        ours = PercPosFilter(0.95).keep(make(scores, positives=positives))
        assert (ours == ~st_removed).all()


def test_percpos_rejects_out_of_range_percentage() -> None:
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(DensekitError, match="percentage"):
            PercPosFilter(bad)


def test_margin_pos_with_positive_and_negative_scores() -> None:
    c = make([0.5, 0.4375, 0.375, 0.25], positives=(0.5, 0.75))
    assert kept(MarginPosFilter(0.125), c) == [False, False, True, True]  # threshold 0.375, tie kept
    c = make([-0.25, -0.5, -0.625, -0.75], positives=(-0.5,))
    assert kept(MarginPosFilter(0.125), c) == [False, False, True, True]  # threshold -0.625


def test_abs_filter_is_absolute_and_keeps_ties() -> None:
    c = make([0.5, 0.375, -0.25], positives=(-0.75,))  # the positive does not matter
    assert kept(AbsFilter(0.375), c) == [False, True, True]
    assert kept(AbsFilter(-0.5), c) == [False, False, False]


def test_shift_skips_first_n_remaining() -> None:
    c = make([0.9, 0.8, 0.7, 0.6, 0.5], positives=(0.95,), doc_ids=list("abcde"), positive_ids=["b"])
    survivors, removed = apply_filters(c, [ExcludePositives(), ShiftFilter(2)])
    assert survivors.doc_ids == ["d", "e"]  # a and c skipped: the positive b does not count
    assert survivors.ranks.tolist() == [4, 5]
    assert removed == {"positives": 1, "shift(2)": 2}
    assert apply_filters(c, [ShiftFilter(10)])[0].doc_ids == []
    with pytest.raises(DensekitError):
        ShiftFilter(-1)


def test_guide_filter_at_or_above_lowest_guide_positive() -> None:
    c = make([0.1, 0.1, 0.1, 0.1], guide=[0.875, 0.5, 0.4375, 0.25], guide_pos=[0.75, 0.5])
    assert kept(GuideFilter(), c) == [False, False, True, True]  # >= 0.5 dropped, the tie too
    assert kept(GuideFilter(margin=0.0625), c) == [False, False, False, True]
    neg = make([0.1, 0.1, 0.1], guide=[-0.25, -0.5, -0.75], guide_pos=[-0.5])
    assert kept(GuideFilter(), neg) == [False, False, True]
    with pytest.raises(DensekitError, match="guide"):
        GuideFilter().keep(make([0.1]))


def test_apply_filters_in_order_counts_each_removal_once() -> None:
    c = make(
        [0.875, 0.75, 0.5, 0.4375, 0.375, 0.25, -0.25],
        positives=(0.5,),
        doc_ids=list("abcdefg"),
        positive_ids=["c"],
        guide=[0.1, 0.9, 0.9, 0.2, 0.95, 0.3, 0.1],
        guide_pos=[0.9],
    )
    chain = [ExcludePositives(), PercPosFilter(0.75), GuideFilter(), AbsFilter(0.3)]
    survivors, removed = apply_filters(c, chain)
    # percpos threshold 0.375: a, b, d dropped (c is the positive); guide drops e (0.95 >= 0.9);
    # abs 0.3 drops nothing left (f 0.25, g -0.25).
    assert survivors.doc_ids == ["f", "g"]
    assert survivors.ranks.tolist() == [6, 7]
    assert removed == {"positives": 1, "percpos(0.75)": 3, "guide(0.0)": 1, "abs(0.3)": 0}
    assert sum(removed.values()) + len(survivors) == len(c)
    log: list = []
    apply_filters(c, chain, removed_log=log)
    assert [(label, gone.doc_ids, gone.ranks.tolist()) for label, gone in log] == [
        ("positives", ["c"], [3]),
        ("percpos(0.75)", ["a", "b", "d"], [1, 2, 4]),
        ("guide(0.0)", ["e"], [5]),
    ]
    assert log[2][1].guide_scores.tolist() == [np.float32(0.95)]


def test_filters_from_options() -> None:
    filters = filters_from_options(["shift", "percpos"], shift=3)
    assert [f.describe() for f in filters] == [{"name": "shift", "n": 3}, {"name": "percpos", "percentage": 0.95}]
    assert filters_from_options(["naive"]) == []
    with pytest.raises(DensekitError, match="--threshold is given"):
        filters_from_options(["percpos"], threshold=0.5)
    with pytest.raises(DensekitError, match="needs --margin"):
        filters_from_options(["margin"])
    with pytest.raises(DensekitError, match="unknown method"):
        filters_from_options(["topk"])


# -- samplers ----------------------------------------------------------------------------------------


SCORES = np.array([0.5, 0.5, 0.25, -0.125, -0.5, -0.5, -0.75, -1.0], np.float32)


def test_top_sampler_takes_first_n_and_all_when_short() -> None:
    rng = query_rng(0, "q")
    assert TopSampler().sample(SCORES, 3, rng).tolist() == [0, 1, 2]
    assert TopSampler().sample(SCORES[:2], 4, rng).tolist() == [0, 1]
    assert TopSampler().sample(SCORES[:0], 4, rng).tolist() == []


@pytest.mark.parametrize("sampler", [UniformSampler(), ScoreWeightedSampler(0.5), TopOnePlusSampled()])
def test_random_samplers_are_seeded_sorted_unique(sampler) -> None:
    first = sampler.sample(SCORES, 4, query_rng(7, "q1"))
    assert first.tolist() == sampler.sample(SCORES, 4, query_rng(7, "q1")).tolist()
    assert len(set(first.tolist())) == 4 and first.tolist() == sorted(first.tolist())
    draws = {tuple(sampler.sample(SCORES, 4, query_rng(seed, "q1")).tolist()) for seed in range(30)}
    assert len(draws) > 1  # the seed matters
    assert sampler.sample(SCORES[:3], 4, query_rng(0, "q")).tolist() == [0, 1, 2]


def test_query_rng_depends_on_seed_and_query_only() -> None:
    a = query_rng(3, "query-a").random(4)
    assert np.array_equal(a, query_rng(3, "query-a").random(4))
    assert not np.array_equal(a, query_rng(3, "query-b").random(4))
    assert not np.array_equal(a, query_rng(4, "query-a").random(4))
    with pytest.raises(DensekitError):
        query_rng(-1, "q")


def test_uniform_sampler_is_uniform() -> None:
    counts = np.zeros(len(SCORES))
    for seed in range(4000):
        counts[UniformSampler().sample(SCORES, 2, query_rng(seed, "q"))] += 1
    expected = 4000 * 2 / len(SCORES)
    assert np.all(np.abs(counts - expected) < 0.15 * expected)


def test_weighted_sampler_follows_softmax_with_negative_scores_and_ties() -> None:
    sampler = ScoreWeightedSampler(temperature=0.5)
    counts = np.zeros(len(SCORES))
    for seed in range(4000):
        counts[sampler.sample(SCORES, 1, query_rng(seed, "q"))] += 1
    probs = np.exp(SCORES / 0.5) / np.exp(SCORES / 0.5).sum()
    assert np.all(np.abs(counts / 4000 - probs) < 0.03)
    assert abs(counts[0] - counts[1]) < 0.2 * counts[0]  # tied scores, equal chances
    # A very low temperature is the top sampler; negative scores do not break it.
    cold = ScoreWeightedSampler(temperature=1e-6)
    assert cold.sample(SCORES[2:], 2, query_rng(0, "q")).tolist() == [0, 1]
    with pytest.raises(DensekitError):
        ScoreWeightedSampler(0.0)


def test_top1_plus_sampled_always_keeps_the_top() -> None:
    for seed in range(50):
        chosen = TopOnePlusSampled().sample(SCORES, 3, query_rng(seed, "q")).tolist()
        assert chosen[0] == 0 and len(set(chosen)) == 3 and 0 not in chosen[1:]


def test_sampler_options() -> None:
    assert sampler_from_options("weighted", 0.1).describe() == {"name": "weighted", "temperature": 0.1}
    with pytest.raises(DensekitError, match="--temperature"):
        sampler_from_options("top", 0.1)
    with pytest.raises(DensekitError, match="unknown sampler"):
        sampler_from_options("best")
    with pytest.raises(DensekitError):
        TopSampler().sample(SCORES, 0, query_rng(0, "q"))


# -- fusion ------------------------------------------------------------------------------------------


def test_rrf_fusion_hand_computed() -> None:
    fused = fuse([["a", "b", "c"], ["c", "d", "a"]], "rrf", depth=10)
    # a: 1/61 + 1/63, c: 1/63 + 1/61 (tie: ordered by document id), b: 1/62, d: 1/62 (tie)
    assert fused == ["a", "c", "b", "d"]
    # The one RRF breaks ties by document id, not by first appearance (mining's old rule gave b, a).
    assert fuse([["b", "a"], ["a", "b"]], "rrf", depth=10) == ["a", "b"]
    assert fuse([["a", "b", "c"], ["c", "d", "a"]], "rrf", depth=2) == ["a", "c"]
    assert fuse([["x", "y"]], "rrf", depth=1) == ["x", "y"]  # one source is returned as is


def test_union_fusion_orders_by_teacher_score() -> None:
    scores = {"a": 0.1, "b": 0.9, "c": -0.2, "d": 0.5}
    fused = fuse(
        [["a", "b"], ["c", "d", "a"]], "union", depth=2, teacher_score=lambda ids: np.array([scores[i] for i in ids])
    )
    assert fused == ["b", "d", "a", "c"]
    with pytest.raises(DensekitError, match="unknown fusion"):
        fuse([["a"], ["b"]], "max", depth=2)


# -- the reader --------------------------------------------------------------------------------------


def _neg(doc_id="n1", rank=1, teacher=0.4, guide=None) -> dict:
    return {"id": doc_id, "rank": rank, "teacher_score": teacher, "guide_score": guide}


def _record(**override) -> dict:
    record = {
        "query_id": "q1",
        "query": "text",
        "positives": ["p1"],
        "positive_scores": {"p1": 0.5},
        "positive_guide_scores": None,
        "negatives": [{"id": "n1", "rank": 2, "teacher_score": 0.4, "guide_score": None}],
    }
    record.update(override)
    return record


def _write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_read_negatives_accepts_valid_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "n.jsonl", [_record(), _record(query_id="q2", negatives=[])])
    assert [r.query_id for r in read_negatives(path)] == ["q1", "q2"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "malformed JSON"),
        (_record(negatives=[_neg(doc_id="p1")]), "positives"),
        (_record(negatives=[_neg(rank=0)]), "rank"),
        (_record(negatives=[_neg(teacher="x")]), "teacher_score"),
        (_record(negatives=[_neg(guide="y")]), "guide_score"),
        (_record(negatives=[_neg(), _neg()]), "appears twice"),
        ({k: v for k, v in _record().items() if k != "positives"}, 'missing "positives"'),
        (_record(query_id="q0"), "appears twice"),
    ],
)
def test_read_negatives_names_file_and_line(tmp_path: Path, bad, message: str) -> None:
    path = _write(tmp_path / "n.jsonl", [_record(query_id="q0"), bad])
    with pytest.raises(InputError, match=message) as info:
        read_negatives(path)
    assert info.value.line == 2 and info.value.path == str(path)
