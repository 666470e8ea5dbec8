"""The HTTP service's request and response bodies (pydantic), so its OpenAPI schema says what each field is."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

Scalar = str | int | float | bool | None


class SearchRequest(BaseModel):
    """One query (`query`) or several (`queries`), searched to depth `k`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": "vitamin D and multiple sclerosis", "k": 5},
                {"queries": {"q1": "what causes scurvy?", "q2": "statins and dementia"}, "k": 10},
                {"query": "insulin", "k": 3, "filter": {"year": [2019, 2020]}, "return_text": True},
            ]
        },
    )

    query: str | None = Field(default=None, description="One query text (answered as query id '0').")
    queries: list[str] | dict[str, str] | None = Field(
        default=None, description="Several queries: a list (query ids '0', '1', ...) or an object {query id: text}."
    )
    k: StrictInt = Field(default=10, description="Hits per query, from 1 to the service's max_k (see GET /info).")
    filter: dict[str, Scalar | list[Scalar]] | None = Field(
        default=None,
        description="Keep documents whose stored metadata has every key equal to the value given, or to one of "
        "the values of a list. `doc_id` and `title` can be filtered too. Needs an index that stores its texts.",
    )
    return_text: StrictBool = Field(
        default=False, description="Add each hit's title, text and metadata (needs an index that stores its texts)."
    )
    passages: StrictBool = Field(
        default=False,
        description="Rank passages (ids '<doc id>#<n>'), not documents; needs an index built with --chunk-size.",
    )


class SearchHit(BaseModel):
    rank: int = Field(description="1 for the best hit.")
    doc_id: str
    score: float = Field(description="The retriever's score: cosine for dense indexes, BM25, or fused.")
    title: str | None = Field(default=None, description="With return_text.")
    text: str | None = Field(default=None, description="With return_text.")
    metadata: dict[str, Any] | None = Field(default=None, description="With return_text: the stored metadata.")
    passage_id: str | None = Field(
        default=None, description="With return_text on a passage index: the passage whose text is given."
    )


class QueryResult(BaseModel):
    query_id: str
    hits: list[SearchHit] = Field(description="Best first; fewer than k when the index (or the filter) has fewer.")


class SearchResponse(BaseModel):
    results: list[QueryResult] = Field(description="One per query, in the order given.")
    k: int
    took_ms: float = Field(description="Time in the service, from the parsed request to the answer.")


class Document(BaseModel):
    doc_id: str
    title: str
    text: str
    metadata: dict[str, Any]


class Health(BaseModel):
    status: str = Field(description="'ok', or 'unavailable' (HTTP 503) when the search worker has stopped.")


class Info(BaseModel):
    densekit_version: str
    index: str = Field(description="The index directory's name (several fused: joined by '+').")
    kind: str = Field(description="dense, bm25, hybrid, or the class name of a live retriever.")
    model: str | None = Field(description="The query encoder (None for BM25).")
    documents: int | None = Field(description="Documents the index holds.")
    dimension: int | None = Field(description="Embedding dimension (dense).")
    texts: bool = Field(description="Whether the service has the documents' texts (return_text, filter).")
    passages: bool = Field(description="Whether the index holds passages (the `passages` search option).")
    max_k: int
    max_queries: int
    max_batch: int
    max_wait_ms: float
    batching: dict[str, float] = Field(
        description="Requests and queries served, retriever calls, the largest and mean batch."
    )


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong, in one line.")
