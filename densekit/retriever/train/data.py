"""Training tuples from a negatives file, a batch sampler without duplicate positives, a collator.

The negatives file is the mining output, read through its one schema, :mod:`densekit.negatives`
(JSON lines, one query per line: ids, positives, ranked negatives, optional scores).
Each (query, positive) pair becomes one :class:`TrainingExample` holding the query's first
`negatives_per_query` negatives in rank order and, for distillation, a teacher's stored score of
the positive and of each of those negatives. :class:`NoDuplicatesBatchSampler` deals examples into
batches so that no batch holds the same query or the same positive document twice (a repeated
positive would be an in-batch false negative). Its order depends only on the seed and the epoch,
so a data position ``(epoch, batch)`` is enough to resume exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from densekit.data import Corpus
from densekit.errors import InputError
from densekit.negatives import NegativesRecord, iter_negatives, positive_scores_key
from densekit.progress import announce
from densekit.retriever.train.distill import DistillInputs

# The default teacher of distillation: the strongest the miner stores (a cross-encoder, then the GIST
# guide, then the dense miner itself), then any other score in file order.
TEACHER_PREFERENCE = ("ce_score", "guide_score", "teacher_score")


@dataclass(frozen=True)
class TrainingExample:
    """One query, one positive document and the query's mined negatives (document ids)."""

    query_id: str
    query: str
    positive_id: str
    negative_ids: tuple[str, ...]
    positive_ids: frozenset[str]  # every labelled positive of the query: never used as its negative
    teacher_scores: tuple[float, ...] | None = None  # distillation: teacher's score of positive, then negatives


def resolve_teacher_score(path: str | Path) -> str:
    """The score key distillation reads by default: the first of :data:`TEACHER_PREFERENCE` (then any
    other ``<name>_score`` in file order) that the file's first record with negatives holds for its
    first negative and, as ``positive_<name>_scores``, for its positives.

    Raises InputError naming that line when it holds none (or the file has no negatives at all).
    """
    for line, record in iter_negatives(path):
        if not record.negatives:
            continue
        present = [
            key
            for key, value in record.negatives[0].scores.items()
            if value is not None and record.positive_scores.get(positive_scores_key(key))
        ]
        ordered = [k for k in TEACHER_PREFERENCE if k in present] + [k for k in present if k not in TEACHER_PREFERENCE]
        if not ordered:
            raise InputError(
                path,
                "distillation needs teacher scores: expected a negative with a <name>_score (e.g. ce_score from "
                "`densekit mine --scorer`) and the positives' positive_<name>_scores",
                line,
            )
        return ordered[0]
    raise InputError(path, "distillation needs mined negatives with teacher scores; the file has no negatives")


def _teacher_scores(
    path: str | Path, line: int, record: NegativesRecord, positive: str, negatives: list, key: str, wanted: int
) -> tuple[float, ...]:
    """The teacher's score of `positive` and of each of `negatives`; InputError when one is missing."""
    positive_key = positive_scores_key(key)
    expectation = f"distillation with teacher score {key} needs every positive's and the first {wanted} negatives'"
    query = f"query {record.query_id!r}"
    score = (record.positive_scores.get(positive_key) or {}).get(positive)
    if score is None:
        raise InputError(path, f'{query}: positive {positive!r} has no score in "{positive_key}" ({expectation})', line)
    scores = [float(score)]
    for negative in negatives:
        value = negative.scores.get(key)
        if value is None:
            raise InputError(path, f'{query}: negative {negative.id!r} has no "{key}" ({expectation})', line)
        scores.append(float(value))
    return tuple(scores)


