"""Memory-mapped embedding matrices whose pages are handed back to the OS after use.

Reading rows of a file opened with mmap makes those pages part of the process's resident memory
until the kernel needs them. The data stays in the page cache either way; what differs is whether
the process *holds* it. :class:`MappedRows` opens the `.npy` file behind a :class:`numpy.memmap` with
its own mapping so that :meth:`MappedRows.release` can drop the process's hold
(``madvise(MADV_DONTNEED)``; a later read faults the page back in from the page cache, unchanged). The
miner releases after each block of its exact search and after each chunk of queries, which keeps its
resident memory bounded by the block and the chunk instead of growing with the corpus.

Scattered rows are another matter: this kernel maps a whole large folio of the page cache (up to
2 MB) on every page fault, so gathering 1,024 random rows through the mapping held 288 MB of a 300 MB
file (measured, Linux 6.18). :meth:`MappedRows.gather` therefore reads scattered rows of a file
larger than `GATHER_MAP_LIMIT` with ``pread`` (a few microseconds per row, nothing held), and through
the mapping only for small files, whose whole size is less than the limit.

An array that is not backed by a file (an in-memory array) is used as it is; release does nothing.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

#: Files up to this size are gathered through the mapping (holding at most the file); larger ones by pread.
GATHER_MAP_LIMIT = 64 * 2**20


class MappedRows:
    """Rows of a 2-D array, read through a mapping that can be released.

    Args:
        array: a :class:`numpy.memmap` of a whole `.npy` array (as ``np.load(mmap_mode="r")`` returns),
            or any 2-D array (kept as is).

    ``rows`` is a plain ndarray over the same data (indexing a ``numpy.memmap`` is slower).
    """

    def __init__(self, array: np.ndarray) -> None:
        self._map: mmap.mmap | None = None
        self._fd: int | None = None
        self.rows = np.asarray(array)
        filename = getattr(array, "filename", None)
        if isinstance(array, np.memmap) and filename and array.ndim == 2 and array.flags.c_contiguous:
            with open(filename, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._offset = int(array.offset)
            if array.nbytes > GATHER_MAP_LIMIT:
                self._fd = os.open(filename, os.O_RDONLY)
            self.rows = np.frombuffer(self._map, dtype=array.dtype, count=array.size, offset=array.offset).reshape(
                array.shape
            )

    @property
    def shape(self) -> tuple[int, ...]:
        return self.rows.shape

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """A new float array of the given rows, in the given order (see the module docstring)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._fd is None:
            return self.rows[rows]
        out = np.empty((len(rows), *self.rows.shape[1:]), dtype=self.rows.dtype)
        width = out.itemsize * int(np.prod(self.rows.shape[1:]))
        view = memoryview(out).cast("B")
        for i, row in enumerate(rows.tolist()):
            os.preadv(self._fd, [view[i * width : (i + 1) * width]], self._offset + row * width)
        return out

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def release(self) -> None:
        """Drop this process's resident pages of the file (no-op for an in-memory array)."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)
