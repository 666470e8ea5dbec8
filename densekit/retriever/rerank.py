"""Cross-encoder reranking of any retriever's top candidates.

A cross-encoder reads the query and a document together and outputs a relevance score (Nogueira and
Cho, "Passage Re-ranking with BERT", arXiv 1901.04085; the `CrossEncoder` of sentence-transformers).
:class:`CrossEncoderReranker` takes the first `depth` hits of any Retriever, scores each
(query, document) pair with a Hugging Face sequence-classification model, and re-sorts them.

The model is any folder `AutoModelForSequenceClassification` loads (config, weights, tokenizer):
with one label its logit is the score (MS MARCO cross-encoders); with several labels the last
label's logit is taken as "relevant". Documents are read as title and text joined, the text
sentence-transformers' BEIR evaluation passes to cross-encoders.

Scores are raw logits, never passed through a sigmoid. sentence-transformers' `CrossEncoder.predict`
applies the activation a folder records (``config.json`` -> ``sentence_transformers.activation_fn``)
and, when none is recorded, a sigmoid for a one-label model. A sigmoid keeps the ranking in exact
arithmetic but in float32 it rounds large logits to the same 1.0, which ties documents the logits
separate; so densekit ranks by the logit, and the folders `densekit train-reranker` writes record
the identity activation, so `CrossEncoder(folder).predict` returns these same scores (tested). For
another folder that records (or defaults to) a sigmoid, densekit's score is sentence-transformers'
score before its sigmoid: the same order, except where the sigmoid ties.

Blending (``first_stage_weight`` w > 0): the returned score is (1 - w) * norm(cross-encoder) +
w * norm(first stage), each normalised per query over the reranked hits (`minmax` or `zscore`, as in
:func:`densekit.retriever.hybrid.interpolate`). Interpolating a neural reranker's score with the first
stage's is the usual remedy when the reranker alone is not reliably better (Wang, Zhuang and Zuccon,
"BERT-based Dense Retrievers Require Interpolation with BM25", ICTIR 2021); choose w on a dev split
(`densekit finetune` does), never on test.

No pretrained cross-encoder can be installed in this project's build environment (no model hub),
so the tests check the mechanics with a tiny randomly initialised BERT classifier; its rankings are
meaningless, the plumbing is what is tested.

Example::

    reranker = CrossEncoderReranker(bm25, "path/to/ms-marco-MiniLM-L-6-v2", corpus, depth=100)
    run = reranker.search(queries, k=10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densekit.data import Corpus, Run, join_title_text
from densekit.errors import DensekitError
from densekit.progress import progress
from densekit.retriever.base import Retriever
from densekit.retriever.hybrid import NORMALIZATIONS, interpolate

MAX_LENGTH = 512  # BERT-like position limit; tokenizers without a recorded length say 1e30
BLEND_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # first-stage weights :func:`choose_blend` tries


class CrossEncoderReranker:
    """Rerank the top `depth` hits of `retriever` with a cross-encoder; keeps the Retriever protocol.

    `search(queries, k)` returns at most `min(k, depth)` hits per query, scored by the cross-encoder
    (hits below `depth` are not returned: their first-stage scores are on another scale).
    """

    def __init__(
        self,
        retriever: Retriever,
        model: str | Path | Any,
        corpus: Corpus,
        depth: int = 100,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str | None = None,
        tokenizer=None,
        first_stage_weight: float = 0.0,
        normalization: str = "minmax",
    ) -> None:
        """`model` is a folder, or a loaded sequence-classification module with its `tokenizer` (used as
        it is, on its own device and in its own train/eval mode: the cross-encoder trainer's evaluation).
        `first_stage_weight` and `normalization` blend the first stage's score in (:func:`blend_runs`)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from densekit.retriever.encoder import pick_device

        if depth <= 0 or batch_size <= 0 or (max_length is not None and max_length <= 0):
            raise DensekitError(
                f"depth, batch_size and max_length must be positive, got {depth}, {batch_size}, {max_length}"
            )
        check_blend(first_stage_weight, normalization)
        if isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise DensekitError("a loaded cross-encoder model needs its tokenizer")
            self.model, self.tokenizer, folder = model, tokenizer, None
            self.device = next(model.parameters()).device
        else:
            folder = Path(model).expanduser()
            if not (folder / "config.json").is_file():
                raise DensekitError(
                    f"{folder}: not a model folder (no config.json); a cross-encoder is a Hugging Face "
                    "sequence-classification folder"
                )
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(folder)
                self.model = AutoModelForSequenceClassification.from_pretrained(folder)
            except (OSError, ValueError) as exc:
                raise DensekitError(f"{folder}: cannot load a sequence-classification model ({exc})") from None
            self.device = pick_device(device)
            self.model.to(self.device).eval()
        self._torch = torch
        self.retriever = retriever
        self.corpus = corpus
        self.folder = folder
        self.depth = depth
        self.batch_size = batch_size
        self.first_stage_weight = float(first_stage_weight)
        self.normalization = normalization
        # Default: the length the tokenizer records (a folder `densekit train-reranker` writes records the
        # length it trained at; sentence-transformers' CrossEncoder truncates there too), at most 512.
        recorded = int(min(getattr(self.tokenizer, "model_max_length", MAX_LENGTH) or MAX_LENGTH, MAX_LENGTH))
        self.max_length = max_length or recorded

    def score(self, query: str, documents: list[str]) -> np.ndarray:
        """Relevance score of each (query, document) pair, float32, in input order."""
        scores = []
        for start in range(0, len(documents), self.batch_size):
            chunk = documents[start : start + self.batch_size]
            batch = self.tokenizer(
                [query] * len(chunk),
                chunk,
                padding=True,
                truncation="longest_first",
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with self._torch.inference_mode():
                logits = self.model(**batch).logits.float()
            scores.append(logits[:, -1].cpu().numpy())
        return np.concatenate(scores) if scores else np.empty(0, np.float32)

    def document_text(self, doc_id: str) -> str:
        if doc_id not in self.corpus:
            raise DensekitError(f"the first-stage retriever returned document {doc_id!r}, which the corpus lacks")
        doc = self.corpus.document(doc_id)
        return join_title_text(doc["title"], doc["text"])

    def search(self, queries: dict[str, str], k: int) -> Run:
        if k <= 0:
            raise DensekitError(f"k must be positive, got {k}")
        first = self.retriever.search(queries, self.depth)
        first_cut, scored = Run(), Run()
        for query_id in progress(list(queries), "reranking", unit="query"):
            hits = list(first.get(query_id, []))[: self.depth]
            doc_ids = [d for d, _ in hits]
            scores = self.score(queries[query_id], [self.document_text(d) for d in doc_ids])
            first_cut[query_id] = hits
            scored[query_id] = [(d, float(s)) for d, s in zip(doc_ids, scores, strict=True)]
        return blend_runs(first_cut, scored, self.first_stage_weight, self.normalization, k)

    def describe(self) -> dict:
        return {
            "reranker": str(self.folder) if self.folder else None,
            "rerank_depth": self.depth,
            "rerank_max_length": self.max_length,
            **(
                {"rerank_first_stage_weight": self.first_stage_weight, "rerank_normalization": self.normalization}
                if self.first_stage_weight
                else {}
            ),
        }


def check_blend(weight: float, normalization: str) -> None:
    """Refuse a first-stage weight outside [0, 1] or an unknown normalisation (one-line errors)."""
    if not 0.0 <= weight <= 1.0:
        raise DensekitError(f"the first-stage weight of a rerank blend must be in [0, 1], got {weight}")
    if normalization not in NORMALIZATIONS:
        raise DensekitError(
            f"unknown score normalisation {normalization!r}; expected one of: {', '.join(NORMALIZATIONS)}"
        )


def blend_runs(first: Run, reranked: Run, weight: float, normalization: str = "minmax", k: int | None = None) -> Run:
    """The top `k` of each query of `reranked`, scored (1 - weight) * norm(reranked) + weight * norm(first).

    `first` and `reranked` hold the same documents per query (the first stage's top hits and the
    cross-encoder's scores of them). Weight 0 is the cross-encoder's order and scores unchanged; 1 the
    first stage's order on normalised scores. Ties go to the smaller document id, as everywhere in densekit.
    """
    check_blend(weight, normalization)
    if weight == 0.0:
        return Run({q: sorted(hits, key=lambda hit: (-hit[1], hit[0]))[:k] for q, hits in reranked.items()})
    return interpolate([reranked, first], [1.0 - weight, weight], normalization, depth=k)


def choose_blend(
    first: Run, reranked: Run, score: Callable[[Run], float], weights: Sequence[float] = BLEND_WEIGHTS
) -> dict:
    """The blend that scores best: ``{"weight", "normalization", "dev_sweep"}``.

    Every `weights` x normalisation of :func:`blend_runs` is scored by `score` (a dev split's ndcg@10);
    `dev_sweep` lists ``[normalization, weight, score]`` for each. A tie keeps the smaller weight, minmax
    before zscore. Pass dev runs only: the choice is then applied to test unchanged.
    """
    sweep = [(n, float(w), float(score(blend_runs(first, reranked, w, n)))) for n in NORMALIZATIONS for w in weights]
    normalization, weight, _ = max(sweep, key=lambda point: (point[2], -point[1]))
    return {"weight": weight, "normalization": normalization, "dev_sweep": [list(point) for point in sweep]}
