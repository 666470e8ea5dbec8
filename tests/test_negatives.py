"""The one negatives-file schema (densekit.negatives): what it requires, what it keeps, what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densekit.data import Corpus
from densekit.errors import InputError
from densekit.negatives import NegativesRecord, read_negatives
from densekit.retriever.train.data import read_training_examples

MINED = {
    "query_id": "q1",
    "query": "text",
    "positives": ["p1"],
    "positive_scores": {"p1": 0.5},
    "positive_guide_scores": None,
    "negatives": [{"id": "n1", "rank": 2, "teacher_score": 0.4, "guide_score": None}],
}
CORPUS = Corpus.from_records({d: {"title": "", "text": d} for d in ("p1", "n1")})


def _write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_mined_record_round_trips_byte_for_byte() -> None:
    record = NegativesRecord.from_json(MINED)
    assert record.to_json() == MINED and list(record.to_json()) == list(MINED)  # same keys, same order
    assert record.line() == json.dumps(MINED, ensure_ascii=False, separators=(", ", ": ")) + "\n"
    assert record.negatives[0].teacher_score == 0.4 and record.negatives[0].guide_score is None


def test_scores_are_optional_and_extra_scores_are_kept(tmp_path: Path) -> None:
    """Ids and ranks suffice (the trainer needs no score); `<name>_score` fields (e.g. a cross-encoder's
    ce_score, per negative and per positive) are kept and written back."""
    bare = {"query_id": "q1", "query": "text", "positives": ["p1"], "negatives": [{"id": "n1", "rank": 1}]}
    extra = {
        **MINED,
        "query_id": "q2",
        "positive_ce_scores": {"p1": 3.5},
        "negatives": [{"id": "n1", "rank": 1, "teacher_score": 0.4, "ce_score": -1.25}],
    }
    records = read_negatives(_write(tmp_path / "n.jsonl", [bare, extra]))
    assert records[0].negatives[0].teacher_score is None and records[0].positive_scores == {}
    assert records[1].negatives[0].scores == {"teacher_score": 0.4, "ce_score": -1.25}
    assert records[1].positive_scores["positive_ce_scores"] == {"p1": 3.5}
    assert records[1].to_json() == extra
    examples = read_training_examples(tmp_path / "n.jsonl", CORPUS, 1)  # the trainer reads the same file
    assert [(e.query_id, e.negative_ids) for e in examples] == [("q1", ("n1",)), ("q2", ("n1",))]


@pytest.mark.parametrize(
    ("negative", "message"),
    [
        ({"id": "n1", "rank": 1.5}, "integer >= 1"),  # the trainer used to accept any number
        ({"id": "n1"}, "integer >= 1"),
        ({"id": "n1", "rank": True}, "integer >= 1"),
        ({"id": "n1", "rank": 1, "ce_score": "high"}, '"ce_score" must be a finite number'),
        ({"id": "n1", "rank": 1, "teacher_score": float("nan")}, "finite number"),
        ({"id": "n1", "rank": 1, "socre": 1.0}, "unknown key 'socre'"),
    ],
)
def test_bad_negatives_name_file_and_line(tmp_path: Path, negative: dict, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [MINED, {**MINED, "query_id": "q2", "negatives": [negative]}])
    for reader in (read_negatives, lambda p: read_training_examples(p, CORPUS, 1)):
        with pytest.raises(InputError, match=message) as info:
            reader(path)
        assert info.value.line == 2 and info.value.path == str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"query_id": 7}, '"query_id" must be a non-empty string'),
        ({"query": "  "}, '"query" must be non-empty text'),
        ({"positive_scores": {"n1": 0.3}}, "is not the score of a positive"),
        ({"positive_ce_scores": [1.0]}, "must be an object"),
        ({"teacher": "x"}, "unknown key 'teacher'"),
    ],
)
def test_bad_records_are_refused(change: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        NegativesRecord.from_json({**MINED, **change}, "n.jsonl", 4)
    assert str(info.value).startswith("n.jsonl:4: ")
