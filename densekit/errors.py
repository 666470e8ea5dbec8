"""Errors that densekit raises for a user's mistake (bad input, bad option, missing file).

The CLI prints such an error as one line on stderr and exits with code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class DensekitError(Exception):
    """A user-facing error: the message alone tells what went wrong and what was expected."""


class InputError(DensekitError):
    """Bad input data: names the file, the 1-based line when there is one, and the expectation."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.detail = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class IntegrityError(DensekitError):
    """A saved artefact (index, cache entry, archive) does not match its manifest or checksum."""
