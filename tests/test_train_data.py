"""Reading the negatives file, the no-duplicates batch sampler, the collator's layout and masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densekit.data import Corpus
from densekit.errors import InputError
from densekit.retriever.train.data import (
    ContrastiveCollator,
    NoDuplicatesBatchSampler,
    read_training_examples,
)

CORPUS = Corpus.from_records({f"d{i}": {"title": f"t{i}", "text": f"text {i}"} for i in range(12)})


def _record(query_id: str, positives: list[str], negatives: list[str]) -> dict:
    return {
        "query_id": query_id,
        "query": f"query {query_id}",
        "positives": positives,
        "positive_scores": {p: 0.9 for p in positives},
        "negatives": [
            {"id": n, "rank": r + 1, "teacher_score": 0.5, "guide_score": None} for r, n in enumerate(negatives)
        ],
    }


def _write(path: Path, records: list) -> Path:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in records))
    return path


def test_one_example_per_positive_with_negatives_in_rank_order(tmp_path: Path) -> None:
    rec = _record("q1", ["d0", "d1"], ["d5", "d6", "d7"])
    rec["negatives"][0]["rank"], rec["negatives"][2]["rank"] = 9, 1  # out of order in the file
    examples = read_training_examples(_write(tmp_path / "n.jsonl", [rec, _record("q2", ["d2"], [])]), CORPUS, 2)
    assert [(e.query_id, e.positive_id, e.negative_ids) for e in examples] == [
        ("q1", "d0", ("d7", "d6")),
        ("q1", "d1", ("d7", "d6")),
        ("q2", "d2", ()),
    ]
    assert examples[0].positive_ids == frozenset({"d0", "d1"})


@pytest.mark.parametrize(
    ("record", "message", "line"),
    [
        ('{"query_id": "q9"', "malformed JSON", 2),
        ({"query_id": "q9", "positives": ["d0"], "negatives": []}, '"query"', 2),
        ({**_record("q9", ["d0"], []), "positives": []}, '"positives"', 2),
        (_record("q9", ["d0"], ["nope"]), "'nope' is not in the corpus", 2),
        (_record("q9", ["d0"], ["d0"]), "both positive and negative", 2),
        (_record("q1", ["d3"], []), "repeated", 2),
        ({**_record("q9", ["d0"], []), "negatives": [{"rank": 1}]}, 'no "id"', 2),
    ],
)
def test_bad_records_name_file_and_line(tmp_path: Path, record, message: str, line: int) -> None:
    path = _write(tmp_path / "bad.jsonl", [_record("q1", ["d1"], ["d2"]), record])
    with pytest.raises(InputError, match=message) as info:
        read_training_examples(path, CORPUS, 1)
    assert info.value.line == line and info.value.path == str(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_training_examples(tmp_path / "absent.jsonl", CORPUS, 1)
    with pytest.raises(InputError, match="no training examples"):
        read_training_examples(_write(tmp_path / "empty.jsonl", []), CORPUS, 1)


def test_sampler_never_repeats_a_query_or_positive_and_is_seeded(tmp_path: Path) -> None:
    records = [_record(f"q{i}", [f"d{i % 4}", f"d{4 + i % 3}"], []) for i in range(9)]
    examples = read_training_examples(_write(tmp_path / "n.jsonl", records), CORPUS, 0)
    sampler = NoDuplicatesBatchSampler(examples, batch_size=4, seed=7)
    batches = sampler.batches(0)
    assert sorted(i for b in batches for i in b) == list(range(len(examples)))
    for batch in batches:
        assert len(batch) <= 4
        assert len({examples[i].query_id for i in batch}) == len(batch)
        assert len({examples[i].positive_id for i in batch}) == len(batch)
    assert sampler.batches(0) == batches  # a pure function of (seed, epoch): resumable
    assert sampler.batches(1) != batches
    assert NoDuplicatesBatchSampler(examples, 4, seed=8).batches(0) != batches


def _greedy_reference(examples, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The sampler's rule written the slow, obvious way: every round scans every pending example."""
    import random

    pending = list(range(len(examples)))
    random.Random(seed + epoch).shuffle(pending)
    batches = []
    while pending:
        batch, used, waiting = [], set(), []
        for index in pending:
            keys = {"q:" + examples[index].query_id, "d:" + examples[index].positive_id}
            if len(batch) < batch_size and not keys & used:
                batch.append(index)
                used |= keys
            else:
                waiting.append(index)
        batches.append(batch)
        pending = waiting
    return batches


