"""The HTTP retrieval service: a FastAPI app over a saved index (`densekit serve`), batched for the encoder.

Routes (schema at ``/docs`` and ``/openapi.json``)::

    POST /search              {"query": "..."} or {"queries": [...] | {id: text}}, "k", "filter", "return_text"
    GET  /health              {"status": "ok"}
    GET  /info                index, kind, model, documents, densekit version, limits, batching counters
    GET  /documents/{doc_id}  one stored document (title, text, metadata)

Every search goes through a :class:`~densekit.integrations.http.batching.MicroBatcher`: single
queries arriving together are encoded in one batch on one worker thread, and the event loop keeps
accepting requests meanwhile. A request gets what ``retriever.search`` gives for its queries (see the
batching module for the float rounding that batching can change). Errors are one line in
``{"detail": ...}``: 422 when the body does not fit the schema, 400 for a bad value (k out of range,
no query, a filter on an index without texts), 404 for an unknown route or document.

Example::

    app = create_app("scifact.idx")                          # or create_app(retriever=..., docstore=...)
    uvicorn.run(app, host="127.0.0.1", port=8000)            # or `densekit serve scifact.idx`
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from densekit import __version__
from densekit.errors import DensekitError
from densekit.index.docstore import DOCS_FILE, DocStore
from densekit.index.manifest import read_manifest
from densekit.integrations.common import Hit, indexed_ids, matches, missing_extra, open_source
from densekit.integrations.http.batching import MicroBatcher
from densekit.integrations.http.config import ServeConfig
from densekit.integrations.http.schema import (
    Document,
    ErrorResponse,
    Health,
    Info,
    SearchRequest,
    SearchResponse,
)
from densekit.progress import announce
from densekit.protocols import Retriever

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as _error:
    raise missing_extra("FastAPI", "serve", _error) from None

ROUTES = "POST /search, GET /health, GET /info, GET /documents/{doc_id}, GET /docs"


class SearchService:
    """A retriever behind a micro-batcher, the texts of its documents (or None) and what /info reports."""

    def __init__(self, retriever: Retriever, docstore: DocStore | None, info: dict, config: ServeConfig) -> None:
        self.retriever = retriever
        self.docstore = docstore
        self.config = config
        self.batcher = MicroBatcher(retriever, config.max_batch, config.max_wait_ms)
        self._info = info

    def info(self) -> dict:
        limits = {k: getattr(self.config, k) for k in ("max_k", "max_queries", "max_batch", "max_wait_ms")}
        return {**self._info, **limits, "batching": self.batcher.stats.to_json()}

    def _queries(self, body: SearchRequest) -> dict[str, str]:
        if (body.query is None) == (body.queries is None):
            raise DensekitError("give `query` (one text) or `queries` (a list or an object), not both or neither")
        if body.query is not None:
            queries = {"0": body.query}
        elif isinstance(body.queries, list):
            queries = {str(i): text for i, text in enumerate(body.queries)}
        else:
            queries = dict(body.queries)
        if not queries:
            raise DensekitError("`queries` is empty")
        if len(queries) > self.config.max_queries:
            raise DensekitError(f"{len(queries)} queries in one request; the limit is {self.config.max_queries}")
        blank = next((q for q, text in queries.items() if not text.strip()), None)
        if blank is not None:
            raise DensekitError(f"query {blank!r} is empty")
        return queries

    async def search(self, body: SearchRequest) -> dict:
        """Answer a parsed /search request (the JSON body of :class:`SearchResponse`)."""
        start = time.perf_counter()
        queries = self._queries(body)
        if not 1 <= body.k <= self.config.max_k:
            raise DensekitError(f"k must be from 1 to {self.config.max_k}, got {body.k}")
        if (body.filter is not None or body.return_text) and self.docstore is None:
            raise DensekitError("this index stores no document texts (docs.jsonl): filter and return_text need them")
        if body.passages and not hasattr(self.retriever, "search_passages"):
            raise DensekitError("passages needs an index of passages (built with --chunk-size)")
        if body.filter is None:
            run = await self.batcher.search(queries, body.k, body.passages)
            ranked = {q: self._stored(run, q) for q in queries}
        else:
            found = await asyncio.gather(
                *(self._filtered(text, body.k, body.passages, body.filter) for text in queries.values())
            )
            ranked = dict(zip(queries, found, strict=True))
        results = [
            {"query_id": q, "hits": [self._hit(rank, *hit, body.return_text) for rank, hit in enumerate(hits, 1)]}
            for q, hits in ranked.items()
        ]
        return {"results": results, "k": body.k, "took_ms": round((time.perf_counter() - start) * 1000, 3)}

    def _stored(self, run: Any, query_id: str) -> list[tuple[str, float, str]]:
        """(ranked id, score, id of its text in the store): a document of a passage index is shown by
        its best passage when the store holds passages."""
        best = getattr(run, "best_passages", {}).get(query_id, {})
        store = self.docstore
        return [(d, s, best[d] if store is not None and best.get(d) in store else d) for d, s in run.get(query_id, [])]

    def _view(self, doc_id: str, stored_id: str) -> dict[str, Any]:
        """What a filter sees: the stored metadata, `doc_id`, `title` (and `passage_id`), as in the RAG faces."""
        return Hit(doc_id, self.docstore.get(stored_id), 0.0).metadata(with_score=False)

    async def _filtered(self, query: str, k: int, passages: bool, condition: dict) -> list[tuple[str, float, str]]:
        """The top `k` hits that pass `condition`, fetching 4 k, then fourfold more, as needed."""
        fetch = 4 * k
        while True:
            ranked = self._stored(await self.batcher.search({"q": query}, fetch, passages), "q")
            kept = [hit for hit in ranked if matches(self._view(hit[0], hit[2]), condition)]
            if len(kept) >= k or len(ranked) < fetch:
                return kept[:k]
            fetch *= 4

    def _hit(self, rank: int, doc_id: str, score: float, stored_id: str, with_text: bool) -> dict:
        hit: dict[str, Any] = {"rank": rank, "doc_id": doc_id, "score": float(score)}
        if with_text:
            doc = self.docstore.get(stored_id)
            hit.update(title=doc.title, text=doc.text, metadata=doc.metadata)
            if stored_id != doc_id:
                hit["passage_id"] = stored_id
        return hit

    def document(self, doc_id: str) -> dict:
        if self.docstore is None:
            raise HTTPException(404, "this index stores no document texts (docs.jsonl)")
        if doc_id not in self.docstore:
            raise HTTPException(404, f"no document {doc_id!r} in the index")
        doc = self.docstore.get(doc_id)
        return {"doc_id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata}


def _model_of(retriever: Any) -> tuple[str | None, int | None]:
    encoder = getattr(retriever, "encoder", None)
    if encoder is not None:
        return encoder.model_id, encoder.dim
    for inner in getattr(retriever, "retrievers", []):
        found = _model_of(inner)
        if found[0] is not None:
            return found
    return None, None


def open_service(
    index: str | Path | Sequence[str | Path] | None = None,
    *,
    retriever: Retriever | None = None,
    docstore: DocStore | None = None,
    corpus: str | Path | None = None,
    model: str | None = None,
    device: str | None = None,
    fusion: str = "rrf",
    weights: Sequence[float] | None = None,
    depth: int = 1000,
    name: str | None = None,
    search_options: Any = None,
    config: ServeConfig | None = None,
) -> SearchService:
    """Open what the service searches: one saved index, several fused, or a live `retriever` (+ `docstore`).

    Texts come from `docstore`, `corpus` or the index's own docs.jsonl; an index without any is served
    with ids and scores only (announced). `search_options` (a
    :class:`~densekit.retriever.compose.SearchOptions`) applies to a single dense index.
    """
    config = config or ServeConfig()
    config.validate()
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    paths = [Path(index)] if isinstance(index, (str, Path)) else [Path(p) for p in index or []]
    if retriever is not None and paths:
        raise DensekitError("give an index directory or a retriever, not both")
    has_texts = (
        docstore is not None or corpus is not None or any(DOCS_FILE in read_manifest(p).get("files", {}) for p in paths)
    )
    if has_texts or retriever is None and not paths:
        source = open_source(
            paths or None,
            retriever=retriever,
            docstore=docstore,
            corpus=corpus,
            model=model,
            device=device,
            fusion=fusion,
            weights=weights,
            depth=depth,
            name=name,
        )
        retriever, docstore, name = source.retriever, source.docstore, source.name
    elif retriever is None:
        retriever = _open_without_texts(paths, model, device, fusion, weights, depth)
        announce(f"{'+'.join(map(str, paths))}: no document texts (docs.jsonl); serving ids and scores only")
    if search_options is not None and not search_options.is_default():
        if len(paths) != 1:
            raise DensekitError("--nprobe and --ef-search apply to one dense index, not to a fused or live retriever")
        search_options.apply(retriever)
    kinds = [read_manifest(p).get("kind", "dense") for p in paths]
    kind = (
        kinds[0]
        if len(kinds) == 1
        else "hybrid"
        if kinds
        else getattr(retriever, "index_kind", type(retriever).__name__)
    )
    model_id, dim = _model_of(retriever)
    ids = indexed_ids(retriever)
    info = {
        "densekit_version": __version__,
        "index": name or ("+".join(p.name for p in paths) if paths else "memory"),
        "kind": kind,
        "model": model_id,
        "documents": len(docstore) if docstore is not None else len(ids) if ids is not None else None,
        "dimension": dim,
        "texts": docstore is not None,
        "passages": hasattr(retriever, "search_passages"),
    }
    return SearchService(retriever, docstore, info, config)


def _open_without_texts(paths, model, device, fusion, weights, depth) -> Retriever:
    from densekit.retriever.compose import open_index

    backends = [
        open_index(p, model=model if read_manifest(p).get("kind", "dense") == "dense" else None, device=device)
        for p in paths
    ]
    if len(backends) == 1:
        return backends[0]
    from densekit.retriever.hybrid import HybridRetriever

    return HybridRetriever(backends, fusion=fusion, weights=weights, depth=depth)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(index: str | Path | Sequence[str | Path] | SearchService | None = None, **options: Any) -> FastAPI:
    """The FastAPI app serving `index` (a directory, several, or an opened :class:`SearchService`).

    `options` go to :func:`open_service` (`retriever=`, `docstore=`, `model=`, `config=`, ...).
    """
    service = index if isinstance(index, SearchService) else open_service(index, **options)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.batcher.close()

    app = FastAPI(
        title="densekit retrieval service",
        version=__version__,
        description=f"Search a densekit index ({service.info()['index']}) over HTTP. Routes: {ROUTES}.",
        lifespan=lifespan,
    )
    app.state.service = service
    errors = {400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(DensekitError)
    async def _bad_value(_request: Request, exc: DensekitError) -> JSONResponse:
        return JSONResponse({"detail": str(exc).replace("\n", " ")}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; the service answers {ROUTES}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.post("/search", response_model=SearchResponse, responses=errors, summary="Search one query or a batch")
    async def search(body: SearchRequest) -> JSONResponse:
        # A JSONResponse skips re-validating thousands of hits; the schema above documents them.
        return JSONResponse(await service.search(body))

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        if service.batcher.alive():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    @app.get("/info", response_model=Info)
    async def info() -> dict:
        return service.info()

    @app.get("/documents/{doc_id:path}", response_model=Document, responses={404: {"model": ErrorResponse}})
    async def document(doc_id: str) -> dict:
        return service.document(doc_id)

    return app


def serve(app: FastAPI, config: ServeConfig, on_ready: Callable[[str], None] | None = None) -> None:
    """Run `app` under uvicorn on `config.host:config.port` until interrupted (Ctrl-C, SIGTERM).

    The socket is bound before the server starts, so `on_ready(url)` gets the real port (port 0 picks a
    free one) and a client connecting from then on is answered.
    """
    try:
        import uvicorn
    except ImportError as error:
        raise missing_extra("uvicorn", "serve", error) from None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise DensekitError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning" if not config.access_log else "info", access_log=config.access_log)
    )
    if on_ready is not None:
        on_ready(f"http://{shown}:{port}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
