"""Teachers beyond the dense ones: a cross-encoder that scores (query, document) pairs for mining.

:class:`CrossEncoderScorer` scores a query's candidates and positives with
:class:`~densekit.retriever.rerank.CrossEncoderReranker`'s model (the same scores `densekit eval
--rerank` ranks by), so the ``ce_score`` a negatives file stores is the reranker's score of that pair.
Its :meth:`describe` includes the sha256 of the weights, so a resumed mining run refuses a
cross-encoder whose weights changed.

Example::

    scorer = CrossEncoderScorer("runs/scifact-ce", corpus)
    scores = scorer.score("does vitamin C cure scurvy?", ["d1", "d7"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from densekit.data import Corpus
from densekit.io import sha256_file


class CrossEncoderScorer:
    """Cross-encoder scores of (query, document id) pairs over `corpus` (see the module docstring)."""

    def __init__(
        self,
        model: str | Path,
        corpus: Corpus,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str | None = None,
    ) -> None:
        """`max_length` None truncates pairs where the folder's tokenizer records (the length
        `densekit train-reranker` trained at), as `densekit eval --rerank` does: the stored scores are
        the reranker's. Until 2026-12-05 it was 512, which scored a 128-token cross-encoder at 512."""
        from densekit.retriever.rerank import CrossEncoderReranker

        # Only its pair scoring is used: mining brings its own candidates, so no first stage.
        self.reranker = CrossEncoderReranker(
            None,  # type: ignore[arg-type]
            model,
            corpus,
            batch_size=batch_size,
            max_length=max_length,
            device=device,
        )
        self.folder = self.reranker.folder

    def score(self, query: str, doc_ids: Sequence[str]) -> np.ndarray:
        """float32 score of each (query, document) pair, in `doc_ids` order."""
        if not doc_ids:
            return np.empty(0, dtype=np.float32)
        texts = [self.reranker.document_text(d) for d in doc_ids]
        return np.asarray(self.reranker.score(query, texts), dtype=np.float32)

    def describe(self) -> dict:
        weights = sorted(self.folder.glob("*.safetensors")) or sorted(self.folder.glob("*.bin"))
        return {
            "model": str(self.folder),
            "max_length": self.reranker.max_length,
            "weights_sha256": {w.name: sha256_file(w) for w in weights},
        }
