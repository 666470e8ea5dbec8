"""Open saved indexes and compose retrievers: dense, BM25, hybrid (fusion) and cross-encoder reranking.

The one library place that turns "what the user asked for" into a :class:`~densekit.retriever.base.Retriever`:
the CLI's `search` and `eval`, reproductions, mining sources and the LangChain adapter all call it.

    spec = RetrieverSpec(index="scifact.idx", bm25=True, fusion="rrf", rerank="ce-folder")
    retriever, config = build_retriever(spec, corpus)
    run = retriever.search(queries, k=100)

Fusion follows Pyserini's hybrid (RRF, Cormack et al. 2009; or min-max/z-score interpolation);
reranking is a cross-encoder over the first stage's top `rerank_depth` (Nogueira & Cho 2019).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densekit.data import Corpus
from densekit.errors import DensekitError
from densekit.index.dense import read_manifest
from densekit.retriever.base import Retriever
from densekit.retriever.hybrid import FUSIONS, RRF_K

INDEX_KINDS = ("dense", "bm25", "milvus")


def open_index(
    directory: str | Path,
    model: str | None = None,
    device: str | None = None,
    aggregate: str | None = None,
    encoder_backend: str | None = None,
) -> Retriever:
    """Open a saved index directory as a Retriever, choosing the loader from the manifest's `kind`.

    `model` overrides the encoder the manifest names (dense indexes); `device` is the encoder's torch device.
    An index of passages (built with a chunk size) returns documents, its passages' scores aggregated
    as the manifest says or as `aggregate` (maxp, firstp, sump) overrides
    (:class:`~densekit.retriever.passages.PassageRetriever`; its `.passages` searches passages).
    `encoder_backend` ("onnx", "openvino-int8"...) runs the query encoder on another backend than the
    one the manifest records (dense indexes).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    kind = manifest.get("kind", "dense")
    if aggregate is not None and "passages" not in manifest:
        raise DensekitError(f"{directory}: --aggregate applies to an index of passages (built with --chunk-size)")
    if kind == "dense":
        from densekit.retriever.dense import DenseRetriever

        dense = DenseRetriever.load(directory, device=device, model=model, encoder_backend=encoder_backend)
        if "passages" not in manifest:
            return dense
        from densekit.retriever.passages import PassageRetriever

        return PassageRetriever(dense, aggregate=aggregate or manifest["passages"].get("aggregate", "maxp"))
    if encoder_backend is not None and kind != "dense":
        raise DensekitError(f"{directory}: --encoder-backend applies to dense (FAISS) indexes, not {kind}")
    if kind == "bm25":
        from densekit.retriever.bm25 import BM25Retriever

        if model is not None:
            raise DensekitError(f"{directory}: a BM25 index has no encoder; model={model!r} does not apply")
        return BM25Retriever.load(directory)
    if kind == "milvus":
        from densekit.retriever.milvus import MilvusRetriever

        return MilvusRetriever.load(directory, device=device, model=model)
    raise DensekitError(f"{directory}: index kind {kind!r} is not supported; expected one of: {', '.join(INDEX_KINDS)}")


def check_index_dir(directory: str | Path) -> Path:
    """Fail at once (before any model loads) when `directory` holds no saved index."""
    directory = Path(directory)
    read_manifest(directory)
    return directory


