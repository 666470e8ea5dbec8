"""The mining driver: sources -> teacher (and guide) scores -> filters -> sampler -> negatives file.

For each chunk of queries, every source proposes `depth` candidates; several sources are fused
(:func:`~densekit.mining.sources.fuse`). The teacher scores the candidates and the query's positives,
the guide (when given) does the same, the filters run in order (labelled positives are always
excluded first), and the sampler picks the negatives. A cross-encoder `scorer` (when given) scores
the positives and every written negative (``ce_score``); it scores every candidate only when a filter
reads its scores (the ``ce`` filter, or a vote it takes part in), since that costs one cross-encoder
pass per candidate. A BM25 source named as `bm25` lends its retrieval scores to a vote
(``bm25_score``). Memory stays bounded by the chunk: embeddings live on disk (mmap), FAISS returns
only the top `depth`, and scores are computed for candidates only.

Resuming: the file grows as `<out>.partial`, and after every chunk `<out>.partial.json` records the
configuration, how many queries are done, the byte length of the partial file and the statistics so
far (written atomically). `resume=True` checks the configuration, cuts the partial file back to the
recorded length (dropping anything a crash left after the last checkpoint) and carries on. Each
query's sample depends only on the seed and its id (:func:`~densekit.mining.samplers.query_rng`), and
query embeddings are cached before mining starts, so an interrupted and resumed run writes the same
bytes as an uninterrupted one. At the end the sidecars are written and the partial file is renamed
to `<out>`.

`removed_out` (optional) records what the filters removed: one JSON line per query that lost any
candidate, with the query, its positives and their teacher and guide scores, and every removed
candidate with its rank, teacher score, guide score and the filter that removed it. It grows and
resumes alongside `<out>` (its own `.partial` file, its length in the same checkpoint).

Example::

    teacher = DenseScorer(Encoder("all-MiniLM-L6-v2"), ds.corpus)
    miner = HardNegativeMiner(teacher, filters=[PercPosFilter(0.95)], negatives=4, depth=100)
    result = miner.mine(load_dataset("scifact", split="train"), "neg.jsonl")
    result.stats.table()
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densekit import __version__
from densekit.data import BeirDataset, fingerprint
from densekit.errors import DensekitError
from densekit.faults import fault_point
from densekit.io import write_json
from densekit.mining.filters import (
    CandidateFilter,
    Candidates,
    CrossEncoderFilter,
    ExcludePositives,
    GuideFilter,
    PercPosFilter,
    VoteFilter,
    apply_filters,
)
from densekit.mining.output import (
    NegativesRecord,
    append_lines,
    candidate_rows,
    checkpoint_path,
    config_path,
    partial_path,
    record_line,
    stats_path,
    truncate_to,
)
from densekit.mining.samplers import Sampler, TopSampler, query_rng
from densekit.mining.sources import CandidateSource, DenseScorer, DenseSource, RetrieverSource, fuse
from densekit.mining.stats import MiningStats
from densekit.mining.teachers import CrossEncoderScorer
from densekit.progress import announce, progress_bar


@dataclass
class MiningResult:
    out: Path
    config: dict
    stats: MiningStats
    resumed_at: int = 0


class HardNegativeMiner:
    """Mine hard negatives for the judged queries of a dataset (see the module docstring).

    Args:
        teacher: scores every candidate and positive; its FAISS search is the default source.
        sources: candidate sources (default: the teacher's dense search).
        filters: applied in order after excluding positives (default: TopK-PercPos 0.95).
        sampler: picks the negatives among the survivors (default: top).
        negatives: negatives per query (default 4); depth: candidates per source (default 100).
        fusion: "rrf" or "union" when there are several sources.
        guide: a GIST guide model; unless `filters` holds a GuideFilter (or a VoteFilter in which the
            guide votes), one with `guide_margin` is appended last.
        scorer: a cross-encoder whose scores of the positives and the written negatives are stored;
            needed by a CrossEncoderFilter and by a VoteFilter in which "ce" votes.
        bm25: the one of `sources` (a BM25 retriever) whose scores a VoteFilter's "bm25" voter reads.
        seed: seeds every random sampler (per query, see :func:`query_rng`).
        chunk_size: queries per step and per checkpoint.
        min_relevance: qrels at or above it are positives.
    """

    def __init__(
        self,
        teacher: DenseScorer,
        sources: list[CandidateSource] | None = None,
        filters: list[CandidateFilter] | None = None,
        sampler: Sampler | None = None,
        negatives: int = 4,
        depth: int = 100,
        fusion: str = "rrf",
        guide: DenseScorer | None = None,
        guide_margin: float = 0.0,
        seed: int = 0,
        chunk_size: int = 1024,
        min_relevance: int = 1,
        scorer: CrossEncoderScorer | None = None,
        bm25: RetrieverSource | None = None,
    ) -> None:
        if negatives < 1:
            raise DensekitError(f"negatives must be >= 1, got {negatives}")
        if depth < 1:
            raise DensekitError(f"depth must be >= 1, got {depth}")
        if chunk_size < 1:
            raise DensekitError(f"chunk size must be >= 1, got {chunk_size}")
        if seed < 0:
            raise DensekitError(f"seed must be >= 0, got {seed}")
        self.teacher = teacher
        self.sources = sources or [DenseSource(teacher, name="teacher")]
        filters = [PercPosFilter(0.95)] if filters is None else list(filters)
        if any(isinstance(f, GuideFilter) for f in filters) and guide is None:
            raise DensekitError("a guide filter needs a guide model")
        if bm25 is not None and bm25 not in self.sources:
            raise DensekitError("the bm25 voter must be one of the candidate sources")
        voters = {v for f in filters if isinstance(f, VoteFilter) for v in f.voters}
        available = {"teacher": True, "guide": guide is not None, "ce": scorer is not None, "bm25": bm25 is not None}
        option = {"guide": "a --guide model", "ce": "a cross-encoder (--scorer)", "bm25": "a BM25 --source"}
        for voter in sorted(voters):
            if not available[voter]:
                raise DensekitError(f"the vote of {voter!r} needs {option[voter]}")
        if any(isinstance(f, CrossEncoderFilter) for f in filters) and scorer is None:
            raise DensekitError("the ce filter needs a cross-encoder (--scorer)")
        if guide is not None and "guide" not in voters and not any(isinstance(f, GuideFilter) for f in filters):
            filters.append(GuideFilter(guide_margin))
        self.filters: list[CandidateFilter] = [ExcludePositives(), *filters]
        self.scorer = scorer
        self.bm25 = bm25
        # Scoring every candidate with a cross-encoder is costly: only when a filter reads the scores.
        self.score_all_candidates = scorer is not None and (
            "ce" in voters or any(isinstance(f, CrossEncoderFilter) for f in filters)
        )
        self.sampler = sampler or TopSampler()
        self.negatives = negatives
        self.depth = depth
        self.fusion = fusion
        self.guide = guide
        self.seed = seed
        self.chunk_size = chunk_size
        self.min_relevance = min_relevance
        fuse([["x"]], fusion, depth)  # validates the fusion name early

    # -- configuration -------------------------------------------------------------------------------

    def config(self, dataset: BeirDataset) -> dict:
        """Everything that determines the output; a resumed run must match it exactly."""
        query_ids = list(dataset.queries)
        return {
            "densekit_version": __version__,
            "dataset": {
                "name": dataset.name,
                "path": str(dataset.root),
                "split": dataset.split,
                "queries": len(query_ids),
                "queries_sha256": fingerprint(query_ids, [dataset.queries[q] for q in query_ids]),
                "documents": len(dataset.corpus),
                "corpus_sha256": dataset.corpus.fingerprint(),
            },
            "teacher": self.teacher.describe(),
            "guide": None if self.guide is None else self.guide.describe(),
            "scorer": None if self.scorer is None else self.scorer.describe(),
            "bm25_voter": None if self.bm25 is None else self.bm25.name,
            "sources": [s.describe() for s in self.sources],
            "fusion": self.fusion if len(self.sources) > 1 else None,
            "depth": self.depth,
            "filters": [f.describe() for f in self.filters],
            "sampler": self.sampler.describe(),
            "negatives": self.negatives,
            "seed": self.seed,
            "min_relevance": self.min_relevance,
        }

    def positives(self, dataset: BeirDataset, query_id: str) -> tuple[list[str], int]:
        """The query's positives present in the corpus (qrels order) and how many were missing."""
        judged = [d for d, rel in dataset.qrels.get(query_id, {}).items() if rel >= self.min_relevance]
        present = [d for d in judged if d in dataset.corpus]
        return present, len(judged) - len(present)

    # -- one query -----------------------------------------------------------------------------------

    def mine_query(
        self,
        candidates: Candidates,
        text: str,
        stats: MiningStats,
        removed_log: list[dict] | None = None,
        bm25_scores: dict[str, float] | None = None,
    ) -> dict:
        """Filter and sample one query's scored candidates; update `stats`; return its output record.

        `candidates` carries the fused candidate list with the teacher's (and guide's) scores of the
        candidates and positives (:meth:`score_candidates`); cross-encoder and BM25 scores are added here.
        When `removed_log` is a list, every removed candidate is appended to it as
        `{"id", "rank", "teacher_score", "guide_score", ..., "filter"}`, in filter order.
        `bm25_scores`: the bm25 source's scores of what it retrieved for this query.
        """
        query_id, positives = candidates.query_id, candidates.positive_ids
        candidates.extra_scores.update(self._extra_scores(text, candidates.doc_ids, positives, bm25_scores))
        removed_by: list[tuple[str, Candidates]] | None = [] if removed_log is not None else None
        survivors, removed = apply_filters(candidates, self.filters, removed_by)
        for label, gone in removed_by or []:
            removed_log.extend(candidate_rows(gone, range(len(gone)), label))  # type: ignore[union-attr]
        rng = query_rng(self.seed, query_id) if getattr(self.sampler, "random", True) else None
        chosen = self.sampler.sample(survivors.teacher_scores, self.negatives, rng)
        if self.scorer is not None and not self.score_all_candidates:  # positives and written negatives, one call
            positions = np.asarray(chosen, dtype=np.int64)
            scores = self.scorer.score(text, [*positives, *(survivors.doc_ids[i] for i in positions)])
            candidates.extra_scores["ce"][1][:] = scores[: len(positives)]  # shared with the survivors
            survivors.extra_scores["ce"][0][positions] = scores[len(positives) :]
        negatives = candidate_rows(survivors, chosen)
        stats.candidates_seen += len(candidates)
        stats.add_removed(removed)
        stats.candidates_kept += len(survivors)
        stats.negatives_written += len(negatives)
        stats.queries_short += len(negatives) < self.negatives
        stats.queries_without_negatives += not negatives
        stats.sum_positive_score += float(candidates.positive_scores.sum())
        stats.positives_scored += len(positives)
        stats.sum_negative_score += sum(n["teacher_score"] for n in negatives)
        return {
            "query_id": query_id,
            "query": text,
            "positives": positives,
            "positive_scores": dict(zip(positives, map(float, candidates.positive_scores), strict=True)),
            "positive_guide_scores": None
            if candidates.positive_guide_scores is None
            else dict(zip(positives, map(float, candidates.positive_guide_scores), strict=True)),
            **{
                f"positive_{name}_scores": {
                    p: float(v) for p, v in zip(positives, scores, strict=True) if not np.isnan(v)
                }
                for name, (_, scores) in candidates.extra_scores.items()
            },
            "negatives": negatives,
        }

    def score_candidates(
        self,
        query_ids: list[str],
        positives: list[list[str]],
        candidate_lists: list[list[list[str]]],
        searched: list[np.ndarray] | None = None,
    ) -> list[Candidates]:
        """Fuse each query's source lists and score candidates and positives with the teacher (and
        guide), the whole chunk at once (:meth:`DenseScorer.score_lists`).

        `searched`: the teacher's scores of the candidates when its own exact search is the only source
        (the scores that search computed; only the positives are then gathered and scored).
        """
        teacher_vectors = self.teacher.query_vectors(query_ids)
        fused = [
            fuse(lists, self.fusion, self.depth, teacher_score=lambda ids, v=vector: self.teacher.score(v, ids))
            for lists, vector in zip(candidate_lists, teacher_vectors, strict=True)
        ]
        n = len(fused)
        twice = np.concatenate([np.arange(n)] * 2)  # each query's vector for its candidates and positives
        if searched is None:
            teacher = self.teacher.score_lists(teacher_vectors[twice], fused + positives)
        else:
            teacher = list(searched) + self.teacher.score_lists(teacher_vectors, positives)
        guide: list[np.ndarray | None] = [None] * (2 * len(fused))
        if self.guide is not None:
            guide = self.guide.score_lists(self.guide.query_vectors(query_ids)[twice], fused + positives)
        return [
            Candidates(
                query_id,
                fused[i],
                teacher[i],
                positives[i],
                teacher[n + i],
                guide_scores=guide[i],
                positive_guide_scores=guide[n + i],
            )
            for i, query_id in enumerate(query_ids)
        ]

    def _extra_scores(
        self, text: str, fused: list[str], positives: list[str], bm25_scores: dict[str, float] | None
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Cross-encoder and BM25 scores of the candidates and positives (NaN: not scored)."""
        extra = {}
        if self.scorer is not None:
            if self.score_all_candidates:
                scores = self.scorer.score(text, [*fused, *positives])
                extra["ce"] = (scores[: len(fused)], scores[len(fused) :])
            else:  # scored after sampling
                extra["ce"] = tuple(np.full(len(ids), np.nan, dtype=np.float32) for ids in (fused, positives))
        if bm25_scores is not None:
            extra["bm25"] = tuple(
                np.array([bm25_scores.get(d, np.nan) for d in ids], dtype=np.float32) for ids in (fused, positives)
            )
        return extra

    # -- the run -------------------------------------------------------------------------------------

    def mine(
        self,
        dataset: BeirDataset,
        out: str | Path,
        resume: bool = False,
        on_chunk: Callable[[int], None] | None = None,
        removed_out: str | Path | None = None,
    ) -> MiningResult:
        """Mine every judged query of `dataset` into `out` (JSON lines) and its sidecars.

        `resume=True` continues an interrupted run with the same configuration (see the module
        docstring). `on_chunk(queries_done)` is called after each checkpoint. `removed_out` also
        writes what each filter removed (see the module docstring).
        """
        out = Path(out)
        removed_out = None if removed_out is None else Path(removed_out)
        if removed_out is not None and removed_out.resolve() == out.resolve():
            raise DensekitError(f"{removed_out}: the removed-candidates file must differ from --out")
        config = self.config(dataset)
        query_ids = list(dataset.queries)
        partial, checkpoint = partial_path(out), checkpoint_path(out)
        removed_partial = None if removed_out is None else partial_path(removed_out)
        stats, done, removed_bytes = self._start(out, config, resume, removed_out)
        stats.queries = len(query_ids)
        stats.negatives_per_query = self.negatives
        resumed_at = done
        texts = [dataset.queries[q] for q in query_ids]
        for scorer in self._scorers():
            scorer.prepare_queries(query_ids, texts)

        bar = progress_bar("mining", total=len(query_ids), unit="query")
        bar.update(done)
        while done < len(query_ids):
            started = time.perf_counter()
            chunk = query_ids[done : done + self.chunk_size]
            lines, removed_lines = self._mine_chunk(dataset, chunk, stats, removed_out is not None)
            size = append_lines(partial, lines)
            if removed_partial is not None:
                removed_bytes = append_lines(removed_partial, removed_lines)
            done += len(chunk)
            stats.seconds += time.perf_counter() - started
            write_json(
                checkpoint,
                {
                    "config": config,
                    "queries_done": done,
                    "bytes": size,
                    "removed_out": None if removed_out is None else str(removed_out),
                    "removed_bytes": removed_bytes,
                    "stats": stats.to_json(),
                },
            )
            fault_point("mining-chunk")
            bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk(done)
        bar.close()

        sidecar = {
            **config,
            "run": {
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "chunk_size": self.chunk_size,
                "resumed_at": resumed_at,
            },
        }
        write_json(config_path(out), sidecar)
        write_json(stats_path(out), stats.to_json())
        os.replace(partial, out)
        if removed_partial is not None:
            os.replace(removed_partial, removed_out)  # type: ignore[arg-type]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(checkpoint)
        return MiningResult(out, sidecar, stats, resumed_at)

    def _mine_chunk(
        self, dataset: BeirDataset, chunk: list[str], stats: MiningStats, log_removed: bool = False
    ) -> tuple[list[str], list[str]]:
        """Output lines of the chunk's mined queries, and their removed-candidate lines when asked."""
        mined: list[tuple[str, list[str]]] = []
        for query_id in chunk:
            positives, missing = self.positives(dataset, query_id)
            stats.positives_missing_from_corpus += missing
            if positives:
                mined.append((query_id, positives))
            else:
                stats.queries_without_positives += 1
        if not mined:
            return [], []
        ids = [q for q, _ in mined]
        texts = [dataset.queries[q] for q in ids]
        per_source, bm25_scores, searched = [], None, None
        for source in self.sources:
            if source is self.bm25:
                scored = source.scored_candidates(ids, texts, self.depth)
                bm25_scores = [dict(hits) for hits in scored]
                per_source.append([[doc_id for doc_id, _ in hits] for hits in scored])
            elif isinstance(source, DenseSource) and source.scorer is self.teacher and len(self.sources) == 1:
                found, searched = source.scored_candidates(ids, texts, self.depth)
                per_source.append(found)
            else:
                per_source.append(source.candidates(ids, texts, self.depth))
        candidates = self.score_candidates(
            ids, [p for _, p in mined], [[lists[i] for lists in per_source] for i in range(len(ids))], searched
        )
        lines, removed_lines = [], []
        for i, query_candidates in enumerate(candidates):
            removed: list[dict] | None = [] if log_removed else None
            record = self.mine_query(
                query_candidates, texts[i], stats, removed, None if bm25_scores is None else bm25_scores[i]
            )
            NegativesRecord.from_json(record)  # the schema the trainer reads: never write a line it refuses
            lines.append(record_line(record))  # the same bytes as the checked record's .line()
            if removed:
                removed_lines.append(
                    record_line({**{k: v for k, v in record.items() if k != "negatives"}, "removed": removed})
                )
        stats.queries_mined += len(mined)
        for scorer in self._scorers():
            scorer.release()  # keeps resident memory to one chunk's pages (see densekit.index.mapped)
        return lines, removed_lines

    def _scorers(self) -> list[DenseScorer]:
        """Every dense model of the run: teacher, guide and any other dense source's."""
        scorers = [self.teacher] + ([self.guide] if self.guide is not None else [])
        extra = [s.scorer for s in self.sources if isinstance(s, DenseSource) and s.scorer not in scorers]
        return scorers + extra

    def _start(
        self, out: Path, config: dict, resume: bool, removed_out: Path | None = None
    ) -> tuple[MiningStats, int, int]:
        """Fresh statistics, 0 and 0, or the checkpoint's statistics, position and removed-file length."""
        partial, checkpoint = partial_path(out), checkpoint_path(out)
        removed_partial = None if removed_out is None else partial_path(removed_out)
        if resume and checkpoint.is_file():
            with open(checkpoint, encoding="utf-8") as handle:
                state = json.load(handle)
            saved = state["config"]
            differing = sorted(k for k in set(config) | set(saved) if config.get(k) != saved.get(k))
            if differing:
                raise DensekitError(
                    f"{checkpoint}: the unfinished run used a different configuration "
                    f"({', '.join(differing)} differ); run without --resume to start over"
                )
            recorded = state.get("removed_out")
            if recorded != (None if removed_out is None else str(removed_out)):
                raise DensekitError(
                    f"{checkpoint}: the unfinished run wrote removed candidates to {recorded or 'no file'}, "
                    f"not {removed_out or 'no file'}; resume with the same file or run without --resume"
                )
            truncate_to(partial, state["bytes"])
            if removed_partial is not None:
                truncate_to(removed_partial, state["removed_bytes"])
            announce(f"resuming {out} after {state['queries_done']} queries")
            return (
                MiningStats.from_json(state["stats"]),
                int(state["queries_done"]),
                int(state.get("removed_bytes") or 0),
            )
        if resume:
            announce(f"no unfinished run of {out} to resume: starting from the beginning")
        elif checkpoint.is_file() or partial.is_file():
            announce(f"discarding the unfinished run of {out} (pass --resume to continue it)")
        for path in (partial, removed_partial):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb"):
                    pass
        with contextlib.suppress(FileNotFoundError):
            os.unlink(checkpoint)
        return MiningStats(), 0, 0
