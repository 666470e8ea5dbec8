"""The negatives file: JSON lines, one query per line, and its validating reader.

Each line::

    {"query_id": "q1", "query": "text",
     "positives": ["d7", ...],                          # labelled positives found in the corpus
     "positive_scores": {"d7": 0.71, ...},              # teacher score of each positive
     "positive_guide_scores": {"d7": 0.66} | null,      # guide score of each positive (null: no guide)
     "negatives": [{"id": "d3", "rank": 2, "teacher_score": 0.64, "guide_score": 0.41 | null}, ...]}

`rank` is the 1-based rank of the negative in the query's candidate list (the teacher's ranking
when the teacher is the only source, the fused list otherwise); negatives are written in rank order.
A query may have fewer negatives than asked (even none) when the filters leave too few; the
statistics count those queries. Queries without any positive in the corpus are not written (counted).

Beside `<out>` the miner writes, atomically, `<out>.config.json` (models, sources, filters, sampler,
seed, densekit version) and `<out>.stats.json` (what each filter removed; see
:class:`~densekit.mining.stats.MiningStats`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from densekit.data import iter_jsonl
from densekit.errors import InputError

REQUIRED = {"query_id": str, "query": str, "positives": list, "positive_scores": dict, "negatives": list}


def config_path(out: str | Path) -> Path:
    return Path(f"{out}.config.json")


def stats_path(out: str | Path) -> Path:
    return Path(f"{out}.stats.json")


def record_line(record: dict) -> str:
    """One output line (with its newline); deterministic for equal records."""
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n"


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_record(record: object, path: Path, line: int) -> dict:
    """Check one parsed line against the format above; InputError names the file and line."""
    if not isinstance(record, dict):
        raise InputError(path, f"expected a JSON object, got {type(record).__name__}", line)
    for key, kind in REQUIRED.items():
        if key not in record:
            raise InputError(path, f'missing "{key}"', line)
        if not isinstance(record[key], kind):
            got = type(record[key]).__name__
            raise InputError(path, f'"{key}" must be a {kind.__name__}, got {got}', line)
    positives = record["positives"]
    if not positives or not all(isinstance(p, str) for p in positives):
        raise InputError(path, '"positives" must be a non-empty list of document ids', line)
    for doc_id, score in record["positive_scores"].items():
        if doc_id not in positives or not _is_number(score):
            message = f'"positive_scores" {doc_id!r}: {score!r} is not the score of a positive'
            raise InputError(path, message, line)
    seen: set[str] = set()
    for i, negative in enumerate(record["negatives"], start=1):
        where = f"negative {i}"
        if not isinstance(negative, dict):
            raise InputError(path, f"{where} must be an object", line)
        doc_id = negative.get("id")
        if not isinstance(doc_id, str) or not doc_id:
            raise InputError(path, f'{where}: "id" must be a non-empty string', line)
        if doc_id in positives:
            raise InputError(path, f"{where}: {doc_id!r} is one of the query's positives", line)
        if doc_id in seen:
            raise InputError(path, f"{where}: {doc_id!r} appears twice", line)
        seen.add(doc_id)
        rank = negative.get("rank")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise InputError(path, f'{where}: "rank" must be an integer >= 1, got {rank!r}', line)
        if not _is_number(negative.get("teacher_score")):
            raise InputError(path, f'{where}: "teacher_score" must be a finite number', line)
        guide = negative.get("guide_score")
        if guide is not None and not _is_number(guide):
            raise InputError(path, f'{where}: "guide_score" must be a finite number or null', line)
    return record


def read_negatives(path: str | Path) -> list[dict]:
    """Read and validate a negatives file (see the module docstring) into a list of records.

    Raises :class:`~densekit.errors.InputError` naming the file and the 1-based line of the first
    problem: malformed JSON, a missing or mistyped key, a negative that is a positive, a duplicate
    query id, a bad rank or score.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "negatives file not found")
    records: list[dict] = []
    seen: dict[str, int] = {}
    for number, obj in iter_jsonl(path):
        record = validate_record(obj, path, number)
        query_id = record["query_id"]
        if query_id in seen:
            first = seen[query_id]
            raise InputError(path, f"query {query_id!r} appears twice (first on line {first})", number)
        seen[query_id] = number
        records.append(record)
    return records
