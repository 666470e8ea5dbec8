"""The HTTP retrieval service (`densekit serve`) and its clients; the `serve` extra (FastAPI, uvicorn, httpx).

- :mod:`~densekit.integrations.http.server` -- :func:`create_app` (FastAPI) and :func:`serve` (uvicorn).
- :mod:`~densekit.integrations.http.batching` -- :class:`MicroBatcher`, concurrent queries in one encoder call.
- :mod:`~densekit.integrations.http.client` -- :class:`RemoteRetriever` (the Retriever protocol over HTTP)
  and :class:`RemoteDocStore`.

Nothing is imported here, so the client works without FastAPI and the server without httpx.
"""