def test_sampler_equals_the_plain_greedy_rule_with_many_positives_per_query(tmp_path: Path) -> None:
    # NFCorpus-like: few queries with many positives each, so most examples collide and wait
    records = [_record(f"q{i}", [f"d{(i * 7 + j) % 12}" for j in range(1 + i % 9)], []) for i in range(25)]
    examples = read_training_examples(_write(tmp_path / "m.jsonl", records), CORPUS, 0)
    assert len(examples) > 100
    sampler = NoDuplicatesBatchSampler(examples, batch_size=8, seed=3)
    for epoch in (0, 1):
        assert sampler.batches(epoch) == _greedy_reference(examples, 8, 3, epoch)
    assert len(sampler) == len(_greedy_reference(examples, 8, 3, 0))


def test_one_positive_per_query_each_epoch_drawn_afresh(tmp_path: Path) -> None:
    # q0 has 6 positives, q1..q5 one each: "all" gives 11 examples per epoch, "one" gives 6
    records = [_record("q0", [f"d{j}" for j in range(6)], [])]
    records += [_record(f"q{i}", [f"d{5 + i}"], []) for i in range(1, 6)]
    examples = read_training_examples(_write(tmp_path / "n.jsonl", records), CORPUS, 0)
    assert len(examples) == 11
    sampler = NoDuplicatesBatchSampler(examples, batch_size=4, seed=5, one_per_query=True)
    drawn_for_q0 = set()
    for epoch in range(12):
        chosen = [examples[i] for b in sampler.batches(epoch) for i in b]
        assert sorted(e.query_id for e in chosen) == [f"q{i}" for i in range(6)]
        for batch in sampler.batches(epoch):
            assert len({examples[i].positive_id for i in batch}) == len(batch)
        drawn_for_q0 |= {e.positive_id for e in chosen if e.query_id == "q0"}
    assert len(drawn_for_q0) >= 4  # not always the same positive (12 draws from 6)
    assert sampler.batches(3) == NoDuplicatesBatchSampler(examples, 4, 5, one_per_query=True).batches(3)
    assert len(sampler) == 2  # 6 queries in batches of 4


def test_collator_layout_and_masks_other_positives(tmp_path: Path, minilm_folder: Path) -> None:
    from transformers import AutoTokenizer

    records = [_record("q1", ["d0", "d1"], ["d5"]), _record("q2", ["d2"], ["d1", "d6"])]
    examples = read_training_examples(_write(tmp_path / "n.jsonl", records), CORPUS, 2)
    collator = ContrastiveCollator(AutoTokenizer.from_pretrained(minilm_folder), CORPUS, 32, 16)
    chosen = [examples[0], examples[2]]  # (q1, d0, [d5]) and (q2, d2, [d1, d6])
    batch = collator(chosen)
    assert batch.document_ids == ["d0", "d2", "d5", "d1", "d6"]
    assert batch.positive_index.tolist() == [0, 1]
    # d1 is q2's mined negative but q1's labelled positive: masked for q1 only
    assert batch.exclude.nonzero().tolist() == [[0, 3]]
    assert batch.query_features[0]["input_ids"].shape[0] == 2
    assert batch.document_features[0]["input_ids"].shape[0] == 5
    sharded = collator(chosen, shards=2)
    assert sharded.document_ids == ["d0", "d5", "d2", "d1", "d6"]
    assert sharded.positive_index.tolist() == [0, 2]
    assert [f["input_ids"].shape[0] for f in sharded.document_features] == [2, 3]


def test_collator_counts_a_repeated_document_once(tmp_path: Path, minilm_folder: Path) -> None:
    from transformers import AutoTokenizer

    # q1 and q2 mined the same negative d5; q1's negative d3 is q3's positive (a later shard)
    records = [
        _record("q1", ["d0"], ["d5", "d3"]),
        _record("q2", ["d1"], ["d5"]),
        _record("q3", ["d3"], ["d6"]),
        _record("q4", ["d4"], ["d7"]),
    ]
    examples = read_training_examples(_write(tmp_path / "n.jsonl", records), CORPUS, 2)
    collator = ContrastiveCollator(AutoTokenizer.from_pretrained(minilm_folder), CORPUS, 32, 16)
    batch = collator(examples, shards=2)
    assert batch.document_ids == ["d0", "d1", "d5", "d3", "d5", "d3", "d4", "d6", "d7"]
    assert batch.positive_index.tolist() == [0, 1, 5, 6]
    # q1's negative d3 (column 3) is q3's positive: masked for q3; q3's own positive column 5 is
    # a repeat of d3, masked for everyone else; the second d5 (column 4) is masked for all
    assert batch.exclude.nonzero().tolist() == [[0, 4], [0, 5], [1, 4], [1, 5], [2, 3], [2, 4], [3, 4], [3, 5]]
    for i in range(4):  # every document id counts once per query
        kept = [d for j, d in enumerate(batch.document_ids) if not batch.exclude[i, j]]
        assert len(kept) == len(set(kept)) == 7
