"""`MilvusRetriever`: an Encoder over a :class:`~densekit.index.milvus.MilvusIndex`, keeping the Retriever protocol.

It is a :class:`~densekit.retriever.dense.DenseRetriever` whose index lives in Milvus, so `densekit
search`, `densekit eval --index`, hybrid fusion and the LangChain retriever take it unchanged; it adds
a metadata `filter` that Milvus applies inside the search (:mod:`densekit.index.milvus_filter`).
Loading rebuilds the encoder the manifest names and checks its fingerprint, as for FAISS indexes.

Example::

    retriever = MilvusRetriever.load("runs/scifact-milvus.idx")
    run = retriever.search({"q1": "what causes scurvy?"}, k=10, filter={"source": "faq"})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from densekit.data import Run
from densekit.errors import DensekitError
from densekit.index.manifest import read_manifest
from densekit.retriever.dense import DenseRetriever, encoder_from_manifest


class MilvusRetriever(DenseRetriever):
    """Encode queries and search a Milvus collection (inner product on normalised vectors = cosine)."""

    index_kind = "milvus"

    def search(
        self,
        queries: dict[str, str],
        k: int,
        show_progress: bool = False,
        filter: dict[str, Any] | str | None = None,  # noqa: A002 (LangChain's name)
    ) -> Run:
        """Top-`k` documents per query; `filter` (a metadata dict or a Milvus expression) is applied by Milvus."""
        query_ids = list(queries)
        run = Run()
        for start in range(0, len(query_ids), self.query_batch):
            chunk = query_ids[start : start + self.query_batch]
            vectors = self.encoder.encode_queries([queries[q] for q in chunk], show_progress=show_progress)
            scores, ids = self.index.search(vectors, k, filter=filter)
            for query_id, row_scores, row_ids in zip(chunk, scores, ids, strict=True):
                run[query_id] = [(doc_id, float(s)) for doc_id, s in zip(row_ids, row_scores, strict=False)]
        return run

    def describe(self) -> dict:
        """What an evaluation records: the model, and where the vectors live."""
        index = self.index
        return {
            **(index.model or {}),
            "backend": "milvus",
            "uri": index.uri,
            "collection": index.collection,
            "index_type": index.index_type,
            "search_params": index.search_params,
        }

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str | None = None,
        model: str | None = None,
        token: str | None = None,
    ) -> MilvusRetriever:
        """Reopen a saved Milvus index directory with the encoder its manifest names (or `model`)."""
        from densekit.index.milvus import MilvusIndex

        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest["kind"] != "milvus":
            raise DensekitError(f"{directory}: a {manifest['kind']} index, not a Milvus one")
        encoder = encoder_from_manifest(directory, manifest.get("model") or {}, model, device)
        return cls(encoder, MilvusIndex.load(directory, token=token))
