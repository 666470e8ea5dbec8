"""`DensekitLlamaIndexRetriever`: a LlamaIndex retriever over a saved densekit index (dense, BM25 or hybrid).

It returns LlamaIndex `NodeWithScore`s, so it drops into a `RetrieverQueryEngine`, a chat engine or
any other LlamaIndex component that takes a retriever::

    NodeWithScore(score=0.71, node=TextNode(id_="4983", text="<title> <text>",
                  metadata={...stored metadata, "doc_id": "4983", "title": "<title>", "index": "scifact.idx"}))

The text is the title and body joined as the encoder saw them; `doc_id`, `title` and `index` are left
out of what the LLM and embedders see of the metadata (the title is in the text already). Scores
are the backend's: cosine similarity for the dense indexes densekit builds, BM25 scores, or fused
scores for hybrid; `score_threshold` drops hits below it.

Filters: densekit's dict filter (``{"source": "faq", "year": [2019, 2020]}``), a predicate over the
metadata, or LlamaIndex `MetadataFilters` evaluated with LlamaIndex's own semantics (every operator
of its in-memory vector store; AND, OR, NOT; nested filters too). A filter sees the stored metadata
plus `doc_id` and `title`.

Example::

    from llama_index.core.query_engine import RetrieverQueryEngine

    retriever = DensekitLlamaIndexRetriever("scifact.idx", k=5)
    engine = RetrieverQueryEngine.from_args(retriever, llm=my_llm)
    engine.query("Does vitamin D affect multiple sclerosis?").source_nodes

    DensekitLlamaIndexRetriever(["scifact-bm25.idx", "scifact.idx"], fusion="rrf")   # hybrid

Needs the `llamaindex` extra: ``pip install 'densekit[llamaindex]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from densekit.data import Corpus
from densekit.errors import DensekitError
from densekit.index.docstore import DocStore
from densekit.integrations.common import (
    Hit,
    MetadataFilter,
    Source,
    asearch_hits,
    check_k,
    missing_extra,
    open_source,
    search_hits,
)
from densekit.protocols import Retriever

try:
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.core.vector_stores.types import FilterCondition, MetadataFilters
    from llama_index.core.vector_stores.types import MetadataFilter as LlamaMetadataFilter
    from llama_index.core.vector_stores.utils import build_metadata_filter_fn
except ImportError as exc:
    raise missing_extra("llama-index-core", "llamaindex", exc) from None

# Shown to the user, not to the LLM or embedder: the text holds the title already.
HIDDEN_METADATA = ["doc_id", "title", "index", "passage_id", "parent_id", "passage", "start", "end"]

LlamaFilter = MetadataFilters | MetadataFilter


def _leaf(condition: LlamaMetadataFilter) -> Callable[[dict[str, Any]], bool]:
    one = MetadataFilters(filters=[condition])

    def passes(metadata: dict[str, Any]) -> bool:
        try:
            return build_metadata_filter_fn(lambda _: metadata, one)("")
        except (TypeError, ValueError) as exc:
            raise DensekitError(
                f"metadata filter {condition.key!r} {condition.operator.value} {condition.value!r} cannot be "
                f"applied to {metadata.get(condition.key)!r} (document {metadata.get('doc_id')!r}): {exc}"
            ) from None

    return passes


def from_metadata_filters(filters: MetadataFilters) -> Callable[[dict[str, Any]], bool]:
    """A predicate over a document's metadata that keeps LlamaIndex's meaning of `filters`.

    Each leaf is evaluated by LlamaIndex's own in-memory filter function; nested `MetadataFilters`
    are combined here with their condition (AND: all, OR: any, NOT: none, as LlamaIndex does).
    """
    parts = [from_metadata_filters(f) if isinstance(f, MetadataFilters) else _leaf(f) for f in filters.filters]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return lambda metadata: all(part(metadata) for part in parts)
    if condition == FilterCondition.OR:
        return lambda metadata: any(part(metadata) for part in parts)
    if condition == FilterCondition.NOT:
        return lambda metadata: not any(part(metadata) for part in parts)
    raise DensekitError(f"MetadataFilters condition {condition!r} is not supported; use and, or or not")


def to_condition(filters: LlamaFilter | None) -> MetadataFilter | None:
    """densekit's form of a filter given to the retriever (checked now, so a bad one fails early)."""
    if filters is None or isinstance(filters, dict) or callable(filters):
        return filters
    if isinstance(filters, MetadataFilters):
        return from_metadata_filters(filters)
    if isinstance(filters, LlamaMetadataFilter):
        return from_metadata_filters(MetadataFilters(filters=[filters]))
    raise DensekitError(
        f"filters must be LlamaIndex MetadataFilters, a dict or a callable, got {type(filters).__name__}"
    )


