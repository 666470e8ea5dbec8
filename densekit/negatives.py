"""The negatives file: one schema and one reader, shared by the miner (writer) and the trainer (reader).

JSON lines, one query per line::

    {"query_id": "q1", "query": "text",
     "positives": ["d7", ...],                          # labelled positives found in the corpus
     "positive_scores": {"d7": 0.71, ...},              # teacher score of each positive
     "positive_guide_scores": {"d7": 0.66} | null,      # guide score of each positive (null: no guide)
     "negatives": [{"id": "d3", "rank": 2, "teacher_score": 0.64, "guide_score": 0.41 | null}, ...]}

Required: ``query_id`` (non-empty string, once per file), ``query`` (non-empty text), ``positives``
(non-empty list of document ids) and ``negatives`` (a list, possibly empty). Each negative needs
``id`` (a non-empty string, not one of the query's positives, not repeated) and ``rank`` (an integer
>= 1: its 1-based rank in the query's candidate list, the teacher's ranking when the teacher is the
only source, the fused list otherwise).

Optional, by decision: every score. The contrastive trainer needs only ids and ranks, so a file built
by hand or by another tool (ids and ranks, as tests/conftest.py's ``train_negatives`` writes) is a
valid negatives file; ``densekit mine`` always writes ``teacher_score`` and ``guide_score`` per
negative and ``positive_scores`` / ``positive_guide_scores`` per query. A consumer that needs a score
(distillation, a teacher's filter) checks that it is there and names the file when it is not.
Scores are open-ended so that new teachers need no schema change: any ``<name>_score`` key on a
negative (``teacher_score``, ``guide_score``, ``ce_score``, ...) is a finite number or null and lands
in :attr:`MinedNegative.scores`; any ``positive_<name>_scores`` key on a record
(``positive_scores``, ``positive_guide_scores``, ``positive_ce_scores``, ...) is null or an object
mapping some of the positives to finite numbers and lands in :attr:`NegativesRecord.positive_scores`.
Any other key is an error (a misspelt field must not be silently ignored).

Every problem is an :class:`~densekit.errors.InputError` naming the file and the 1-based line.
The miner passes each record through :meth:`NegativesRecord.from_json` before writing it, so it
cannot write a file that the trainer would refuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from densekit.data import iter_jsonl
from densekit.errors import InputError

RECORD_KEYS = ("query_id", "query", "positives", "negatives")


def json_line(obj: dict) -> str:
    """One JSON-lines line (with its newline), as every mining output writes it; deterministic."""
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_score_key(key: str) -> bool:
    return key.endswith("_score") and len(key) > len("_score")


def _is_positive_scores_key(key: str) -> bool:
    return key == "positive_scores" or (key.startswith("positive_") and key.endswith("_scores"))


def positive_scores_key(score_key: str) -> str:
    """The record key holding the positives' scores for a negative's `score_key`:
    ``teacher_score`` -> ``positive_scores``, ``<name>_score`` -> ``positive_<name>_scores``."""
    if score_key == "teacher_score":
        return "positive_scores"
    return f"positive_{score_key[: -len('_score')]}_scores"


@dataclass(frozen=True)
class MinedNegative:
    """One negative of a query: document id, 1-based candidate rank, and its scores by key."""

    id: str
    rank: int
    scores: dict[str, float | None] = field(default_factory=dict)  # {"teacher_score": 0.64, ...}

    @property
    def teacher_score(self) -> float | None:
        return self.scores.get("teacher_score")

    @property
    def guide_score(self) -> float | None:
        return self.scores.get("guide_score")

    def to_json(self) -> dict:
        return {"id": self.id, "rank": self.rank, **self.scores}


@dataclass(frozen=True)
class NegativesRecord:
    """One line of a negatives file (see the module docstring for the fields and what is required)."""

    query_id: str
    query: str
    positives: tuple[str, ...]
    negatives: tuple[MinedNegative, ...]
    # {"positive_scores": {"d7": 0.71}, "positive_guide_scores": None, ...}, in file order
    positive_scores: dict[str, dict[str, float] | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The JSON object of this record, keys in the order the miner writes them."""
        return {
            "query_id": self.query_id,
            "query": self.query,
            "positives": list(self.positives),
            **self.positive_scores,
            "negatives": [n.to_json() for n in self.negatives],
        }

    def line(self) -> str:
        """One output line (with its newline); deterministic for equal records."""
        return json_line(self.to_json())

    @classmethod
    def from_json(cls, obj: object, path: str | Path = "<record>", line: int | None = None) -> NegativesRecord:
        """Check one parsed line against the schema; InputError names `path` and `line`."""

        def fail(message: str) -> InputError:
            return InputError(Path(path), message, line)

        if not isinstance(obj, dict):
            raise fail(f"expected a JSON object, got {type(obj).__name__}")
        for key in RECORD_KEYS:
            if key not in obj:
                raise fail(f'missing "{key}"')
        unknown = [k for k in obj if k not in RECORD_KEYS and not _is_positive_scores_key(k)]
        if unknown:
            raise fail(f"unknown key {unknown[0]!r}; expected {', '.join(RECORD_KEYS)} and positive_<name>_scores")
        query_id, query, positives = obj["query_id"], obj["query"], obj["positives"]
        if not isinstance(query_id, str) or not query_id:
            raise fail(f'"query_id" must be a non-empty string, got {query_id!r}')
        if not isinstance(query, str) or not query.strip():
            raise fail('"query" must be non-empty text')
        if not isinstance(positives, list) or not positives or not all(isinstance(p, str) and p for p in positives):
            raise fail('"positives" must be a non-empty list of document ids')
        positive_scores: dict[str, dict[str, float] | None] = {}
        for key in (k for k in obj if _is_positive_scores_key(k)):
            scores = obj[key]
            if scores is not None and not isinstance(scores, dict):
                raise fail(f'"{key}" must be an object {{positive id: score}} or null, got {type(scores).__name__}')
            for doc_id, score in (scores or {}).items():
                if doc_id not in positives or not _is_number(score):
                    raise fail(f'"{key}" {doc_id!r}: {score!r} is not the score of a positive')
            positive_scores[key] = scores
        if not isinstance(obj["negatives"], list):
            raise fail('"negatives" must be a list of {"id", "rank", ...}')
        negatives: list[MinedNegative] = []
        seen: set[str] = set()
        for i, negative in enumerate(obj["negatives"], start=1):
            where = f"negative {i}"
            if not isinstance(negative, dict):
                raise fail(f"{where} must be an object")
            doc_id = negative.get("id")
            if not isinstance(doc_id, str) or not doc_id:
                raise fail(f'{where} has no "id" (a non-empty string)')
            if doc_id in positives:
                raise fail(f"{where}: {doc_id!r} is both positive and negative (one of the query's positives)")
            if doc_id in seen:
                raise fail(f"{where}: {doc_id!r} appears twice")
            seen.add(doc_id)
            rank = negative.get("rank")
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                raise fail(f'{where}: "rank" must be an integer >= 1, got {rank!r}')
            scores = {}
            for key, value in negative.items():
                if key in ("id", "rank"):
                    continue
                if not _is_score_key(key):
                    raise fail(f"{where}: unknown key {key!r}; expected id, rank and <name>_score keys")
                if value is not None and not _is_number(value):
                    raise fail(f'{where}: "{key}" must be a finite number or null, got {value!r}')
                scores[key] = value
            negatives.append(MinedNegative(doc_id, rank, scores))
        return cls(query_id, query, tuple(positives), tuple(negatives), positive_scores)


def iter_negatives(path: str | Path) -> Iterator[tuple[int, NegativesRecord]]:
    """Yield `(line number, record)` for each line of a negatives file, validated as it goes.

    Raises :class:`~densekit.errors.InputError` naming the file and the 1-based line of the first
    problem: malformed JSON, a missing, unknown or mistyped key, a negative that is a positive, a
    repeated query id, a bad rank or score.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "negatives file not found (write one with `densekit mine`)")
    seen: dict[str, int] = {}
    for number, obj in iter_jsonl(path):
        record = NegativesRecord.from_json(obj, path, number)
        if record.query_id in seen:
            first = seen[record.query_id]
            raise InputError(
                path, f"query {record.query_id!r} repeated: it appears twice (first on line {first})", number
            )
        seen[record.query_id] = number
        yield number, record


def read_negatives(path: str | Path) -> list[NegativesRecord]:
    """Read and validate a whole negatives file (see :func:`iter_negatives`)."""
    return [record for _, record in iter_negatives(path)]