def read_training_examples(
    path: str | Path, corpus: Corpus, negatives_per_query: int, teacher_score: str | None = None
) -> list[TrainingExample]:
    """Read a negatives file (:func:`densekit.negatives.iter_negatives`, the schema mining writes) into
    examples, negatives in rank order (equal ranks keep file order).

    `teacher_score` (a negative's ``<name>_score`` key, for distillation): each example also carries
    that score of its positive (from ``positive_<name>_scores``) and of each chosen negative.

    Raises InputError (file and line) for anything the schema refuses, for an id absent from
    `corpus`, and for a teacher score that is missing. A query with fewer negatives than asked (the
    miner's filters can leave too few) keeps those it has; how many such queries there are is announced.
    """
    examples: list[TrainingExample] = []
    short = 0
    for line, record in iter_negatives(path):
        ranked = sorted(record.negatives, key=lambda n: n.rank)
        negative_ids = [n.id for n in ranked]
        if len(negative_ids) < negatives_per_query:
            short += 1
        for doc_id in (*record.positives, *negative_ids):
            if doc_id not in corpus:
                raise InputError(path, f"document {doc_id!r} is not in the corpus {corpus.path or ''}", line)
        chosen = tuple(negative_ids[:negatives_per_query])
        for positive in record.positives:
            scores = None
            if teacher_score is not None:
                scores = _teacher_scores(
                    path, line, record, positive, ranked[:negatives_per_query], teacher_score, negatives_per_query
                )
            examples.append(
                TrainingExample(record.query_id, record.query, positive, chosen, frozenset(record.positives), scores)
            )
    if not examples:
        raise InputError(path, "no training examples (the file is empty)")
    if short:
        announce(
            f"{path}: {short} queries have fewer than {negatives_per_query} negatives; they train with those they have"
        )
    return examples


