"""File helpers every writer and reader uses: the output-target rule, atomic files and directories,
locks, checksums, JSON, and text readers whose failures are one-line errors.

Writing a directory (an index, a model, a dataset, a cache entry) goes through :func:`atomic_dir`:

1. **The output-target rule.** The target must be absent, an empty directory, or a directory that
   densekit wrote as the same kind of thing (its ``.densekit.json`` marker, or for older outputs
   the manifest / config file of that kind). Anything else -- a folder of someone's code, a file --
   is refused with a one-line error unless the caller passes ``overwrite=True`` (``--overwrite``).
2. **A lock.** ``.<name>.lock`` beside the target is held exclusively (``flock``) while the new
   directory is written and swapped in; readers take it shared (:func:`read_lock`), so a reader
   never sees half of one version and half of another. A second writer waits (announced) and
   fails with a clear message after ``$DENSEKIT_LOCK_TIMEOUT`` seconds (default 600).
3. **Staging and one atomic swap.** The new content is written to ``.<name>.<pid>.<random>.tmp``
   beside the target, then exchanged with the target in one ``renameat2(RENAME_EXCHANGE)`` call
   (Linux), so at every instant the target path holds either the complete old or the complete new
   directory; the old one is then removed. Where the exchange is unsupported, two renames are used
   and an interrupted replace is rolled back by the next writer (:func:`clean_stale`).
4. **Stale staging is cleaned.** Staging and aside folders left by a process that died (kill -9,
   power loss) are removed by the next write of the same target.

Files and directories get the usual permissions (0666/0777 less the umask), not mkstemp's private
0600/0700.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from densekit.errors import DensekitError, InputError, IntegrityError
from densekit.faults import fault_point

MARKER = ".densekit.json"
LOCK_TIMEOUT_ENV = "DENSEKIT_LOCK_TIMEOUT"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


# ----------------------------------------------------------------------------- reading text


class TextReader:
    """Lines of a text file (``.gz`` transparently), with decode and gzip failures as InputError.

    Iterating yields the lines; an invalid UTF-8 byte sequence, a truncated or corrupt gzip stream
    or a read error becomes :class:`~densekit.errors.InputError` naming the file and the 1-based
    line where it happened, instead of a traceback (or click's "aborted" for an EOFError).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.line = 0
        if self.path.is_dir():
            raise InputError(self.path, "is a directory, expected a file")
        try:
            # Binary, decoded line by line: a bad byte is reported on its own line, not on the line
            # where a text wrapper's read-ahead buffer happened to start.
            if self.path.suffix == ".gz":
                self._handle: IO[bytes] = gzip.open(self.path, "rb")  # noqa: SIM115
            else:
                self._handle = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise InputError(self.path, "no such file") from None
        except OSError as exc:
            raise InputError(self.path, f"cannot be read ({exc.strerror or exc})") from None

    def __enter__(self) -> TextReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._handle.close()

    def _failure(self, exc: BaseException) -> InputError:
        if isinstance(exc, UnicodeDecodeError):
            return InputError(
                self.path, f"not valid UTF-8 ({exc.reason}, byte 0x{exc.object[exc.start]:02x})", self.line + 1
            )
        if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error)):
            return InputError(self.path, f"truncated or corrupt gzip data ({exc or type(exc).__name__})", self.line + 1)
        reason = getattr(exc, "strerror", None) or str(exc)
        return InputError(self.path, f"read failed ({reason})", self.line + 1)

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                raw = self._handle.readline()
                line = raw.decode("utf-8")
            except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
                raise self._failure(exc) from None
            if not raw:
                return
            self.line += 1
            if line.endswith("\r\n"):
                line = line[:-2] + "\n"
            yield line

    def read(self) -> str:
        return "".join(self)


def open_text(path: str | Path) -> TextReader:
    """Open a text file for reading (``.gz`` transparently); see :class:`TextReader`."""
    return TextReader(path)


