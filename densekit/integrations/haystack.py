"""`DensekitHaystackRetriever`: a Haystack 2 component retrieving from a saved densekit index.

It takes a query and returns Haystack `Document`s, so it goes where Haystack's own retrievers go (in
front of a `PromptBuilder`/`ChatPromptBuilder` and a generator)::

    Document(id="4983", content="<title> <text>", score=0.71,
             meta={...stored metadata, "doc_id": "4983", "title": "<title>", "index": "scifact.idx"})

The index (dense or BM25; several paths are fused into a hybrid) opens in `warm_up`, which a
`Pipeline` calls before its first run, or on the first `run`. The component serialises with
`to_dict`/`from_dict` (the index path and options, never the loaded index), so a pipeline can be
dumped and loaded; Haystack only imports component classes from modules it is told to trust::

    Pipeline.loads(yaml_text, allowed_modules=["densekit.*"])

Filters follow Haystack's filter syntax (``{"field": "meta.year", "operator": ">=", "value": 2019}``,
logical AND/OR/NOT with ``conditions``), evaluated by Haystack's own `document_matches_filter` on the
fields ``id`` and ``meta.*`` (``meta.doc_id`` and ``meta.title`` too); densekit's flat dict filter
(``{"source": "faq", "year": [2019, 2020]}``: every key equal, a list meaning any of them) is
accepted and translated into it. `filter_policy` "replace" (default) lets run-time filters replace
the component's, "merge" combines them as Haystack's retrievers do.

Example::

    from haystack import Pipeline
    from haystack.components.builders import PromptBuilder

    pipe = Pipeline()
    pipe.add_component("retriever", DensekitHaystackRetriever("scifact.idx", top_k=5))
    pipe.add_component("prompt", PromptBuilder("{% for d in documents %}{{ d.content }}\\n{% endfor %}{{ query }}"))
    pipe.connect("retriever.documents", "prompt.documents")
    pipe.run({"retriever": {"query": q}, "prompt": {"query": q}})

Needs the `haystack` extra: ``pip install 'densekit[haystack]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError
from densekit.index.docstore import DocStore
from densekit.index.manifest import read_manifest
from densekit.integrations.common import (
    FUSIONS,
    Hit,
    Source,
    asearch_hits,
    check_k,
    missing_extra,
    open_source,
    search_hits,
)
from densekit.protocols import Retriever

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.document_stores.types import FilterPolicy, apply_filter_policy
    from haystack.errors import FilterError
    from haystack.utils.filters import document_matches_filter
except ImportError as exc:
    raise missing_extra("haystack-ai", "haystack", exc) from None

COMPARISONS = ("==", "!=", ">", ">=", "<", "<=", "in", "not in")
LOGICAL = ("AND", "OR", "NOT")


def _is_haystack_filter(filters: dict[str, Any]) -> bool:
    return "operator" in filters and ("conditions" in filters or "field" in filters)


def _check_haystack_filter(condition: Any) -> None:
    if not isinstance(condition, dict):
        raise DensekitError(f"a filter condition must be a dict, got {condition!r}")
    operator = condition.get("operator")
    if "field" in condition:
        field = condition["field"]
        if operator not in COMPARISONS or "value" not in condition:
            raise DensekitError(
                f"filter {condition}: a comparison needs field, value and an operator among {', '.join(COMPARISONS)}"
            )
        if not isinstance(field, str) or not (field == "id" or field.startswith("meta.")):
            raise DensekitError(f"filter field {field!r}: densekit filters on 'id' and 'meta.<key>' only")
        return
    if operator not in LOGICAL or not isinstance(condition.get("conditions"), list):
        raise DensekitError(
            f"filter {condition}: a logical condition needs an operator among {', '.join(LOGICAL)} and a list "
            "of conditions (or give field, operator and value for a comparison)"
        )
    for inner in condition["conditions"]:
        _check_haystack_filter(inner)


def to_haystack_filters(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Filters in Haystack's syntax, checked: Haystack filters as given, densekit's flat dict translated."""
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise DensekitError(f"filters must be a dict (Haystack filter syntax or densekit's flat form), got {filters!r}")
    if not filters:
        return None
    if _is_haystack_filter(filters):
        _check_haystack_filter(filters)
        return filters
    conditions = [
        {
            "field": f"meta.{key}",
            "operator": "in" if isinstance(value, (list, tuple, set, frozenset)) else "==",
            "value": list(value) if isinstance(value, (tuple, set, frozenset)) else value,
        }
        for key, value in filters.items()
    ]
    return conditions[0] if len(conditions) == 1 else {"operator": "AND", "conditions": conditions}


def _predicate(filters: dict[str, Any]):
    def passes(metadata: dict[str, Any]) -> bool:
        try:
            return document_matches_filter(filters, Document(id=metadata["doc_id"], meta=metadata))
        except FilterError as exc:
            raise DensekitError(f"filter {filters}: {exc}") from None

    return passes


def to_document(hit: Hit, index: str) -> Document:
    """A densekit hit as a Haystack document with its score."""
    return Document(
        id=hit.id,
        content=hit.document.content,
        meta=hit.metadata(index=index, with_score=False),
        score=hit.score,
    )


