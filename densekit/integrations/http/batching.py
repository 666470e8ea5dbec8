"""Micro-batching: concurrent searches gathered into one `retriever.search` call on one worker thread.

A web server receives single queries from many clients at once. Encoding them one by one wastes the
encoder (a batch of 16 queries costs little more than one on a CPU or GPU); so every search is put on
a queue, and one worker thread takes what is waiting -- the first request, then whatever arrives
within `max_wait_ms` or is already queued, up to `max_batch` queries -- and makes one
``retriever.search(all those queries, k)`` call per distinct `k`. Under no load a request waits at
most `max_wait_ms`; under load the batches grow by themselves (requests queue while the previous batch
runs), so throughput rises with concurrency.

Results are those of ``retriever.search`` on the same queries: hits are never mixed between queries,
and requests with different `k` are never merged (a top-k of a deeper search is not always the top-k
of a search to depth k, e.g. for HNSW). The one difference from searching each query alone is the
encoder's float32 rounding, which depends on the batch a text is padded with (~1e-7 in a score).

One worker thread also means the retriever is only ever called from one thread, so retrievers that
are not thread-safe (a tokenizer, a JVM searcher) are safe behind it.

Example::

    batcher = MicroBatcher(retriever, max_batch=64, max_wait_ms=2)
    run = batcher.submit({"q1": "what causes scurvy?"}, k=10).result()      # from any thread
    run = await batcher.search({"q1": "what causes scurvy?"}, k=10)          # from an event loop
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from densekit.data import Run
from densekit.protocols import Retriever

_STOP = object()


@dataclass
class _Request:
    queries: dict[str, str]
    k: int
    passages: bool = False
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the worker has done: requests, queries, `retriever.search` calls, the largest batch."""

    requests: int = 0
    queries: int = 0
    searches: int = 0
    largest_batch: int = 0

    def to_json(self) -> dict:
        mean = self.queries / self.searches if self.searches else 0.0
        return {**self.__dict__, "mean_batch": round(mean, 2)}


class MicroBatcher:
    """Gather concurrent `search(queries, k)` requests into batched `retriever.search` calls.

    `max_batch` is the number of queries the worker gathers before it stops waiting (a request is never
    split, so one batch is at most `max_batch` plus the last request's queries); `max_wait_ms` is how
    long it waits for more after the first request of a batch.
    """

    def __init__(self, retriever: Retriever, max_batch: int = 64, max_wait_ms: float = 2.0) -> None:
        self.retriever = retriever
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, queries: dict[str, str], k: int, passages: bool = False) -> Future:
        """Queue a search; the returned future holds its Run (or the exception the search raised).

        `passages` calls the retriever's `search_passages` (a passage index) instead of `search`. When the
        retriever reports each document's best passage (`best_passages`, a passage index searched for
        documents), the Run carries this request's share as its `best_passages` attribute.
        """
        request = _Request(dict(queries), k, passages)
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="densekit-search", daemon=True)
                self._worker.start()
            self._queue.put(request)
        return request.future

    async def search(self, queries: dict[str, str], k: int, passages: bool = False) -> Run:
        """:meth:`submit` awaited from an event loop (the loop keeps serving while the worker searches)."""
        return await asyncio.wrap_future(self.submit(queries, k, passages))

    def alive(self) -> bool:
        """False once closed, or when the worker thread has died."""
        with self._lock:
            return not self._closed and (self._worker is None or self._worker.is_alive())

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the queued searches, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            self._queue.put(_STOP)
        if worker is not None:
            worker.join(timeout)

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, size = [first], len(first.queries)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:  # past the deadline, still take what is already queued
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
            size += len(item.queries)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._gather(first)
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            groups: dict[tuple[int, bool], list[_Request]] = {}
            for request in live:
                groups.setdefault((request.k, request.passages), []).append(request)
            for (k, passages), group in groups.items():
                self._run_group(group, k, passages)

    def _search(self, queries: dict[str, str], k: int, passages: bool) -> tuple[Run, dict]:
        run = (self.retriever.search_passages if passages else self.retriever.search)(queries, k)
        best = {} if passages else dict(getattr(self.retriever, "best_passages", None) or {})
        return run, best

    def _run_group(self, group: list[_Request], k: int, passages: bool) -> None:
        merged: dict[str, str] = {}
        owners: list[tuple[_Request, str, str]] = []
        for request in group:
            for query_id, text in request.queries.items():
                key = str(len(owners))
                merged[key] = text
                owners.append((request, query_id, key))
        try:
            run, best = self._search(merged, k, passages)
        except BaseException as exc:  # noqa: BLE001 -- handed to the callers, never lost
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return
            # One bad request must not fail the others gathered with it: search each alone.
            for request in group:
                try:
                    single, single_best = self._search(request.queries, k, passages)
                    single.best_passages = single_best
                    request.future.set_result(single)
                except BaseException as single:  # noqa: BLE001
                    request.future.set_exception(single)
            return
        self.stats.requests += len(group)
        self.stats.queries += len(merged)
        self.stats.searches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(merged))
        results: dict[int, Run] = {id(r): Run() for r in group}
        for result in results.values():
            result.best_passages = {}
        for request, query_id, key in owners:
            if key in run:  # a retriever may leave out a query without hits; so does the result
                results[id(request)][query_id] = run[key]
            if key in best:
                results[id(request)].best_passages[query_id] = best[key]
        for request in group:
            request.future.set_result(results[id(request)])