def read_json(path: str | Path, error: type[DensekitError] = InputError) -> Any:
    """A JSON file's value; missing, unreadable, non-UTF-8 or malformed is a one-line error.

    `error` is :class:`InputError` for files a user gives and :class:`IntegrityError` for artefacts
    densekit wrote itself (a damaged manifest or cache entry).
    """
    path = Path(path)
    try:
        with open_text(path) as reader:
            text = reader.read()
        return json.loads(text)
    except InputError as exc:
        if error is InputError:
            raise
        raise error(str(exc)) from None
    except json.JSONDecodeError as exc:
        if error is InputError:
            raise InputError(path, f"malformed JSON ({exc.msg} at column {exc.colno})", exc.lineno) from None
        raise error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


# ----------------------------------------------------------------------------- names and targets

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


def safe_name(name: str, what: str = "name") -> str:
    """`name` if it is one plain path component (letters, digits, ``. _ + -``), else a DensekitError.

    Names that end up in paths (dataset names, model names, collection names) go through this
    before they touch the file system, so ``../x``, ``/abs`` or ``a/b`` can never leave their folder.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise DensekitError(
            f"{what} {name!r} is not a plain name: use letters, digits, '.', '_', '+' and '-' (no '/', no '..')"
        )
    return name


def safe_relative(name: str, root: Path, what: str = "file") -> Path:
    """`root / name` when `name` is a relative path that stays inside `root`, else IntegrityError."""
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts or not candidate.parts:
        raise IntegrityError(f"{root}: {what} {name!r} points outside the directory")
    return root / candidate


def read_marker(path: Path) -> dict | None:
    """The ``.densekit.json`` marker of a directory densekit wrote, or None."""
    marker = path / MARKER
    if not marker.is_file():
        return None
    try:
        value = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _legacy_kind(path: Path) -> str | None:
    """What an output written before markers existed is, judged by the files densekit puts in it."""
    manifest = path / "manifest.json"
    if manifest.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return "index:" + str(json.loads(manifest.read_text(encoding="utf-8")).get("kind", "dense"))
    if (path / "densekit_config.json").is_file():
        return "model"
    if (path / "meta.json").is_file() and (path / "embeddings.npy").is_file():
        return "cache"
    return None


def check_output_target(path: str | Path, kind: str, overwrite: bool = False) -> None:
    """Refuse to replace what densekit did not write (see the module docstring, rule 1).

    Allowed: `path` absent, an empty directory, or a directory densekit wrote as `kind`. With
    `overwrite`, anything may be replaced. Raises DensekitError otherwise, naming the way out.
    """
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        raise DensekitError(
            f"{path} exists and is not a directory densekit wrote; choose another output path "
            "or pass --overwrite to replace it"
        )
    marker = read_marker(path)
    found = marker.get("kind") if marker else _legacy_kind(path)
    if found == kind:
        return
    if not any(path.iterdir()):
        return
    what = f"holds a densekit {found}, not a {kind}" if found else "holds files densekit did not write"
    raise DensekitError(f"{path} {what}; choose another output path or pass --overwrite to replace it")


# ----------------------------------------------------------------------------- locks


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def _flock(path: Path, mode: int, create: bool, timeout: float | None = None) -> Iterator[None]:
    lock = lock_path(path)
    try:
        if create:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        else:
            fd = os.open(lock, os.O_RDONLY)
    except OSError:
        if create:
            raise
        yield  # no lock file and none can be made (a read-only folder): nothing can be writing there
        return
    try:
        timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, "600")) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DensekitError(
                        f"{path} is locked by another densekit process ({lock}) for more than "
                        f"{timeout:g} s; wait for it to finish (the lock ends with the process)"
                    ) from None
                if not announced and time.monotonic() > deadline - timeout + 1.0:
                    from densekit.progress import announce

                    announce(f"waiting for another densekit process that is writing {path} ({lock})")
                    announced = True
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def write_lock(path: str | Path, timeout: float | None = None) -> contextlib.AbstractContextManager[None]:
    """Hold the exclusive lock of output `path` (waits for other writers and readers; at most `timeout`
    seconds, default $DENSEKIT_LOCK_TIMEOUT or 600, `math.inf` for as long as the holder lives)."""
    return _flock(Path(path), fcntl.LOCK_EX, create=True, timeout=timeout)


def read_lock(path: str | Path) -> contextlib.AbstractContextManager[None]:
    """Hold the shared lock of `path` while reading it, so no writer swaps it underneath."""
    return _flock(Path(path), fcntl.LOCK_SH, create=False)


# ----------------------------------------------------------------------------- atomic writes

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_ASIDE = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def clean_stale(path: str | Path) -> list[Path]:
    """Remove staging folders of `path` left by dead processes; restore an interrupted replace.

    Returns what was removed or restored. Safe to call any time: folders of live processes stay.
    """
    path = Path(path)
    parent = path.parent
    touched: list[Path] = []
    if not parent.is_dir():
        return touched
    for entry in parent.iterdir():
        for pattern in (_STAGING, _ASIDE):
            match = pattern.match(entry.name)
            if not match or match.group("name") != path.name or _pid_alive(int(match.group("pid"))):
                continue
            if pattern is _ASIDE and not (path.exists() or path.is_symlink()):
                os.replace(entry, path)  # the replace died between its two renames: put the old one back
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            touched.append(entry)
    return touched


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str = "directory", overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory; it replaces `path` in one swap when the block succeeds.

    `kind` names what is written ("index:dense", "model", "dataset", "cache", ...): an existing
    `path` must be of the same kind unless `overwrite` (see the module docstring). The staging
    directory receives the ``.densekit.json`` marker. On failure nothing at `path` changes.
    """
    path = Path(path)
    check_output_target(path, kind, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Inside another write's staging directory nobody else can be writing: no lock, nothing stale.
    private = _STAGING.match(path.parent.name) is not None
    with contextlib.nullcontext() if private else write_lock(path):
        if not private:
            clean_stale(path)
        check_output_target(path, kind, overwrite)  # again: another writer may have been first
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir(mode=0o777 & ~_UMASK)
        try:
            fault_point("atomic-dir-stage")
            yield tmp
            if not (tmp / MARKER).is_file():
                with open(tmp / MARKER, "w", encoding="utf-8") as handle:
                    json.dump({"kind": kind, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, handle)
            fault_point("atomic-dir-swap")
            if path.exists() or path.is_symlink():
                if _exchange(tmp, path):
                    fault_point("atomic-dir-swapped")
                    _remove(tmp)  # now holds the old content
                    return
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                fault_point("atomic-dir-between-renames")
                os.replace(tmp, path)
                _remove(old)
            else:
                os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`; rename it over `path` only if the block succeeds.

    A reader never sees a half-written file and a failed write leaves nothing behind. A directory
    at `path` is never replaced by a file (an error instead).
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise DensekitError(f"{path} is a directory; give a file path for this output")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode.replace("w", "x"), encoding=encoding) as handle:
            os.chmod(tmp, 0o666 & ~_UMASK)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        fault_point("atomic-file-rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- checksums, JSON


def _digest_file(path: str | Path, digest: Any, chunk: int = 1 << 20) -> str:
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    return _digest_file(path, hashlib.sha256(), chunk)


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    return _digest_file(path, hashlib.md5(), chunk)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def map_os_error(exc: OSError) -> str:
    """One line for an OSError: the file it concerns and the system's reason (used by the CLI)."""
    where = exc.filename if exc.filename is not None else "densekit"
    reason = exc.strerror or str(exc)
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = " (free some space, or point DENSEKIT_HOME / the output elsewhere)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = " (the folder is not writable: choose another output or DENSEKIT_HOME)"
    return f"{where}: {reason}{hint}"
