"""Reproducibility matrix: run published configurations and grade each score OK or OFF.

Modelled on Pyserini's two-click reproductions: expected scores are data
(`densekit/eval/expected_scores.json`: retriever x dataset x metric, each with its source), and
:func:`reproduce` runs each (retriever, dataset, split) once, scores every expected metric, and
grades it:

- ``OK``: ``|measured - expected| <= tolerance``;
- ``OFF``: outside the tolerance (the difference is reported);
- ``SKIPPED``: the retriever cannot be built here (a model not fetched, the BM25 module or Java
  missing); the reason is given, and a skipped entry never counts as OK;
- ``ERROR``: building or running it failed; the reason is given.

Scores follow :func:`densekit.eval.metrics.evaluate`'s rule: a judged query the retriever returns
nothing for scores 0 (``trec_eval -c``), which is how Pyserini's published BM25 numbers are computed;
``skip_missing_queries=True`` (CLI ``--skip-missing-queries``) averages over queries with results
instead (BEIR's pytrec_eval convention). Each grade records the rule and how many judged queries
had no results.

How to build the retriever of an entry is a small registry keyed by the retriever's ``kind``
(:data:`RETRIEVER_BUILDERS`, extended with :func:`register_builder`): ``dense`` builds an Encoder
over a flat FAISS index (embeddings from densekit's cache when present), ``bm25`` asks
`densekit.retriever.bm25` for the named backend and refuses any other backend in its place.

Example::

    grades = reproduce(load_expected(), only=["all-MiniLM-L6-v2"])
    [g.grade for g in grades]            # ['OK', 'OK']
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from densekit.data import BeirDataset, load_dataset
from densekit.errors import DensekitError, InputError
from densekit.eval.metrics import evaluate, parse_metric
from densekit.progress import announce
from densekit.protocols import Retriever

EXPECTED_SCORES = Path(__file__).with_name("expected_scores.json")
DEFAULT_TOLERANCE = 0.001
DEPTH = 1000
GRADES = ("OK", "OFF", "SKIPPED", "ERROR")


class RetrieverUnavailable(Exception):
    """Raised by a builder when its retriever cannot be built here; the entry is graded SKIPPED."""


@dataclass(frozen=True)
class ExpectedScore:
    """A published score: `retriever` on `dataset`/`split` reaches `value` on `metric` (per `source`)."""

    retriever: str
    dataset: str
    split: str
    metric: str
    value: float
    source: str
    tolerance: float = DEFAULT_TOLERANCE
    ignore_identical_ids: bool = False


@dataclass
class Grade:
    """The outcome for one expected score."""

    retriever: str
    dataset: str
    split: str
    metric: str
    expected: float
    tolerance: float
    grade: str
    measured: float | None = None
    difference: float | None = None
    reason: str | None = None
    source: str = ""
    seconds: float | None = None
    config: dict = field(default_factory=dict)
    missing_queries: int | None = None
    missing_query_rule: str | None = None

    @classmethod
    def of(cls, expected: ExpectedScore, grade: str, **details) -> Grade:
        """The grade of `expected`, copying its identity, value, tolerance and source."""
        return cls(
            expected.retriever,
            expected.dataset,
            expected.split,
            expected.metric,
            expected.value,
            expected.tolerance,
            grade,
            source=expected.source,
            **details,
        )

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ExpectedTable:
    """The expected-scores file: retriever specifications and the scores they should reach."""

    retrievers: dict[str, dict[str, Any]]
    scores: list[ExpectedScore]
    path: Path | None = None


def load_expected(path: str | Path = EXPECTED_SCORES) -> ExpectedTable:
    """Read and validate an expected-scores file (see `densekit/eval/expected_scores.json`)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON ({exc.msg})", exc.lineno) from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("retrievers"), dict)
        or not isinstance(data.get("expected"), list)
    ):
        raise InputError(path, 'expected an object with "retrievers" (object) and "expected" (list)')
    default_tol = float(data.get("default_tolerance", DEFAULT_TOLERANCE))
    for name, spec in data["retrievers"].items():
        if not isinstance(spec, dict) or "kind" not in spec:
            raise InputError(path, f'retriever {name!r} needs a "kind" ({", ".join(RETRIEVER_BUILDERS)})')
    required = ("retriever", "dataset", "metric", "value", "source")
    scores = []
    for i, row in enumerate(data["expected"]):
        missing = [k for k in required if k not in row]
        if missing:
            raise InputError(path, f"expected[{i}] lacks {', '.join(missing)}")
        if row["retriever"] not in data["retrievers"]:
            raise InputError(path, f"expected[{i}] names unknown retriever {row['retriever']!r}")
        parse_metric(row["metric"])
        scores.append(
            ExpectedScore(
                retriever=row["retriever"],
                dataset=row["dataset"],
                split=row.get("split", "test"),
                metric=row["metric"].lower(),
                value=float(row["value"]),
                source=row["source"],
                tolerance=float(row.get("tolerance", default_tol)),
                ignore_identical_ids=bool(row.get("ignore_identical_ids", False)),
            )
        )
    return ExpectedTable(data["retrievers"], scores, path)


