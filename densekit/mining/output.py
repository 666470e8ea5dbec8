"""Where the miner writes: the negatives file and its sidecars.

The negatives file's schema and its one validating reader live in :mod:`densekit.negatives` (the
trainer reads the same file through it); :func:`read_negatives` is re-exported here. Queries without
any positive in the corpus are not written (counted); a query may have fewer negatives than asked
(even none) when the filters leave too few, and the statistics count those queries.

Beside `<out>` the miner writes, atomically, `<out>.config.json` (models, sources, filters, sampler,
seed, densekit version) and `<out>.stats.json` (what each filter removed; see
:class:`~densekit.mining.stats.MiningStats`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from densekit.errors import IntegrityError
from densekit.mining.filters import Candidates
from densekit.negatives import NegativesRecord, json_line, read_negatives

__all__ = [
    "NegativesRecord",
    "append_lines",
    "candidate_rows",
    "checkpoint_path",
    "config_path",
    "partial_path",
    "read_negatives",
    "record_line",
    "stats_path",
    "truncate_to",
]

#: One line of any mining output (negatives file, removed-candidates log), with its newline.
record_line = json_line


def partial_path(out: str | Path) -> Path:
    """Where an unfinished run's output grows (renamed to `out` at the end)."""
    return Path(f"{out}.partial")


def checkpoint_path(out: str | Path) -> Path:
    """The unfinished run's checkpoint: configuration, queries done, byte lengths, statistics."""
    return Path(f"{out}.partial.json")


def config_path(out: str | Path) -> Path:
    return Path(f"{out}.config.json")


def stats_path(out: str | Path) -> Path:
    return Path(f"{out}.stats.json")


def append_lines(path: Path, lines: list[str]) -> int:
    """Append `lines` durably (fsync) and return the file's new length."""
    with open(path, "ab") as handle:
        handle.write("".join(lines).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
        return handle.tell()


def truncate_to(path: Path, length: int) -> None:
    """Cut a partial file back to its checkpointed length (dropping what a crash left after it)."""
    if not path.is_file() or path.stat().st_size < length:
        raise IntegrityError(f"{path}: shorter than its checkpoint records; run without --resume")
    with open(path, "r+b") as handle:
        handle.truncate(length)


def candidate_rows(candidates: Candidates, positions, removed_by: str | None = None) -> list[dict]:
    """Output rows (id, rank, every teacher's score, and the filter when removed) of some candidates."""
    rows = []
    for i in positions:
        row = {
            "id": candidates.doc_ids[i],
            "rank": int(candidates.ranks[i]),
            "teacher_score": float(candidates.teacher_scores[i]),
            "guide_score": None if candidates.guide_scores is None else float(candidates.guide_scores[i]),
        }
        for name, (scores, _) in candidates.extra_scores.items():
            row[f"{name}_score"] = None if np.isnan(scores[i]) else float(scores[i])
        if removed_by is not None:
            row["filter"] = removed_by
        rows.append(row)
    return rows
