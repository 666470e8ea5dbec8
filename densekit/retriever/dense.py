"""`DenseRetriever`: an Encoder over a DenseIndex, keeping the Retriever protocol.

Example::

    retriever = DenseRetriever.build(Encoder("all-MiniLM-L6-v2"), corpus)   # encodes (cached)
    run = retriever.search({"q1": "what causes scurvy?"}, k=10)
    retriever.save("scifact.idx"); DenseRetriever.load("scifact.idx")     # encoder from the manifest
"""

from __future__ import annotations

from pathlib import Path

from densekit.data import Corpus, Run
from densekit.errors import DensekitError
from densekit.index.cache import encode_corpus
from densekit.index.dense import DenseIndex, read_manifest
from densekit.retriever.encoder import Encoder


class DenseRetriever:
    """Encode queries with `encoder` and search `index` (inner product on normalised vectors = cosine)."""

    def __init__(self, encoder: Encoder, index: DenseIndex, query_batch: int = 1024) -> None:
        if encoder.dim != index.dim:
            raise DensekitError(f"encoder dimension {encoder.dim} differs from the index's {index.dim}")
        self.encoder = encoder
        self.index = index
        self.query_batch = query_batch

    @classmethod
    def build(
        cls,
        encoder: Encoder,
        corpus: Corpus,
        factory: str = "Flat",
        device: str = "cpu",
        cache: bool = True,
        show_progress: bool = True,
        **index_options,
    ) -> DenseRetriever:
        """Encode `corpus` (cached) and index it; `index_options` go to :meth:`DenseIndex.build`
        (train_sample, seed, search_params, shard, float16)."""
        embeddings = encode_corpus(encoder, corpus, cache=cache, show_progress=show_progress)
        metric = "ip"
        index = DenseIndex.build(embeddings, corpus.ids, factory=factory, metric=metric,
                                 model=encoder.describe(), device=device, **index_options)
        return cls(encoder, index)

    def search(self, queries: dict[str, str], k: int, show_progress: bool = False) -> Run:
        query_ids = list(queries)
        run = Run()
        for start in range(0, len(query_ids), self.query_batch):
            chunk = query_ids[start : start + self.query_batch]
            vectors = self.encoder.encode_queries([queries[q] for q in chunk], show_progress=show_progress)
            scores, ids = self.index.search(vectors, k)
            for query_id, row_scores, row_ids in zip(chunk, scores, ids, strict=True):
                # FAISS pads missing hits (label -1) at the tail; row_ids has them dropped already.
                hits = zip(row_ids, row_scores, strict=False)
                run[query_id] = [(doc_id, float(s)) for doc_id, s in hits]
        return run

    def save(self, directory: str | Path) -> Path:
        return self.index.save(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None, index_device: str = "cpu",
             model: str | None = None) -> DenseRetriever:
        """Reopen a saved index with the encoder its manifest names (or `model` to override)."""
        manifest = read_manifest(directory)
        info = manifest.get("model") or {}
        name = model or info.get("model_folder") or info.get("model")
        if not name:
            raise DensekitError(f"{directory}: the manifest names no model; pass one explicitly")
        if model is None and info.get("model_folder") and not Path(info["model_folder"]).exists():
            name = info["model"]
        encoder = Encoder(
            name,
            device=device,
            pooling=info.get("pooling"),
            normalize=info.get("normalize"),
            max_length=info.get("max_length"),
            query_prompt=info.get("query_prompt"),
            document_prompt=info.get("document_prompt"),
        )
        index = DenseIndex.load(directory, device=index_device)
        return cls(encoder, index)
