"""A committed copy of a long benchmark's finished stages, so that losing the machine loses no work.

The ablation's stages live in its ``--out`` folder (under ``/tmp``), which does not survive the machine
it ran on, and the whole ablation is longer than one session. ``--archive DIR`` (a folder inside the
repository) keeps a copy of every finished stage's small outputs: its summary (``*.done.json``: the
command, wall time, load, JSON output), its mined negatives and its TREC runs, gzip-compressed; never
a model. A TREC run is kept as its ranking (:func:`ranking_only`): the scores, which no metric reads
beyond the order they give, take half the compressed size (480 against 220 kB for 30,000 lines). A
rerun on a fresh machine brings a stage back from the archive instead of running it, so an
evaluation that is archived needs neither its model nor that model's training or mining.

The archive mirrors ``--out``: ``out/runs/naive-seed1.trec`` is kept as
``archive/runs/naive-seed1.trec.gz`` beside ``archive/runs/naive-seed1.done.json``.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageArchive:
    """Copies of finished stages under `folder`, laid out like the run folder `out`."""

    out: Path
    folder: Path

    def copy_of(self, path: Path) -> Path:
        """Where the archive keeps `path` (a file under `out`), before compression."""
        return self.folder / path.resolve().relative_to(self.out.resolve())

    def has(self, done: Path) -> bool:
        return self.copy_of(done).is_file()

    def keep(self, done: Path, files: tuple[Path, ...] = ()) -> None:
        """Archive a finished stage: its summary `done` and its outputs `files` (gzip-compressed).

        The summary is written last, so an interrupted copy is never taken for a finished stage.
        """
        for path in files:
            target = self.copy_of(path).with_name(path.name + ".gz")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            with gzip.open(partial, "wb", compresslevel=9) as sink:
                sink.write(ranking_only(path) if path.suffix == ".trec" else path.read_bytes())
            partial.replace(target)
        copy = self.copy_of(done)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(done, copy)

    def restore(self, done: Path, files: tuple[Path, ...] = ()) -> bool:
        """Bring an archived stage back into `out` when `out` lacks it; True when it was brought back.

        A stage whose summary is in `out` already is left alone (the run folder wins).
        """
        if done.is_file() or not self.has(done):
            return False
        for path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            with gzip.open(self.copy_of(path).with_name(path.name + ".gz"), "rb") as source, partial.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            partial.replace(path)
        done.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.copy_of(done), done)
        return True


def ranking_only(run: Path) -> bytes:
    """A TREC run (``qid Q0 doc rank score tag``) as its ranking: each query's documents in the order the
    metrics read them (score descending, ties to the larger doc id, as trec_eval), scored 1/position."""
    by_query: dict[str, list[tuple[float, str, str]]] = {}
    for line in run.read_text(encoding="utf-8").splitlines():
        qid, _q0, doc, _rank, score, tag = line.split()
        by_query.setdefault(qid, []).append((float(score), doc, tag))
    lines = []
    for qid, ranked in by_query.items():
        for position, (_, doc, tag) in enumerate(sorted(ranked, reverse=True), start=1):
            lines.append(f"{qid} Q0 {doc} {position} {1 / position:.6g} {tag}\n")
    return "".join(lines).encode("utf-8")
