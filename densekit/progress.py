"""Progress bars for long loops, silenced globally with `set_quiet(True)` or `DENSEKIT_QUIET=1`.

The CLI silences them under `--quiet` and `--json`, so JSON on stdout is never mixed with bars
(bars go to stderr anyway).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = os.environ.get("DENSEKIT_QUIET", "") not in ("", "0", "false")


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def interactive(show: bool | None = None) -> bool:
    """Whether to show progress: `show` when given, else only in interactive use (stderr is a terminal)
    and not silenced. For library calls (e.g. LangChain's `from_documents`) that default to quiet
    when run by a script or a test but show progress to a person at a terminal."""
    if show is not None:
        return show
    import sys

    return not _quiet and sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap `iterable` in a progress bar on stderr unless progress is silenced."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=_quiet, dynamic_ncols=True))


def progress_bar(desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A manually updated bar (`bar.update(n)`), silenced like `progress`."""
    return tqdm(desc=desc, total=total, unit=unit, disable=_quiet, dynamic_ncols=True)


def announce(message: str) -> None:
    """Tell the user something they must know (a fallback, a skipped step) on stderr, always.

    Unlike progress, announcements are not silenced by --quiet: a fallback is never silent.
    """
    import sys

    print(f"densekit: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(message: str) -> Iterator[None]:
    """Announce a long step that has no loop to count (FAISS training, adding) and its duration on stderr,
    unless progress is silenced: "densekit: training IVF... on 65536 vectors" ... "(done in 12.3 s)"."""
    import sys
    import time

    start = time.perf_counter()
    if not _quiet:
        print(f"densekit: {message} ...", file=sys.stderr, flush=True)
    yield
    if not _quiet:
        print(f"densekit: {message}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
