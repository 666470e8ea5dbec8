"""Deterministic fault injection for the fault-tolerance tests (`tests/faults/`).

Writers call :func:`fault_point` at the moments a crash or an I/O failure matters (before and after a
rename, after a shard, inside a checkpoint write). Nothing happens unless the environment variable
``DENSEKIT_FAULT`` names the point::

    DENSEKIT_FAULT="atomic-dir-swap:1"            # SIGKILL the process the 1st time the point is reached
    DENSEKIT_FAULT="shard-written:3"              # ... the 3rd time
    DENSEKIT_FAULT="cache-store:1:enospc"         # raise OSError(ENOSPC) there instead
    DENSEKIT_FAULT="atomic-dir-stage:1:eacces"    # raise PermissionError (a read-only folder, even as root)
    DENSEKIT_FAULT="a:1,b:2:enospc"               # several points

The variable is read on every call (cheap: one dict lookup when unset), so a test can set it for a
subprocess without touching the parent. Actions: ``kill`` (default; SIGKILL, as a power cut or the
OOM killer would), ``enospc``, ``eacces``, ``eio``.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "DENSEKIT_FAULT"
_counts: dict[str, int] = {}


def _plan() -> dict[str, tuple[int, str]]:
    raw = os.environ.get(ENV, "")
    plan: dict[str, tuple[int, str]] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, rest = item.partition(":")
        count, _, action = rest.partition(":")
        plan[name] = (int(count or 1), action or "kill")
    return plan


def fault_point(name: str) -> None:
    """Crash or fail here when ``DENSEKIT_FAULT`` asks for it (see the module docstring); else nothing."""
    if ENV not in os.environ:
        return
    wanted = _plan().get(name)
    if wanted is None:
        return
    _counts[name] = _counts.get(name, 0) + 1
    count, action = wanted
    if _counts[name] != count:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    codes = {"enospc": errno.ENOSPC, "eacces": errno.EACCES, "eio": errno.EIO}
    if action not in codes:
        raise ValueError(f"{ENV}: unknown action {action!r} for point {name!r}")
    code = codes[action]
    error = PermissionError if code == errno.EACCES else OSError
    raise error(code, os.strerror(code), f"<fault point {name}>")