@dataclass
class SearchOptions:
    """How a saved dense (FAISS) index searches: parameters, exact re-scoring and placement."""

    nprobe: int | None = field(
        default=None, metadata={"help": "IVF lists visited per query (default: the index manifest's)."}
    )
    ef_search: int | None = field(
        default=None, metadata={"help": "HNSW search candidate list size (default: the index manifest's)."}
    )
    k_factor: int | None = field(
        default=None,
        metadata={
            "help": "ivf-pqr: candidates re-scored by the refinement "
            "code, as a multiple of k (default: the index "
            "manifest's)."
        },
    )
    rerank_vectors: Path | None = field(
        default=None,
        metadata={
            "help": "Re-score the index's top candidates exactly against these float32 vectors (a .npy in label "
            "order, e.g. the embedding cache's, or a shard directory; memory-mapped)."
        },
    )
    rerank_candidates: int = field(default=100, metadata={"help": "Candidates per query to re-score."})
    rescore_multiplier: int | None = field(
        default=None,
        metadata={
            "help": "Re-score the top multiplier x k candidates (instead of --rerank-candidates) against "
            "--rerank-vectors or the vectors an index built with --rescore-multiplier keeps "
            "(default: the index manifest's)."
        },
    )
    index_device: str = field(default="cpu", metadata={"help": "Where FAISS searches: cpu, gpu, gpu:N, gpu:0,1, auto."})
    shard_gpus: bool = field(
        default=False, metadata={"help": "On several GPUs: split the vectors (capacity) or copy them (throughput)."}
    )
    float16: bool = field(default=False, metadata={"help": "GPU: half-precision vectors / PQ tables."})

    def params(self) -> dict:
        """The FAISS search parameters given (checked), by FAISS's names."""
        from densekit.index.factory import check_search_params

        return check_search_params({"nprobe": self.nprobe, "efSearch": self.ef_search, "k_factor": self.k_factor})

    def is_default(self) -> bool:
        return (
            not self.params()
            and self.rerank_vectors is None
            and self.rescore_multiplier is None
            and (self.index_device, self.shard_gpus, self.float16) == ("cpu", False, False)
        )

    def apply(self, retriever: Any) -> None:
        """Override the manifest's search parameters, add exact re-scoring and move FAISS, on `retriever`'s
        dense index; an error when any is given for an index that is not FAISS."""
        if self.is_default():
            return
        from densekit.index.dense import DenseIndex

        index = getattr(retriever, "index", None)
        if getattr(retriever, "index_kind", None) == "milvus":  # Milvus searches in its own process
            if (
                self.k_factor is not None
                or self.rerank_vectors is not None
                or self.rescore_multiplier is not None
                or self.index_device != "cpu"
            ):
                raise DensekitError(
                    "a Milvus index takes --nprobe and --ef-search; --k-factor, --rerank-vectors and "
                    "--index-device apply to FAISS indexes"
                )
            index.set_search_params(self.params())
            return
        if not isinstance(index, DenseIndex):
            raise DensekitError(
                "--nprobe, --ef-search, --rerank-vectors and --index-device apply to dense (FAISS) indexes only"
            )
        if (self.index_device, self.shard_gpus, self.float16) != ("cpu", False, False):
            index.to_device(self.index_device, self.shard_gpus, self.float16)
        index.set_search_params(self.params())
        if self.rerank_vectors is not None:
            from densekit.index.shards import open_vectors

            index.use_reranking(open_vectors(self.rerank_vectors), self.rerank_candidates, self.rescore_multiplier)
        elif self.rescore_multiplier is not None:
            index.set_rescore_multiplier(self.rescore_multiplier)


def parse_weights(weights: str | None) -> list[float] | None:
    """'0.3,0.7' -> [0.3, 0.7] (fusion weights in retriever order)."""
    if not weights:
        return None
    try:
        return [float(w) for w in weights.split(",")]
    except ValueError:
        raise DensekitError(f"--weights must be comma-separated numbers, got {weights!r}") from None


