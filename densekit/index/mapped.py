"""Memory-mapped embedding matrices whose pages are handed back to the OS after use.

Reading rows of a file opened with mmap makes those pages part of the process's resident memory
until the kernel needs them. The data stays in the page cache either way; what differs is whether
the process *holds* it. :class:`MappedRows` opens the `.npy` file behind a :class:`numpy.memmap` with
its own mapping so that :meth:`MappedRows.release` can drop the process's hold
(``madvise(MADV_DONTNEED)``; a later read faults the page back in from the page cache, unchanged). The
miner releases after each block of its exact search and after each chunk of queries, which keeps its
resident memory bounded by the block and the chunk instead of growing with the corpus.

An array that is not backed by a file (an in-memory array) is used as it is; release does nothing.
"""

from __future__ import annotations

import mmap

import numpy as np


class MappedRows:
    """Rows of a 2-D array, read through a mapping that can be released.

    Args:
        array: a :class:`numpy.memmap` of a whole `.npy` array (as ``np.load(mmap_mode="r")`` returns),
            or any 2-D array (kept as is).

    ``rows`` is a plain ndarray over the same data (indexing a ``numpy.memmap`` is slower).
    """

    def __init__(self, array: np.ndarray) -> None:
        self._map: mmap.mmap | None = None
        self.rows = np.asarray(array)
        filename = getattr(array, "filename", None)
        if isinstance(array, np.memmap) and filename and array.ndim == 2 and array.flags.c_contiguous:
            with open(filename, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self.rows = np.frombuffer(self._map, dtype=array.dtype, count=array.size, offset=array.offset).reshape(
                array.shape
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return self.rows.shape

    def __len__(self) -> int:
        return len(self.rows)

    def release(self) -> None:
        """Drop this process's resident pages of the file (no-op for an in-memory array)."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)
