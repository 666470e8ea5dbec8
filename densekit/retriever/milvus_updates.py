"""`densekit index update` on any saved dense index: FAISS (:func:`~densekit.retriever.dense.update_saved`)
or Milvus (:func:`update_milvus_saved`: encode through the embedding cache, upsert by id, keep the
directory in step)."""

from __future__ import annotations

from pathlib import Path

from densekit.data import Corpus
from densekit.index.cache import encode_corpus
from densekit.index.manifest import read_manifest


def update_milvus_saved(
    directory: str | Path,
    corpus: Corpus,
    device: str | None = None,
    cache: bool = True,
    show_progress: bool = True,
    token: str | None = None,
) -> tuple[int, int]:
    """Insert or replace the documents of `corpus` in a saved Milvus index: encoded with the model its
    manifest names (checked by fingerprint; through the embedding cache, so the same update run again
    encodes nothing), upserted by id, then ``docs.jsonl`` and the manifest's count rewritten. Returns
    ``(replaced, added)``."""
    from densekit.index.docstore import DocStore
    from densekit.index.milvus_saved import update_milvus_dir
    from densekit.retriever.milvus import MilvusRetriever

    retriever = MilvusRetriever.load(directory, device=device, token=token)
    embeddings = encode_corpus(retriever.encoder, corpus, cache=cache, show_progress=show_progress)
    return update_milvus_dir(retriever.index, directory, embeddings, list(DocStore.from_corpus(corpus)))


def update_saved_index(
    directory: str | Path, corpus: Corpus, device: str | None = None, show_progress: bool = True
) -> tuple[int, int]:
    """`densekit index update`: the documents of `corpus` inserted or replaced by id in the saved dense
    index `directory`, FAISS or Milvus; returns ``(replaced, added)`` in index entries."""
    if read_manifest(directory).get("kind") == "milvus":
        return update_milvus_saved(directory, corpus, device=device, show_progress=show_progress)
    from densekit.retriever.dense import update_saved

    return update_saved(directory, corpus, device=device, show_progress=show_progress)
