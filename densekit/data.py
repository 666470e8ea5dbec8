"""BEIR-format data: corpus, queries, qrels, dataset resolution and download, and TREC run files.

A BEIR folder holds::

    corpus.jsonl        {"_id", "title", "text", ...} one document per line
    queries.jsonl       {"_id", "text", ...} one query per line
    qrels/<split>.tsv   header "query-id<TAB>corpus-id<TAB>score", then one judgement per line

Each file may also be gzipped (`corpus.jsonl.gz`). Files are read line by line (streamed) and
validated as they go: every problem is an :class:`~densekit.errors.InputError` naming the file and
line. Judgements that point at unknown queries or documents are counted and reported as a warning,
because real BEIR releases contain such defects and the published numbers were computed with them.

Example::

    ds = load_dataset("scifact", split="test")     # a path, or a name found under $DENSEKIT_DATA
    ds.corpus.texts()[:1], len(ds.queries), len(ds.qrels)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from densekit.errors import DensekitError, InputError
from densekit.io import atomic_file, open_text

QRELS_HEADER = ("query-id", "corpus-id", "score")


class DataWarning(UserWarning):
    """A defect in a dataset that does not stop evaluation (e.g. qrels pointing at unknown ids)."""


def _find_file(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def parse_json_object(path: Path, number: int, line: str) -> dict:
    """One JSON-lines line as a dict; InputError naming `path` and line `number` when it is not one."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON ({exc.msg} at column {exc.colno})", number) from None
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", number)
    return obj


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, object)` for each non-blank line of a JSON-lines file (`.gz` too)."""
    path = Path(path)
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, parse_json_object(path, number, line)


def _record_id(path: Path, number: int, obj: dict) -> str:
    if "_id" not in obj:
        raise InputError(path, 'missing "_id" field', number)
    value = obj["_id"]
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise InputError(path, f'"_id" must be a non-empty string or integer, got {value!r}', number)
    return str(value)


def _text_field(path: Path, number: int, obj: dict, key: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(path, f'"{key}" must be a string, got {type(value).__name__}', number)
    return value


def fingerprint(*columns: Sequence[str]) -> str:
    """sha256 (hex) over the rows of parallel string columns: each string, UTF-8, then a NUL byte.

    The one content fingerprint of the package: :meth:`Corpus.fingerprint` is
    ``fingerprint(ids, titles, texts)``, a query set's ``fingerprint(query_ids, texts)``, a list of
    texts ``fingerprint(texts)``. Embedding caches are keyed by these digests, so the byte layout must
    never change (tests/test_data.py pins digests). Columns must have equal lengths.
    """
    digest = hashlib.sha256()
    for row in zip(*columns, strict=True):
        for part in row:
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
    return digest.hexdigest()


def join_title_text(title: str, text: str) -> str:
    """Join a document's title and text the way BEIR's and MTEB's sentence-transformers models do."""
    return f"{title} {text}".strip() if title else text.strip()


@dataclass
class Corpus:
    """Documents in file order: parallel lists of ids, titles and texts.

    Treat a Corpus as immutable once built: id positions and the content fingerprint are computed
    once and remembered (build a new Corpus to change documents).
    """

    ids: list[str]
    titles: list[str]
    body: list[str]
    path: Path | None = None
    _positions: dict[str, int] = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._positions:
            self._positions = {doc_id: i for i, doc_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._positions

    def position(self, doc_id: str) -> int:
        return self._positions[doc_id]

    def positions(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Row numbers (int64) of the given ids; KeyError for an id not in the corpus."""
        lookup = self._positions
        return np.array([lookup[d] for d in doc_ids], dtype=np.int64)

    def texts(self) -> list[str]:
        """Title and text joined for encoding (see :func:`join_title_text`)."""
        return [join_title_text(t, b) for t, b in zip(self.titles, self.body, strict=True)]

    def document(self, doc_id: str) -> dict[str, str]:
        i = self._positions[doc_id]
        return {"_id": doc_id, "title": self.titles[i], "text": self.body[i]}

    def fingerprint(self) -> str:
        """sha256 over ids, titles and texts (:func:`fingerprint`): identifies the corpus content for caches."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.ids, self.titles, self.body)
        return self._fingerprint

    @classmethod
    def from_records(cls, records: Mapping[str, Mapping[str, str]] | list[dict]) -> Corpus:
        """Build from `{id: {"title", "text"}}` or a list of `{"_id", "title", "text"}`."""
        items = records.items() if isinstance(records, Mapping) else ((r["_id"], r) for r in records)
        ids, titles, body = [], [], []
        for doc_id, rec in items:
            ids.append(str(doc_id))
            titles.append(rec.get("title", "") or "")
            body.append(rec.get("text", "") or "")
        if len(set(ids)) != len(ids):
            raise DensekitError("duplicate document ids in the records given")
        return cls(ids, titles, body)


def read_corpus(path: str | Path) -> Corpus:
    """Stream and validate a BEIR `corpus.jsonl` (or `.gz`)."""
    path = Path(path)
    ids: list[str] = []
    titles: list[str] = []
    body: list[str] = []
    seen: dict[str, int] = {}
    for number, obj in iter_jsonl(path):
        doc_id = _record_id(path, number, obj)
        if doc_id in seen:
            raise InputError(path, f'duplicate "_id" {doc_id!r} (first on line {seen[doc_id]})', number)
        seen[doc_id] = number
        ids.append(doc_id)
        titles.append(_text_field(path, number, obj, "title"))
        body.append(_text_field(path, number, obj, "text"))
    return Corpus(ids, titles, body, path=path, _positions={d: i for i, d in enumerate(ids)})


def read_queries(path: str | Path) -> dict[str, str]:
    """Stream and validate a BEIR `queries.jsonl` into `{query_id: text}` in file order."""
    path = Path(path)
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, obj in iter_jsonl(path):
        query_id = _record_id(path, number, obj)
        if query_id in queries:
            raise InputError(path, f'duplicate "_id" {query_id!r} (first on line {lines[query_id]})', number)
        lines[query_id] = number
        queries[query_id] = _text_field(path, number, obj, "text")
    return queries


Qrels = dict[str, dict[str, int]]


def read_qrels(path: str | Path) -> Qrels:
    """Read a BEIR qrels TSV into `{query_id: {doc_id: relevance}}`.

    The first line is either the BEIR header `query-id<TAB>corpus-id<TAB>score` or a judgement;
    anything else, a row without three tab-separated fields, or a non-integer score is an error.
    A (query, document) pair judged twice with different scores is an error naming both lines (no
    grade silently wins); an exact repeat of a row is accepted, since it changes nothing. A file with
    no judgement at all (only the header) is an error: every metric over it would be 0.
    """
    path = Path(path)
    qrels: Qrels = {}
    first_line: dict[tuple[str, str], int] = {}
    with open_text(path) as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if number == 1 and tuple(f.strip() for f in fields) == QRELS_HEADER:
                continue
            if len(fields) != 3:
                raise InputError(
                    path,
                    f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}",
                    number,
                )
            query_id, doc_id, score = (f.strip() for f in fields)
            if not query_id or not doc_id:
                raise InputError(path, "empty query-id or corpus-id", number)
            try:
                relevance = int(score)
            except ValueError:
                if number == 1:
                    raise InputError(
                        path, f"header must be {'<TAB>'.join(QRELS_HEADER)!r}, got {line!r}", number
                    ) from None
                raise InputError(path, f"score must be an integer, got {score!r}", number) from None
            docs = qrels.setdefault(query_id, {})
            if doc_id in docs and docs[doc_id] != relevance:
                raise InputError(
                    path,
                    f"query {query_id!r}, document {doc_id!r} judged {relevance} here but {docs[doc_id]} "
                    f"on line {first_line[(query_id, doc_id)]}; expected one score per pair",
                    number,
                )
            first_line.setdefault((query_id, doc_id), number)
            docs[doc_id] = relevance
    if not qrels:
        raise InputError(path, "no judgements: expected rows 'query-id<TAB>corpus-id<TAB>score' after the header")
    return qrels


def qrels_path(root: str | Path, split: str) -> Path:
    """The qrels file of `split` in a BEIR folder (`qrels/SPLIT.tsv` or `.tsv.gz`); an error naming the
    available splits when there is none."""
    root = Path(root)
    found = _find_file(root / "qrels", f"{split}.tsv")
    for candidate in (root / "qrels" / f"{split}.tsv", root / "qrels" / f"{split}.tsv.gz"):
        if found is None and candidate.exists():
            raise InputError(candidate, "is not a regular file (expected the split's qrels TSV)")
    if found is None:
        splits = ", ".join(available_splits(root)) or "none"
        raise DensekitError(f"{root}: unknown split {split!r}; available splits: {splits}")
    return found


def available_splits(root: str | Path) -> list[str]:
    qrels_dir = Path(root) / "qrels"
    if not qrels_dir.is_dir():
        return []
    names = {p.name.removesuffix(".gz").removesuffix(".tsv") for p in qrels_dir.iterdir()}
    return sorted(n for n in names if (qrels_dir / f"{n}.tsv").is_file() or (qrels_dir / f"{n}.tsv.gz").is_file())


@dataclass
class QrelsReport:
    """What the cross-check of qrels against corpus and queries found; qrels without any judgement
    are not OK (nothing could be evaluated with them)."""

    judgements: int
    queries_judged: int
    unknown_queries: int
    unknown_docs: int

    @property
    def ok(self) -> bool:
        return self.judgements > 0 and self.unknown_queries == 0 and self.unknown_docs == 0


def check_qrels(qrels: Qrels, queries: Mapping[str, str], corpus: Corpus) -> QrelsReport:
    unknown_q = sum(1 for q in qrels if q not in queries)
    unknown_d = sum(1 for docs in qrels.values() for d in docs if d not in corpus)
    return QrelsReport(
        judgements=sum(len(d) for d in qrels.values()),
        queries_judged=len(qrels),
        unknown_queries=unknown_q,
        unknown_docs=unknown_d,
    )


@dataclass
class BeirDataset:
    """A loaded BEIR dataset. `queries` holds only the queries judged in `split` when one is given."""

    name: str
    root: Path
    corpus: Corpus
    queries: dict[str, str]
    qrels: Qrels
    split: str | None
    report: QrelsReport | None = None


def data_dirs() -> list[Path]:
    """Directories listed in `$DENSEKIT_DATA` (os.pathsep-separated), in order."""
    raw = os.environ.get("DENSEKIT_DATA", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p]


def resolve_dataset(name_or_path: str | Path) -> Path:
    """Turn a BEIR folder path, or a dataset name found in `$DENSEKIT_DATA`, into a folder path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    name = str(name_or_path)
    if os.sep not in name and "/" not in name:
        for base in data_dirs():
            if (base / name).is_dir():
                return base / name
    if data_dirs():
        where = "not under " + ", ".join(str(d) for d in data_dirs()) + " ($DENSEKIT_DATA)"
    else:
        where = "and $DENSEKIT_DATA is not set, so names are not looked up anywhere"
    raise DensekitError(
        f"dataset {name!r} not found: {name!r} is not a directory, {where}. Give a BEIR folder's path, "
        f"set DENSEKIT_DATA to the folder holding {name}/, or fetch it with `densekit data download {name}`."
    )


def load_dataset(name_or_path: str | Path, split: str | None = None, check: bool = True) -> BeirDataset:
    """Load a BEIR folder; with `split`, also its qrels and only the queries they judge.

    Raises InputError for malformed files and DensekitError for an unknown split. Qrels that point
    at ids missing from the corpus or queries are reported with a :class:`DataWarning`.
    """
    root = resolve_dataset(name_or_path)
    corpus_path = _find_file(root, "corpus.jsonl")
    queries_path = _find_file(root, "queries.jsonl")
    if corpus_path is None:
        raise InputError(root / "corpus.jsonl", "missing: a BEIR folder needs corpus.jsonl (or .jsonl.gz)")
    if queries_path is None:
        raise InputError(root / "queries.jsonl", "missing: a BEIR folder needs queries.jsonl (or .jsonl.gz)")
    qrels: Qrels = {}
    if split is not None:
        qrels = read_qrels(qrels_path(root, split))
    corpus = read_corpus(corpus_path)
    queries = read_queries(queries_path)
    report = None
    if split is not None:
        report = check_qrels(qrels, queries, corpus)
        if check and not report.ok:
            warnings.warn(
                f"{root.name}/{split}: {report.unknown_queries} judged queries are not in queries.jsonl and "
                f"{report.unknown_docs} judged documents are not in corpus.jsonl",
                DataWarning,
                stacklevel=2,
            )
        queries = {q: queries[q] for q in qrels if q in queries}
    return BeirDataset(root.name, root, corpus, queries, qrels, split, report)


def check_dataset(name_or_path: str | Path) -> dict[str, object]:
    """`densekit data check`: every file of a BEIR folder read, and each split's qrels cross-checked
    against corpus and queries (counts of unknown ids; `ok` when there are none)."""
    root = resolve_dataset(name_or_path)
    ds = load_dataset(root, split=None)
    splits = {}
    for split in available_splits(root):
        report = check_qrels(read_qrels(qrels_path(root, split)), ds.queries, ds.corpus)
        splits[split] = {**report.__dict__, "ok": report.ok}
    return {
        "dataset": root.name,
        "path": str(root),
        "documents": len(ds.corpus),
        "queries": len(ds.queries),
        "splits": splits,
        "ok": all(s["ok"] for s in splits.values()),
    }


def load_queries(source: str | Path, split: str | None = None) -> dict[str, str]:
    """Queries from a plain queries.jsonl file, or from a BEIR folder/name (only those judged in `split`)."""
    if Path(source).is_file():
        if split is not None:
            raise DensekitError(f"{source}: a queries file has no qrels, so --split does not apply to it")
        return read_queries(source)
    return load_dataset(source, split=split).queries


def list_datasets() -> list[dict[str, object]]:
    """Every BEIR folder found under `$DENSEKIT_DATA`, with its splits."""
    found = []
    for base in data_dirs():
        if not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            if child.is_dir() and _find_file(child, "corpus.jsonl"):
                found.append({"name": child.name, "path": str(child), "splits": available_splits(child)})
    return found


class Run(dict):
    """A ranking: `{query_id: [(doc_id, score), ...]}`, each list sorted by descending score.

    Reads and writes TREC run files (`qid Q0 docid rank score tag`). A query with no hits has no
    line in a TREC file; evaluation counts such a judged query as 0 (see :mod:`densekit.eval.metrics`).
    `path` is the file a run was read from (None otherwise), so errors about its content can name it.
    """

    path: Path | None = None

    @classmethod
    def from_scores(cls, scores: Mapping[str, Mapping[str, float]]) -> Run:
        run = cls()
        for query_id, docs in scores.items():
            run[query_id] = sorted(((d, float(s)) for d, s in docs.items()), key=lambda x: (-x[1], x[0]))
        return run

    def to_dict(self) -> dict[str, dict[str, float]]:
        """`{query_id: {doc_id: score}}`, the shape pytrec_eval and BEIR take."""
        return {q: {d: float(s) for d, s in hits} for q, hits in self.items()}

    def top(self, k: int) -> Run:
        return Run({q: hits[:k] for q, hits in self.items()})

    def write_trec(self, path: str | Path, tag: str = "densekit") -> None:
        """Write a TREC run file atomically, each score in its shortest exact form.

        A fixed number of decimals would merge scores that differ below it into ties, which
        trec_eval and pytrec_eval break by document id: the file would score differently from
        the run it was written from.
        """
        with atomic_file(path) as handle:
            for query_id, hits in self.items():
                for rank, (doc_id, score) in enumerate(hits, start=1):
                    handle.write(f"{query_id} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")

    @classmethod
    def read_trec(cls, path: str | Path) -> Run:
        """Read a TREC run file; each line must be `qid Q0 docid rank score tag` with a finite score.

        An empty file (no line at all) is an InputError: there is nothing to evaluate.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "run file not found")
        scores: dict[str, dict[str, float]] = {}
        with open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                fields = line.split()
                if len(fields) != 6:
                    raise InputError(
                        path, f"expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}", number
                    )
                query_id, _, doc_id, rank, score, _ = fields
                try:
                    int(rank)
                    value = float(score)
                except ValueError:
                    message = f"rank must be an integer and score a number: {line.strip()!r}"
                    raise InputError(path, message, number) from None
                if not math.isfinite(value):
                    raise InputError(path, f"score must be a finite number, got {score!r}", number)
                docs = scores.setdefault(query_id, {})
                if doc_id in docs:
                    raise InputError(path, f"document {doc_id!r} appears twice for query {query_id!r}", number)
                docs[doc_id] = value
        if not scores:
            raise InputError(path, "empty run file: expected lines 'qid Q0 docid rank score tag'")
        run = cls.from_scores(scores)
        run.path = path
        return run