class NoDuplicatesBatchSampler:
    """Seeded batches in which no query and no positive document appears twice.

    Each epoch shuffles the examples with ``seed + epoch`` and fills batches greedily; an example
    that would repeat a query or positive waits for the next batch (sentence-transformers'
    NoDuplicatesBatchSampler does the same). The last batch may be smaller, unless `drop_last`.
    `batches(epoch)` is a pure function of (examples, seed, epoch), which makes resuming exact.

    A full batch stops the scan, so an epoch costs about one pass per batch over the examples that
    collided, not over all of them: NFCorpus train (110,575 pairs of 2,590 queries, up to 1,363 per
    query) made the plain rule quadratic; now it takes 0.75 s and gives 3,455 full batches of 32 and
    2 short ones. A query with more positives than the epoch has batches would end it in a tail of
    one-example batches.

    `one_per_query`: each epoch first draws one example per query (the query's positive for that
    epoch, uniformly from its examples, with the epoch's generator), then shuffles and batches
    those; the epoch has as many examples as there are queries.
    """

    def __init__(
        self,
        examples: list[TrainingExample],
        batch_size: int,
        seed: int,
        drop_last: bool = False,
        one_per_query: bool = False,
    ) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.one_per_query = one_per_query
        self._by_query: list[list[int]] = []
        if one_per_query:
            groups: dict[str, list[int]] = {}
            for index, example in enumerate(examples):
                groups.setdefault(example.query_id, []).append(index)
            self._by_query = list(groups.values())
        self._cached: tuple[int, list[list[int]]] | None = None

    def batches(self, epoch: int) -> list[list[int]]:
        if self._cached is not None and self._cached[0] == epoch:
            return [list(batch) for batch in self._cached[1]]
        result = self._batches(epoch)
        self._cached = (epoch, result)
        return [list(batch) for batch in result]

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed + epoch)
        if self.one_per_query:
            order = [group[rng.randrange(len(group))] for group in self._by_query]
        else:
            order = list(range(len(self.examples)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        pending = order
        while pending:
            batch: list[int] = []
            used: set[str] = set()
            waiting: list[int] = []
            for position, index in enumerate(pending):
                if len(batch) == self.batch_size:  # full: the rest waits, in order, without a scan
                    waiting.extend(pending[position:])
                    break
                example = self.examples[index]
                keys = {"q:" + example.query_id, "d:" + example.positive_id}
                if keys & used:
                    waiting.append(index)
                else:
                    batch.append(index)
                    used |= keys
            batches.append(batch)
            pending = waiting
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return len(self.batches(0))


@dataclass
class ContrastiveBatch:
    """One batch, laid out for the loss.

    Documents are ordered shard by shard; within a shard, the positives of its queries, then their
    negatives (query-major). `positive_index[i]` is query i's positive column; `exclude[i, j]` marks
    documents that must not count as query i's negatives (another of its labelled positives, or a
    repeat of a document already in the batch, so that every document counts once).
    `query_features`/`document_features` are per shard (one entry per process).
    """

    query_ids: list[str]
    document_ids: list[str]
    positive_index: torch.Tensor
    exclude: torch.Tensor
    query_features: list[dict[str, torch.Tensor]]
    document_features: list[dict[str, torch.Tensor]]
    distill: DistillInputs | None = None  # each query's own candidate columns and their teacher scores

    @property
    def size(self) -> int:
        return len(self.query_ids)


class ContrastiveCollator:
    """Tokenises a batch of examples (every text is tokenised once and remembered) and pads it.

    `shards` splits the batch into equal parts, one per process, as DDP needs; the layout of
    documents follows the shards so that gathering the shards' embeddings gives the global order
    (shards may hold different numbers of documents when queries have fewer negatives).
    """

    def __init__(
        self,
        tokenizer,
        corpus: Corpus,
        max_length: int,
        query_max_length: int,
        do_lower_case: bool = False,
        query_prompt: str = "",
        document_prompt: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.do_lower_case = do_lower_case
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self._query_tokens: dict[str, list[int]] = {}
        self._doc_tokens: dict[str, list[int]] = {}

    def _tokens(self, texts: list[str], max_length: int) -> list[list[int]]:
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        return self.tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]

    def _query_ids(self, examples: list[TrainingExample]) -> list[list[int]]:
        missing = [e for e in examples if e.query_id not in self._query_tokens]
        if missing:
            tokens = self._tokens([self.query_prompt + e.query for e in missing], self.query_max_length)
            self._query_tokens.update({e.query_id: t for e, t in zip(missing, tokens, strict=False)})
        return [self._query_tokens[e.query_id] for e in examples]

    def _doc_ids(self, doc_ids: list[str]) -> list[list[int]]:
        missing = list(dict.fromkeys(d for d in doc_ids if d not in self._doc_tokens))
        if missing:
            texts = [self.document_prompt + t for t in self._texts(missing)]
            self._doc_tokens.update(zip(missing, self._tokens(texts, self.max_length), strict=False))
        return [self._doc_tokens[d] for d in doc_ids]

    def _texts(self, doc_ids: list[str]) -> list[str]:
        from densekit.data import join_title_text

        out = []
        for doc_id in doc_ids:
            doc = self.corpus.document(doc_id)
            out.append(join_title_text(doc["title"], doc["text"]))
        return out

    def _pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")

    def __call__(self, examples: list[TrainingExample], shards: int = 1) -> ContrastiveBatch:
        if len(examples) % shards:
            raise ValueError(f"batch of {len(examples)} does not split into {shards} equal shards")
        per = len(examples) // shards
        query_ids: list[str] = []
        document_ids: list[str] = []
        positive_index: list[int] = []
        query_features, document_features = [], []
        for s in range(shards):
            part = examples[s * per : (s + 1) * per]
            offset = len(document_ids)
            positive_index += [offset + i for i in range(len(part))]
            docs = [e.positive_id for e in part] + [d for e in part for d in e.negative_ids]
            query_ids += [e.query_id for e in part]
            document_ids += docs
            query_features.append(self._pad(self._query_ids(part)))
            document_features.append(self._pad(self._doc_ids(docs)))
        # A document in the batch twice (two queries mined the same negative, or one query's negative
        # is another's positive) counts once in every query's denominator: only its first column
        # counts, except that a query's own positive column always does.
        first_column: dict[str, int] = {}
        for j, doc_id in enumerate(document_ids):
            first_column.setdefault(doc_id, j)
        exclude = torch.zeros(len(examples), len(document_ids), dtype=torch.bool)
        for i, example in enumerate(examples):
            for j, doc_id in enumerate(document_ids):
                if j != positive_index[i] and (doc_id in example.positive_ids or first_column[doc_id] != j):
                    exclude[i, j] = True
        return ContrastiveBatch(
            query_ids,
            document_ids,
            torch.tensor(positive_index),
            exclude,
            query_features,
            document_features,
            distill_inputs(examples, shards),
        )


def distill_inputs(examples: list[TrainingExample], shards: int = 1) -> DistillInputs | None:
    """Each query's own columns (its positive, then its negatives) in the collator's document layout,
    with the teacher's scores of them; None when the examples carry no teacher scores."""
    if any(e.teacher_scores is None for e in examples):
        return None
    width = 1 + max(len(e.negative_ids) for e in examples)
    columns = torch.full((len(examples), width), -1, dtype=torch.long)
    teacher = torch.zeros(len(examples), width)
    per = len(examples) // shards
    offset = 0
    for s in range(shards):
        part = examples[s * per : (s + 1) * per]
        next_negative = offset + len(part)
        for i, example in enumerate(part):
            row = s * per + i
            own = [offset + i, *range(next_negative, next_negative + len(example.negative_ids))]
            next_negative += len(example.negative_ids)
            columns[row, : len(own)] = torch.tensor(own)
            teacher[row, : len(own)] = torch.tensor(example.teacher_scores)
        offset = next_negative
    return DistillInputs(columns, teacher)