@dataclass
class RetrieverSpec:
    """What to retrieve with: a model (encoded now) or a saved index, BM25 beside or instead, fusion, reranking.

    BM25 with a dense retriever is fused (weights in the order BM25, dense); `rerank` puts a cross-encoder
    over the result.
    """

    model: str | None = field(default=None, metadata={"help": "Encoder to evaluate."})
    index: Path | None = field(default=None, metadata={"help": "Evaluate a saved index directory."})
    factory: str = field(default="Flat", metadata={"help": "FAISS factory string for --model."})
    batch_size: int = field(default=64, metadata={"help": "Texts per encoder batch."})
    truncate_dim: int | None = field(
        default=None,
        metadata={
            "help": "Keep the first D dimensions of every embedding, re-normalised when the model normalises "
            "(Matryoshka models lose little). Recorded in the embedding cache key and the index manifest; a "
            "saved index encodes queries at the dimension it records."
        },
    )
    cache: bool = field(default=True, metadata={"help": "Reuse cached corpus embeddings."})
    encoder_backend: str | None = field(
        default=None,
        metadata={
            "help": "What runs the encoder: torch, onnx, onnx-int8, openvino or openvino-int8 (CPU; exports are "
            "made by `densekit models export`, or on first use into the cache, announced). Default: torch, or "
            "the backend a saved index records."
        },
    )
    device: str | None = field(
        default=None, metadata={"help": "Torch device for the encoder (default: cuda if available)."}
    )
    bm25: bool = field(default=False, metadata={"help": "BM25 (Lucene when Java works, else bm25s)."})
    backend: str | None = field(
        default=None,
        metadata={
            "help": "BM25 backend: lucene, bm25s or rank_bm25 (default: lucene if Java works, else bm25s, announced)."
        },
    )
    k1: float = field(default=0.9, metadata={"help": "BM25 k1."})
    b: float = field(default=0.4, metadata={"help": "BM25 b."})
    threads: int = field(default=1, metadata={"help": "BM25 indexing/search threads."})
    fusion: str | None = field(
        default=None, metadata={"help": "Fuse --bm25 with --model/--index: rrf (default) or interpolate."}
    )
    weights: list[float] | None = field(default=None, metadata={"help": "Fusion weights 'BM25,DENSE', e.g. 0.3,0.7."})
    rrf_k: int = field(default=RRF_K, metadata={"help": "RRF constant k."})
    normalization: str = field(
        default="minmax",
        metadata={
            "help": "Per-query score normalisation of --fusion interpolate and of a rerank blend: minmax or zscore."
        },
    )
    depth: int = field(default=1000, metadata={"help": "Documents retrieved per query."})
    rerank: str | None = field(
        default=None,
        metadata={
            "help": "Cross-encoder folder (HF sequence classification) that reranks the top --rerank-depth hits."
        },
    )
    rerank_depth: int = field(default=100, metadata={"help": "Hits per query the cross-encoder rescores."})
    rerank_first_stage_weight: float = field(
        default=0.0,
        metadata={
            "help": "Blend the first stage's score into the reranked one: (1 - W) * cross-encoder + W * first "
            "stage, each normalised per query (--normalization); 0 = the cross-encoder alone. Choose W on dev."
        },
    )
    aggregate: str | None = field(
        default=None,
        metadata={"help": "An index of passages: maxp, firstp or sump (default: the one it was built with)."},
    )
    search: SearchOptions = field(default_factory=SearchOptions)

    def validate(self) -> None:
        """Check the combination without loading anything (fails before any model loads)."""
        if self.model is not None and self.index is not None:
            raise DensekitError("give one of --model or --index")
        if self.model is None and self.index is None and not self.bm25:
            raise DensekitError("give --model, --index or --bm25")
        if self.backend is not None and not self.bm25:
            raise DensekitError("--backend chooses the BM25 backend; add --bm25")
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise DensekitError(f"--fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if not self.fused and (self.fusion is not None or self.weights is not None):
            raise DensekitError("--fusion and --weights fuse two retrievers: give --bm25 with --model or --index")
        if self.depth <= 0:
            raise DensekitError(f"--depth must be positive, got {self.depth}")
        if self.rerank_first_stage_weight and self.rerank is None:
            raise DensekitError("--rerank-first-stage-weight blends a cross-encoder's scores: give --rerank")
        if not 0.0 <= self.rerank_first_stage_weight <= 1.0:
            raise DensekitError(f"--rerank-first-stage-weight must be in [0, 1], got {self.rerank_first_stage_weight}")
        if self.encoder_backend is not None:
            from densekit.retriever.backends import parse_backend

            parse_backend(self.encoder_backend)
            if self.model is None and self.index is None:
                raise DensekitError("--encoder-backend applies to --model or --index (BM25 has no encoder)")
        if self.index is not None:
            check_index_dir(self.index)
        if self.aggregate is not None and self.index is None:
            raise DensekitError("--aggregate applies to an index of passages: give --index")
        if self.truncate_dim is not None and self.model is None:
            raise DensekitError("--truncate-dim applies to --model (a saved index encodes at the dimension it records)")
        if self.index is None and not self.search.is_default():
            raise DensekitError("--nprobe, --ef-search, --rerank-vectors and --index-device need --index")

    @property
    def fused(self) -> bool:
        return self.bm25 and (self.model is not None or self.index is not None)


def build_retriever(spec: RetrieverSpec, corpus: Corpus | None = None) -> tuple[Retriever, dict]:
    """The retriever `spec` describes and what an evaluation records about it (its config).

    `corpus` is needed to encode with a model, build BM25 or rerank (the texts); a saved index alone
    needs none.
    """
    spec.validate()
    if corpus is None and (spec.model is not None or spec.bm25 or spec.rerank is not None):
        raise DensekitError("--model, --bm25 and --rerank need the corpus")
    retriever: Any = None
    config: dict = {}
    if spec.model is not None:
        from densekit.retriever.dense import DenseRetriever
        from densekit.retriever.encoder import Encoder

        encoder = Encoder(
            spec.model,
            device=spec.device,
            batch_size=spec.batch_size,
            truncate_dim=spec.truncate_dim,
            backend=spec.encoder_backend,
        )
        retriever = DenseRetriever.build(encoder, corpus, factory=spec.factory, cache=spec.cache)
        config = {"model": spec.model, "factory": spec.factory, **encoder.describe()}
    elif spec.index is not None:
        retriever = open_index(
            spec.index, device=spec.device, aggregate=spec.aggregate, encoder_backend=spec.encoder_backend
        )
        spec.search.apply(retriever)
        config = {"index": str(spec.index), **retriever_config(retriever)}
    if spec.bm25:
        from densekit.retriever.bm25 import BM25Retriever

        sparse = BM25Retriever.build(corpus, backend=spec.backend, k1=spec.k1, b=spec.b, threads=spec.threads)
        if retriever is None:
            retriever, config = sparse, sparse.describe()
        else:
            from densekit.retriever.hybrid import HybridRetriever

            retriever = HybridRetriever(
                [sparse, retriever],
                fusion=spec.fusion or "rrf",
                weights=spec.weights,
                rrf_k=spec.rrf_k,
                normalization=spec.normalization,
                depth=spec.depth,
            )
            config = {
                "bm25": sparse.describe(),
                "dense": config,
                **retriever.describe(),
                "weights_order": ["bm25", "dense"],
            }
    if spec.rerank is not None:
        from densekit.retriever.rerank import CrossEncoderReranker

        retriever = CrossEncoderReranker(
            retriever,
            spec.rerank,
            corpus,
            depth=spec.rerank_depth,
            device=spec.device,
            first_stage_weight=spec.rerank_first_stage_weight,
            normalization=spec.normalization,
        )
        config = {"first_stage": config, **retriever.describe()}
    return retriever, config


def corpus_path(retriever: Any) -> str | None:
    """The corpus a loaded index was built from, as its manifest records it (dense or BM25)."""
    index = getattr(retriever, "index", None)
    if index is not None:
        return (getattr(index, "model", None) or {}).get("corpus")
    return (getattr(retriever, "corpus_info", None) or {}).get("path")


def retriever_config(retriever: Any) -> dict:
    """What an evaluation records about a retriever loaded from an index directory."""
    describe = getattr(retriever, "describe", None)
    if callable(describe):
        return describe()
    return dict(getattr(getattr(retriever, "index", None), "model", None) or {})


def search_index(
    directory: str | Path,
    queries: dict[str, str],
    k: int,
    options: SearchOptions | None = None,
    device: str | None = None,
    with_texts: bool = False,
    run_out: str | Path | None = None,
    model: str | None = None,
    aggregate: str | None = None,
    passages: bool = False,
    encoder_backend: str | None = None,
) -> dict:
    """`densekit search`: open a saved index, apply `options`, search `queries` (the Retriever protocol).

    Returns ``{"hits": {query_id: [{"rank", "doc_id", "score"(, "title", "text")}]}, "index": ..., "corpus": ...}``;
    texts come from the index's document store when `with_texts` and it has one; `run_out` also writes
    the run as a TREC file. `model` embeds the queries with another encoder than the index's own
    (announced; see :func:`densekit.retriever.dense.check_model`). On an index of passages, hits are
    documents (`aggregate` overrides how passage scores combine) and each row names the passage that
    scored it best (`"passage"`, its text as `"text"`); with `passages`, hits are the passages themselves.
    """
    retriever = open_index(directory, model=model, device=device, aggregate=aggregate, encoder_backend=encoder_backend)
    (options or SearchOptions()).apply(retriever)
    search_passages = getattr(retriever, "search_passages", None)
    if passages and search_passages is None:
        raise DensekitError(f"{directory}: --passages needs an index of passages (built with --chunk-size)")
    run = search_passages(queries, k) if passages else retriever.search(queries, k)
    if run_out is not None:
        run.write_trec(run_out)
    best = {} if passages else getattr(retriever, "best_passages", {})
    store = None
    if with_texts:
        from densekit.index.docstore import DocStore

        store = DocStore.open(directory)
    hits: dict[str, list[dict]] = {}
    for query_id, ranked in run.items():
        rows = hits[query_id] = []
        for rank, (doc_id, score) in enumerate(ranked, start=1):
            row = {"rank": rank, "doc_id": doc_id, "score": score}
            stored_id = best.get(query_id, {}).get(doc_id, doc_id)
            if stored_id != doc_id:
                row["passage"] = stored_id
            if store is not None:
                doc = store.get(stored_id)
                row.update(title=doc.title, text=doc.text)
            rows.append(row)
    documents = Path(directory) / "docs.jsonl"
    corpus = corpus_path(retriever) or (str(documents) if documents.is_file() else None)
    return {"hits": hits, "index": str(directory), "corpus": corpus}
