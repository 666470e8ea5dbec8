"""`DenseRetriever`: an Encoder over a DenseIndex, keeping the Retriever protocol.

A saved dense index records the fingerprint of the model that built it (sha256 of the model's
files plus its encoding settings: pooling, normalisation, max length, prompts). :meth:`DenseRetriever.load`
rebuilds the encoder the manifest names and refuses to search when its fingerprint differs -- a
different model swapped in at the recorded path, or the manifest's model settings edited -- because
the queries would be embedded in another space than the documents and the results would be silently
wrong. Asking for another model on purpose (`model=`, ``--model``) is allowed and announced.

Example::

    retriever = DenseRetriever.build(Encoder("all-MiniLM-L6-v2"), corpus)   # encodes (cached)
    run = retriever.search({"q1": "what causes scurvy?"}, k=10)
    retriever.save("scifact.idx"); DenseRetriever.load("scifact.idx")     # encoder from the manifest
"""

from __future__ import annotations

from pathlib import Path

from densekit.data import Corpus, Run
from densekit.errors import DensekitError, IntegrityError
from densekit.index.cache import announce_cut, encode_corpus
from densekit.index.dense import DenseIndex, read_manifest
from densekit.index.saved import save_with_texts
from densekit.progress import announce
from densekit.retriever.encoder import Encoder


class DenseRetriever:
    """Encode queries with `encoder` and search `index` (inner product on normalised vectors = cosine)."""

    index_kind = "dense"

    def __init__(
        self, encoder: Encoder, index: DenseIndex, query_batch: int = 1024, corpus: Corpus | None = None
    ) -> None:
        if encoder.dim != index.dim:
            raise DensekitError(f"encoder dimension {encoder.dim} differs from the index's {index.dim}")
        self.encoder = encoder
        self.index = index
        self.query_batch = query_batch
        self.corpus = corpus  # the texts :meth:`save` stores beside the index (set by :meth:`build`)

    @classmethod
    def build(
        cls,
        encoder: Encoder,
        corpus: Corpus,
        factory: str = "Flat",
        device: str = "cpu",
        cache: bool = True,
        show_progress: bool = True,
        rescore_multiplier: int | None = None,
        **index_options,
    ) -> DenseRetriever:
        """Encode `corpus` (cached) and index it; `index_options` go to :meth:`DenseIndex.build`
        (train_sample, seed, search_params, shard, float16). With `rescore_multiplier`, the index
        re-scores its top ``multiplier * k`` against the embeddings (and saving it keeps them)."""
        embeddings = encode_corpus(encoder, corpus, cache=cache, show_progress=show_progress)
        index = DenseIndex.build(
            embeddings,
            corpus.ids,
            factory=factory,
            metric="ip",
            model=encoder.describe(),
            device=device,
            **index_options,
        )
        if rescore_multiplier is not None:
            index.use_reranking(embeddings, multiplier=rescore_multiplier)
        return cls(encoder, index, corpus=corpus)

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

    def save(self, directory: str | Path, overwrite: bool = False, store_texts: bool = True) -> Path:
        """Save the index; with `store_texts` (default) and a corpus (from :meth:`build`), its texts too
        (`docs.jsonl`), as `densekit index build` does, so the saved index serves RAG without `corpus=`."""
        if store_texts and self.corpus is not None:
            from densekit.index.docstore import DocStore, save_with_documents

            return save_with_documents(
                self.index.save, DocStore.from_corpus(self.corpus), directory, overwrite=overwrite
            )
        return self.index.save(directory, overwrite=overwrite)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str | None = None,
        index_device: str = "cpu",
        model: str | None = None,
        encoder_backend: str | None = None,
    ) -> DenseRetriever:
        """Reopen a saved index with the encoder its manifest names (or `model` to override).

        The encoder's fingerprint must equal the one the manifest records (see the module
        docstring); an index saved before fingerprints were recorded is searched with an announcement.
        """
        directory = Path(directory)
        info = read_manifest(directory).get("model") or {}
        encoder = encoder_from_manifest(directory, info, model, device, encoder_backend)
        index = DenseIndex.load(directory, device=index_device)
        return cls(encoder, index)


def encoder_from_manifest(
    directory: Path, info: dict, model: str | None, device: str | None, encoder_backend: str | None = None
) -> Encoder:
    """The encoder an index manifest's ``model`` entry names (or `model`), checked by fingerprint, on
    `encoder_backend` ("onnx-int8"...; default: the backend the manifest records, else torch)."""
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
        truncate_dim=info.get("truncate_dim"),
        backend=encoder_backend or info.get("backend"),
    )
    check_model(directory, info, encoder, explicit=model is not None)
    return encoder


def check_model(directory: Path, recorded: dict, encoder: Encoder, explicit: bool = False) -> None:
    """Refuse an encoder whose fingerprint differs from the one the index was built with."""
    expected = recorded.get("fingerprint")
    actual = encoder.fingerprint()
    if expected is not None and expected != actual and expected.split("|")[0] == actual.split("|")[0]:
        # same weights and settings, another backend (onnx, int8...): the vectors are comparable
        built = recorded.get("backend", "torch")
        announce(
            f"{directory}: queries are encoded with the {encoder.backend_name} backend; "
            f"the index was built with {built}"
        )
        return
    if expected is None:
        announce(
            f"{directory}: the index predates model fingerprints, so densekit cannot check that "
            f"{encoder.model_id} is the model that built it; rebuild the index to record one"
        )
        return
    if expected == actual:
        return
    if explicit:
        announce(
            f"{directory}: searching with {encoder.model_id}, which is not the model that built the index "
            "(fingerprints differ), as asked"
        )
        return
    raise IntegrityError(
        f"{directory}: the model at {encoder.folder} (with the manifest's encoding settings) is not the one that "
        f"built this index (fingerprint {actual.split(':')[0][:12]}... vs recorded "
        f"{expected.split(':')[0][:12]}..., or the settings differ); rebuild the index, or pass --model to search "
        "with another model deliberately"
    )


def update_saved(
    directory: str | Path, corpus: Corpus, device: str | None = None, show_progress: bool = True
) -> tuple[int, int]:
    """Insert or replace the documents of `corpus` in a saved dense index, encoding them with the
    model its manifest names (checked by fingerprint); returns ``(replaced, added)`` in index entries.

    In an index of passages, each document is cut as the index's were and replaces all its old passages."""
    from densekit.index.docstore import DocStore

    directory = Path(directory)
    retriever = DenseRetriever.load(directory, device=device)
    chunking = read_manifest(directory).get("passages")
    dropped: set[str] = set()
    documents = list(DocStore.from_corpus(corpus))
    if chunking:
        from densekit.chunking import ChunkConfig, chunk_corpus
        from densekit.index.passage_index import passage_documents, passages_of

        config = ChunkConfig(chunking["chunk_size"], chunking["chunk_overlap"], chunking.get("aggregate", "maxp"))
        corpus, meta = chunk_corpus(corpus, retriever.encoder.tokenizer, config)
        dropped = set(passages_of(retriever.index.ids, {m["parent_id"] for m in meta})) - set(corpus.ids)
        retriever.index.remove(sorted(dropped))
        documents = passage_documents(corpus, meta)
    embeddings = retriever.encoder.encode_documents(corpus.texts(), show_progress=show_progress)
    announce_cut(retriever.encoder, retriever.encoder.last_cut, len(corpus))
    counts = retriever.index.update(embeddings, list(corpus.ids))
    save_with_texts(retriever.index, directory, dropped, documents)
    return counts
