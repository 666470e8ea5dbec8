"""Peak resident memory of a process while a block runs, sampled on a thread (benchmarks share it).

``ru_maxrss`` is the peak of the whole process life; when one process measures several contenders in
turn (benchmarks/train.py) or another process (benchmarks/milvus.py: the Milvus Lite server), a
sampled peak over the block is what tells them apart.
"""

from __future__ import annotations

import os
import threading

import psutil


class PeakRSS:
    """``with PeakRSS(pid) as memory: ...`` then ``memory.peak`` (bytes), ``memory.start``, ``memory.mib``."""

    def __init__(self, pid: int | None = None, every: float = 0.05) -> None:
        self.process = psutil.Process(pid or os.getpid())
        self.every = every
        self.peak = self.start = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)
