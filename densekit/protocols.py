"""The one protocol every retriever keeps: dense, BM25, hybrid and reranking alike.

It lives at the bottom layer, beside :class:`~densekit.data.Run`, so that evaluation, mining and the
integrations can take any retriever without importing :mod:`densekit.retriever` (which would make
`retriever -> eval -> retriever` a cycle: the trainer evaluates with :mod:`densekit.eval.harness`).
:mod:`densekit.retriever.base` re-exports it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from densekit.data import Run


@runtime_checkable
class Retriever(Protocol):
    """Anything that ranks documents for queries.

    `search({query_id: text}, k)` returns a :class:`~densekit.data.Run` with at most `k` hits per
    query, best first. Evaluation, mining, fusion and the LangChain adapter take any Retriever.
    """

    def search(self, queries: dict[str, str], k: int) -> Run: ...