# ----------------------------------------------------------------------------- builders

#: (retriever spec, dataset, options) -> (retriever, configuration to record)
RetrieverBuilder = Callable[[dict[str, Any], BeirDataset, dict[str, Any]], tuple[Retriever, dict]]


def build_dense(spec: dict[str, Any], dataset: BeirDataset, options: dict[str, Any]) -> tuple[Retriever, dict]:
    """An Encoder over a flat inner-product index (exact search), as MTEB evaluates dense models."""
    from densekit.retriever.compose import RetrieverSpec, build_retriever
    from densekit.retriever.models import resolve_model

    try:
        resolve_model(spec["model"])
    except DensekitError as exc:
        raise RetrieverUnavailable(str(exc)) from None
    wanted = RetrieverSpec(
        model=spec["model"],
        factory=spec.get("factory", "Flat"),
        device=options.get("device"),
        batch_size=options.get("batch_size", 64),
        cache=options.get("cache", True),
    )
    retriever, config = build_retriever(wanted, dataset.corpus)
    return retriever, {"kind": "dense", **config}


def build_bm25(spec: dict[str, Any], dataset: BeirDataset, options: dict[str, Any]) -> tuple[Retriever, dict]:
    """BM25 from `densekit.retriever.bm25` with the spec's backend (Pyserini's k1=0.9, b=0.4 by default).

    Only the named backend is accepted: a fallback backend reproducing Lucene's numbers would not be
    a reproduction, so Java being unavailable skips the entry (with the reason) instead.
    """
    try:
        from densekit.retriever.bm25 import BM25Retriever
        from densekit.retriever.java import JavaUnavailable
    except ImportError as exc:
        raise RetrieverUnavailable(f"densekit.retriever.bm25 is not available ({exc})") from None
    backend = spec.get("backend", "lucene")
    params = {k: spec[k] for k in ("k1", "b") if k in spec}
    try:
        retriever = BM25Retriever.build(dataset.corpus, backend=backend, **params)
    except JavaUnavailable as exc:
        raise RetrieverUnavailable(f"BM25 backend {backend!r}: {exc}") from None
    if retriever.backend != backend:
        raise RetrieverUnavailable(f"BM25 backend {backend!r} unavailable here (got {retriever.backend!r})")
    return retriever, {"kind": "bm25", **retriever.describe()}


RETRIEVER_BUILDERS: dict[str, RetrieverBuilder] = {"dense": build_dense, "bm25": build_bm25}


def register_builder(kind: str, builder: RetrieverBuilder) -> None:
    """Teach :func:`reproduce` to build retrievers of `kind` (e.g. a hybrid retriever)."""
    RETRIEVER_BUILDERS[kind] = builder


# ----------------------------------------------------------------------------- running