@component
class DensekitHaystackRetriever:
    """Haystack retriever over a densekit index and its document texts.

    `index_path` is a saved index directory (its `docs.jsonl` holds the texts, or give `corpus`: a
    BEIR folder, dataset name or corpus.jsonl), or several fused by `fusion` ("rrf" or
    "interpolate") with `weights` and `depth`. `model` overrides the dense encoder, `device` is its
    torch device. `top_k`, `score_threshold` (hits scoring below are dropped) and `filters` are the
    defaults; `run` can override `top_k` and `filters`. With a filter, candidates are fetched
    `fetch_k` at a time (4 top_k by default, growing fourfold) until `top_k` pass.

    An index of passages (``--chunk-size``) returns documents ranked by their passages (`aggregate`:
    maxp, firstp or sump; default the index's), each with its best passage as content and a
    `passage_id` in its meta; `passages=True` returns the passages themselves (ids ``<doc id>#<n>``).

    `retriever=` and `docstore=` take live densekit objects instead (such a component serialises
    only with an `index_path` to reopen).
    """

    def __init__(
        self,
        index_path: str | Sequence[str] | None = None,
        *,
        corpus: str | None = None,
        model: str | None = None,
        device: str | None = None,
        top_k: int = 10,
        score_threshold: float | None = None,
        filters: dict[str, Any] | None = None,
        filter_policy: str | FilterPolicy = FilterPolicy.REPLACE,
        fetch_k: int | None = None,
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        depth: int = 100,
        aggregate: str | None = None,
        passages: bool = False,
        index_name: str | None = None,
        retriever: Retriever | None = None,
        docstore: DocStore | None = None,
    ) -> None:
        if index_path is None and retriever is None:
            raise DensekitError("DensekitHaystackRetriever needs index_path=<saved index> or retriever=<Retriever>")
        self.index_path = (
            None if index_path is None else str(index_path) if isinstance(index_path, (str, Path)) else list(index_path)
        )
        if retriever is None:
            for path in [self.index_path] if isinstance(self.index_path, str) else self.index_path:
                read_manifest(path)  # fail now, not at the pipeline's first run
        if fusion not in FUSIONS:
            raise DensekitError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        self.corpus = corpus
        self.model = model
        self.device = device
        self.top_k = check_k(top_k, "top_k")
        self.score_threshold = score_threshold
        self.filters = filters
        self._filters = to_haystack_filters(filters)
        try:
            self.filter_policy = (
                filter_policy if isinstance(filter_policy, FilterPolicy) else FilterPolicy.from_str(filter_policy)
            )
        except ValueError as exc:
            raise DensekitError(str(exc)) from None
        self.fetch_k = None if fetch_k is None else check_k(fetch_k, "fetch_k")
        self.fusion = fusion
        self.weights = None if weights is None else list(weights)
        self.depth = depth
        self.aggregate = aggregate
        self.passages = passages
        self.index_name = index_name
        self._retriever = retriever
        self._docstore = docstore
        self.source: Source | None = None

    def warm_up(self) -> None:
        """Open the index, its encoder and its texts (once; later calls do nothing)."""
        if self.source is None:
            self.source = open_source(
                self.index_path,
                retriever=self._retriever,
                docstore=self._docstore,
                corpus=self.corpus,
                model=self.model,
                device=self.device,
                fusion=self.fusion,
                weights=self.weights,
                depth=self.depth,
                aggregate=self.aggregate,
                name=self.index_name,
            )

    def to_dict(self) -> dict[str, Any]:
        """The component as a dictionary: the index path and options (what `from_dict` reopens)."""
        if self.index_path is None:
            raise DensekitError(
                "a DensekitHaystackRetriever built from a live retriever= cannot be serialised; "
                "save the index and pass index_path="
            )
        return default_to_dict(
            self,
            index_path=self.index_path,
            corpus=self.corpus,
            model=self.model,
            device=self.device,
            top_k=self.top_k,
            score_threshold=self.score_threshold,
            filters=self.filters,
            filter_policy=self.filter_policy.value,
            fetch_k=self.fetch_k,
            fusion=self.fusion,
            weights=self.weights,
            depth=self.depth,
            aggregate=self.aggregate,
            passages=self.passages,
            index_name=self.index_name,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DensekitHaystackRetriever:
        """The component from :meth:`to_dict`'s dictionary (the index opens at warm-up)."""
        return default_from_dict(cls, data)

    def _arguments(self, top_k: int | None, filters: dict[str, Any] | None) -> tuple:
        self.warm_up()
        k = check_k(self.top_k if top_k is None else top_k, "top_k")
        merged = apply_filter_policy(self.filter_policy, self._filters, to_haystack_filters(filters))
        condition = None if merged is None else _predicate(merged)
        return self.source, k, self.score_threshold, condition, self.fetch_k, self.passages

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Retrieve the top documents for `query`.

        :param query: the query text.
        :param top_k: documents to return (default: the component's `top_k`).
        :param filters: Haystack filters or densekit's flat dict; replace or merge with the
            component's filters according to `filter_policy`.
        :returns: ``{"documents": [Document, ...]}``, best first, each with its score.
        """
        source, *options = self._arguments(top_k, filters)
        return {"documents": [to_document(hit, source.name) for hit in search_hits(source, query, *options)]}

    @component.output_types(documents=list[Document])
    async def run_async(
        self, query: str, top_k: int | None = None, filters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """:meth:`run` as a coroutine (for `AsyncPipeline`): the search runs on a worker thread."""
        source, *options = self._arguments(top_k, filters)
        hits = await asearch_hits(source, query, *options)
        return {"documents": [to_document(hit, source.name) for hit in hits]}
