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

No pretrained cross-encoder can be installed in this project's build environment (no model hub),
so the tests check the mechanics with a tiny randomly initialised BERT classifier; its rankings are
meaningless, the plumbing is what is tested.

Example::

    reranker = CrossEncoderReranker(bm25, "path/to/ms-marco-MiniLM-L-6-v2", corpus, depth=100)
    run = reranker.search(queries, k=10)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from densekit.data import Corpus, Run, join_title_text
from densekit.errors import DensekitError
from densekit.progress import progress
from densekit.retriever.base import Retriever

MAX_LENGTH = 512  # BERT-like position limit; tokenizers without a recorded length say 1e30


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
    ) -> None:
        """`model` is a folder, or a loaded sequence-classification module with its `tokenizer` (used as
        it is, on its own device and in its own train/eval mode: the cross-encoder trainer's evaluation)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from densekit.retriever.encoder import pick_device

        if depth <= 0 or batch_size <= 0 or (max_length is not None and max_length <= 0):
            raise DensekitError(
                f"depth, batch_size and max_length must be positive, got {depth}, {batch_size}, {max_length}"
            )
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
        run = Run()
        for query_id in progress(list(queries), "reranking", unit="query"):
            hits = first.get(query_id, [])
            doc_ids = [d for d, _ in hits]
            scores = self.score(queries[query_id], [self.document_text(d) for d in doc_ids])
            order = sorted(range(len(doc_ids)), key=lambda i: (-scores[i], doc_ids[i]))[:k]
            run[query_id] = [(doc_ids[i], float(scores[i])) for i in order]
        return run

    def describe(self) -> dict:
        return {
            "reranker": str(self.folder) if self.folder else None,
            "rerank_depth": self.depth,
            "rerank_max_length": self.max_length,
        }