def to_node(hit: Hit, index: str) -> NodeWithScore:
    """A densekit hit as a LlamaIndex node with its score."""
    node = TextNode(
        id_=hit.id,
        text=hit.document.content,
        metadata=hit.metadata(index=index, with_score=False),
        excluded_llm_metadata_keys=list(HIDDEN_METADATA),
        excluded_embed_metadata_keys=list(HIDDEN_METADATA),
    )
    return NodeWithScore(node=node, score=hit.score)


class DensekitLlamaIndexRetriever(BaseRetriever):
    """LlamaIndex retriever over a densekit index and its document texts.

    Open it from a saved index directory (`index_path`; several paths are fused into a hybrid with
    `fusion`, `weights` and `depth`), whose `docs.jsonl` holds the texts (or give `corpus`), or from
    a live `retriever` (any densekit Retriever) and `docstore`. `k`, `score_threshold` and `filters`
    are the defaults that :meth:`search` can override per call. With a filter, candidates are fetched
    `fetch_k` at a time (4 k by default, growing fourfold) until `k` documents pass.

    An index of passages (``--chunk-size``) returns documents ranked by their passages (`aggregate`:
    maxp, firstp or sump; default the index's), each node holding its best passage's text and a
    `passage_id`; `passages=True` returns the passages themselves (node ids ``<doc id>#<n>``).
    """

    def __init__(
        self,
        index_path: str | Path | Sequence[str | Path] | None = None,
        *,
        retriever: Retriever | None = None,
        docstore: DocStore | None = None,
        corpus: str | Path | Corpus | None = None,
        model: str | None = None,
        device: str | None = None,
        k: int = 4,
        score_threshold: float | None = None,
        filters: LlamaFilter | None = None,
        fetch_k: int | None = None,
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        depth: int = 100,
        aggregate: str | None = None,
        passages: bool = False,
        index_name: str | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self.k = check_k(k)
        self.fetch_k = None if fetch_k is None else check_k(fetch_k, "fetch_k")
        self.score_threshold = score_threshold
        self.filters = filters
        self.passages = passages
        self._condition = to_condition(filters)
        self.source: Source = open_source(
            index_path,
            retriever=retriever,
            docstore=docstore,
            corpus=corpus,
            model=model,
            device=device,
            fusion=fusion,
            weights=weights,
            depth=depth,
            aggregate=aggregate,
            name=index_name,
        )
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _options(
        self, k: int | None, score_threshold: float | None, filters: LlamaFilter | None
    ) -> tuple[int, float | None, MetadataFilter | None]:
        return (
            self.k if k is None else k,
            self.score_threshold if score_threshold is None else score_threshold,
            self._condition if filters is None else to_condition(filters),
        )

    def search(
        self,
        query: str,
        k: int | None = None,
        score_threshold: float | None = None,
        filters: LlamaFilter | None = None,
    ) -> list[NodeWithScore]:
        """The top nodes for `query`, best first, with per-call overrides of the defaults."""
        k, threshold, condition = self._options(k, score_threshold, filters)
        hits = search_hits(self.source, query, k, threshold, condition, self.fetch_k, self.passages)
        return [to_node(hit, self.source.name) for hit in hits]

    async def asearch(
        self,
        query: str,
        k: int | None = None,
        score_threshold: float | None = None,
        filters: LlamaFilter | None = None,
    ) -> list[NodeWithScore]:
        """:meth:`search` as a native coroutine: the search runs on a worker thread."""
        k, threshold, condition = self._options(k, score_threshold, filters)
        hits = await asearch_hits(self.source, query, k, threshold, condition, self.fetch_k, self.passages)
        return [to_node(hit, self.source.name) for hit in hits]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.search(query_bundle.query_str)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await self.asearch(query_bundle.query_str)
