"""The GIST guide's embeddings of the training texts, computed once and kept beside the run.

GISTEmbed (arXiv 2402.16829) masks in-batch and mined negatives that a guide model scores at or
above the query's positive. The guide's embeddings of every training query and document are
computed once and stored in ``<output>/guide_cache/`` as safetensors + JSON (`densekit.serialize`),
verified when read, so a resume reuses them; nothing in that folder is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from densekit.errors import IntegrityError
from densekit.io import atomic_dir
from densekit.progress import announce
from densekit.retriever.encoder import Encoder
from densekit.retriever.train.data import TrainingExample
from densekit.serialize import has_state, load_state, save_state

LEGACY_CACHE = "guide_cache.pt"


class GuideCache:
    """A frozen guide model's embeddings of every training query and document, computed once.

    GIST needs the guide's similarity of each query to each document in the batch; embedding the
    few thousand training texts once (and storing them beside the run, so a resume reuses them)
    replaces a guide forward pass every step.
    """

    def __init__(
        self,
        query_emb: dict[str, int],
        doc_emb: dict[str, int],
        queries: torch.Tensor,
        documents: torch.Tensor,
    ) -> None:
        self.query_rows, self.doc_rows = query_emb, doc_emb
        self.queries, self.documents = queries, documents

    @classmethod
    def build(cls, guide: str, examples: list[TrainingExample], corpus, device: str | None, path: Path) -> GuideCache:
        """Load the cache folder `path` when it was computed for these texts and this guide, else
        compute it and write it there. A damaged folder is announced and recomputed."""
        from densekit.data import join_title_text

        path = Path(path)
        encoder = Encoder(guide, device=device)
        query_text = {e.query_id: e.query for e in examples}
        doc_ids = list(dict.fromkeys(d for e in examples for d in (e.positive_id, *e.negative_ids)))
        key = {"guide": encoder.fingerprint(), "queries": list(query_text), "documents": doc_ids}
        legacy = path.parent / LEGACY_CACHE
        if legacy.is_file():
            announce(
                f"{legacy}: a pickle guide cache from an older densekit is never loaded (unpickling can "
                f"run code); ignoring it (delete it), the cache now lives in {path}"
            )
        if has_state(path):
            try:
                saved = load_state(path)
                if saved["key"] == key:
                    return cls(saved["query_rows"], saved["doc_rows"], saved["queries"], saved["documents"])
                announce(f"{path} was computed for other texts or another guide; recomputing it")
            except (IntegrityError, KeyError, TypeError) as exc:
                announce(f"{path}: damaged guide cache ({exc}); recomputing it")
        queries = torch.from_numpy(encoder.encode_queries(list(query_text.values())))
        documents = cls._documents_from_corpus_cache(encoder, corpus, doc_ids)
        if documents is None:
            texts = []
            for doc_id in doc_ids:
                doc = corpus.document(doc_id)
                texts.append(join_title_text(doc["title"], doc["text"]))
            documents = torch.from_numpy(encoder.encode_documents(texts))
        query_rows = {q: i for i, q in enumerate(query_text)}
        doc_rows = {d: i for i, d in enumerate(doc_ids)}
        state = {"key": key, "query_rows": query_rows, "doc_rows": doc_rows, "queries": queries, "documents": documents}
        with atomic_dir(path, kind="guide-cache") as staging:
            save_state(staging, state)
        del encoder
        return cls(query_rows, doc_rows, queries, documents)

    @staticmethod
    def _documents_from_corpus_cache(encoder: Encoder, corpus, doc_ids: list[str]) -> torch.Tensor | None:
        """The guide's rows for `doc_ids` from the corpus embedding cache (filled by `densekit mine
        --guide`, `index build` or `eval` with the same model), or None when it holds no entry."""
        from densekit.index.cache import cache_enabled, cache_key, load_cached

        if not cache_enabled():
            return None
        cached = load_cached(cache_key(encoder.fingerprint(), corpus.fingerprint()))
        if cached is None:
            return None
        announce(f"guide document embeddings taken from the corpus embedding cache ({encoder.model_id})")
        rows = [corpus.position(doc_id) for doc_id in doc_ids]
        return torch.from_numpy(np.array(cached[rows], dtype=np.float32))

    def scores(self, query_ids: list[str], doc_ids: list[str]) -> torch.Tensor:
        q = self.queries[[self.query_rows[i] for i in query_ids]]
        d = self.documents[[self.doc_rows[i] for i in doc_ids]]
        return q @ d.T