def grade_score(expected: ExpectedScore, measured: float) -> str:
    """``OK`` when `measured` is within the entry's tolerance of the published value, else ``OFF``."""
    # The small epsilon keeps a difference equal to the tolerance (e.g. 0.001) from failing on float noise.
    return "OK" if abs(measured - expected.value) <= expected.tolerance + 1e-12 else "OFF"


def select(
    scores: Iterable[ExpectedScore], only: Sequence[str] | None = None, datasets: Sequence[str] | None = None
) -> list[ExpectedScore]:
    """Entries whose retriever matches one of the `only` globs and whose dataset is in `datasets`."""
    chosen = [
        s
        for s in scores
        if (not only or any(fnmatch.fnmatch(s.retriever, pattern) for pattern in only))
        and (not datasets or s.dataset in datasets)
    ]
    if not chosen:
        raise DensekitError(
            f"no expected score matches retriever {list(only or [])} and dataset {list(datasets or [])}"
        )
    return chosen


def reproduce(
    table: ExpectedTable,
    only: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    tolerance: float | None = None,
    options: dict[str, Any] | None = None,
    skip_missing_queries: bool = False,
) -> list[Grade]:
    """Run every selected entry (one retrieval per retriever, dataset and split) and grade it.

    Judged queries without results score 0 unless `skip_missing_queries` (see the module docstring).
    """
    options = options or {}
    entries = select(table.scores, only, datasets)
    groups: dict[tuple[str, str, str], list[ExpectedScore]] = {}
    for entry in entries:
        groups.setdefault((entry.retriever, entry.dataset, entry.split), []).append(entry)
    grades: list[Grade] = []
    loaded: dict[tuple[str, str], BeirDataset] = {}
    for (retriever_name, dataset_name, split), group in groups.items():
        spec = table.retrievers[retriever_name]
        if tolerance is not None:
            group = [ExpectedScore(**{**asdict(e), "tolerance": tolerance}) for e in group]

        def fail(grade: str, reason: str, group=group) -> None:
            grades.extend(Grade.of(e, grade, reason=reason) for e in group)

        builder = RETRIEVER_BUILDERS.get(spec["kind"])
        if builder is None:
            fail(
                "ERROR",
                f"no builder for retriever kind {spec['kind']!r}; known: {', '.join(RETRIEVER_BUILDERS)}",
            )
            continue
        start = time.perf_counter()
        try:
            key = (dataset_name, split)
            if key not in loaded:
                loaded[key] = load_dataset(dataset_name, split=split)
            dataset = loaded[key]
            retriever, config = builder(spec, dataset, options)
            run = retriever.search(dataset.queries, DEPTH)
        except RetrieverUnavailable as exc:
            announce(f"reproduce: skipping {retriever_name} on {dataset_name}: {exc}")
            fail("SKIPPED", str(exc))
            continue
        except DensekitError as exc:
            fail("ERROR", str(exc))
            continue
        seconds = time.perf_counter() - start
        for ignore_ids in sorted({e.ignore_identical_ids for e in group}):
            metrics = [e.metric for e in group if e.ignore_identical_ids == ignore_ids]
            try:
                result = evaluate(
                    dataset.qrels,
                    run,
                    metrics,
                    ignore_identical_ids=ignore_ids,
                    skip_missing_queries=skip_missing_queries,
                )
            except DensekitError as exc:
                grades.extend(
                    Grade.of(e, "ERROR", reason=str(exc)) for e in group if e.ignore_identical_ids == ignore_ids
                )
                continue
            for e in (e for e in group if e.ignore_identical_ids == ignore_ids):
                measured = result.metrics[e.metric]
                grades.append(
                    Grade.of(
                        e,
                        grade_score(e, measured),
                        measured=measured,
                        difference=measured - e.value,
                        seconds=round(seconds, 1),
                        config={**config, "ignore_identical_ids": ignore_ids, "depth": DEPTH},
                        missing_queries=result.missing_queries,
                        missing_query_rule=result.missing_query_rule,
                    )
                )
    return grades
