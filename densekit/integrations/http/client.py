"""Clients of the HTTP service: `RemoteRetriever` keeps densekit's Retriever protocol, `RemoteDocStore` its texts.

Anything that takes a Retriever works against a server unchanged: the evaluation harness, hybrid
fusion, the LangChain retriever::

    remote = RemoteRetriever("http://127.0.0.1:8000")
    run = remote.search({"q1": "what causes scurvy?"}, k=10)           # a densekit Run
    evaluate_retriever(remote, load_dataset("scifact", split="test"))   # the BEIR harness
    DensekitRetriever(retriever=remote, docstore=remote.docstore())     # LangChain

`search` sends the queries in requests of `batch_size` and keeps their order; scores arrive exactly
as the service computed them (JSON floats round-trip). A docstore made by :meth:`RemoteRetriever.docstore`
is filled by the searches themselves (they ask for the texts), so a RAG chain makes one request per
query, not one per hit. Needs httpx (the `serve` extra).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

from densekit.data import Run
from densekit.errors import DensekitError, IntegrityError
from densekit.index.docstore import StoredDocument
from densekit.integrations.common import missing_extra

try:
    import httpx
except ImportError as _error:
    raise missing_extra("httpx", "serve", _error) from None


class ServiceError(DensekitError):
    """The service answered with an error (its one-line `detail`), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Connection:
    """One httpx client for a service URL, turning HTTP and connection errors into ServiceError."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"{self.url}: cannot reach the densekit service ({type(exc).__name__}: {exc})") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            raise ServiceError(f"{self.url}{path}: HTTP {response.status_code}: {detail}", response.status_code)
        return response.json()

    def close(self) -> None:
        self.client.close()


class RemoteDocStore:
    """The document texts of a service (GET /documents/{id}), cached (up to `cache_size` documents).

    Offers what RAG faces use of a :class:`~densekit.index.docstore.DocStore`: `get`, `in`, `len`.
    """

    def __init__(self, url: str | _Connection, *, cache_size: int = 10_000, timeout: float = 60.0) -> None:
        self._connection = url if isinstance(url, _Connection) else _Connection(url, timeout)
        self._cache: OrderedDict[str, StoredDocument] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def remember(self, document: StoredDocument) -> None:
        with self._lock:
            self._cache[document.id] = document
            self._cache.move_to_end(document.id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def get(self, doc_id: str) -> StoredDocument:
        with self._lock:
            cached = self._cache.get(doc_id)
        if cached is not None:
            return cached
        try:
            body = self._connection.call("GET", f"/documents/{quote(doc_id, safe='')}")
        except ServiceError as exc:
            if exc.status == 404:
                raise IntegrityError(f"document {doc_id!r} is not in the service's document store") from None
            raise
        document = StoredDocument(body["doc_id"], body["title"], body["text"], body["metadata"])
        self.remember(document)
        return document

    def __contains__(self, doc_id: object) -> bool:
        try:
            self.get(str(doc_id))
        except IntegrityError:
            return False
        return True

    def __len__(self) -> int:
        return int(self._connection.call("GET", "/info")["documents"] or 0)


class RemoteRetriever:
    """densekit's Retriever protocol over a densekit HTTP service (`densekit serve`).

    `batch_size` queries go in each request (the service's `max_queries` is the upper bound);
    `timeout` is per request, in seconds.
    """

    def __init__(self, url: str, *, batch_size: int = 128, timeout: float = 300.0) -> None:
        if batch_size <= 0:
            raise DensekitError(f"batch_size must be positive, got {batch_size}")
        self._connection = _Connection(url, timeout)
        self.url = self._connection.url
        self.batch_size = batch_size
        self._texts: RemoteDocStore | None = None

    def search(self, queries: dict[str, str], k: int, filter: dict[str, Any] | None = None) -> Run:
        """The service's top `k` for each query, as a Run in the order of `queries`.

        `filter` is the service's metadata filter (every key equal, or one of a list's values).
        """
        ids = list(queries)
        run = Run()
        for start in range(0, len(ids), self.batch_size):
            chunk = {q: queries[q] for q in ids[start : start + self.batch_size]}
            body: dict[str, Any] = {"queries": chunk, "k": k, "return_text": self._texts is not None}
            if filter is not None:
                body["filter"] = filter
            for result in self._connection.call("POST", "/search", json=body)["results"]:
                hits = result["hits"]
                if self._texts is not None:
                    for hit in hits:
                        self._texts.remember(StoredDocument(hit["doc_id"], hit["title"], hit["text"], hit["metadata"]))
                run[result["query_id"]] = [(hit["doc_id"], hit["score"]) for hit in hits]
        return run

    def docstore(self, cache_size: int = 10_000) -> RemoteDocStore:
        """A document store over the same service, filled by this retriever's searches from now on."""
        store = RemoteDocStore(self._connection, cache_size=cache_size)
        self._texts = store
        return store

    def info(self) -> dict:
        """GET /info: index, kind, model, documents, densekit version, limits, batching counters."""
        return self._connection.call("GET", "/info")

    def health(self) -> dict:
        return self._connection.call("GET", "/health")

    def describe(self) -> dict:
        """What an evaluation records: the service URL and its index, kind and model."""
        info = self.info()
        return {"service": self.url, **{k: info.get(k) for k in ("index", "kind", "model", "densekit_version")}}

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> RemoteRetriever:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
