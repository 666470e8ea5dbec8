"""The manifest of a saved index directory: constants, one timestamp, read with self-checks, verify.

Every index directory (dense FAISS, BM25, and later backends) holds ``manifest.json``::

    {"format_version": 1, "densekit_version": "...", "kind": "dense" | "bm25" | "milvus", "count": N,
     "created": "2026-12-03T00:00:00Z", "files": {"<relative path>": "<sha256>", ...}, ...}

plus kind-specific keys (dense: ``dim``, ``metric``, ``factory``, ``model`` with the model's
fingerprint; bm25: ``backend``, ``params``; milvus: ``uri``, ``collection``, ``index_type``, ``dim``,
``model``). :func:`read_manifest` checks the manifest itself before anything trusts it: the format
version, the keys and types its kind needs, that ``files`` lists the files that kind cannot do
without (removing an entry would otherwise switch its checksum off), and that every listed name
stays inside the directory. :func:`verify_files` then checks every
listed file against its sha256. Any failure is :class:`~densekit.errors.IntegrityError`: a clear
error, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from densekit.errors import DensekitError, IntegrityError
from densekit.io import clean_stale, read_json, safe_relative, sha256_file

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"

#: keys (and their types) each kind of index must have, and the files its `files` must list
REQUIRED_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "dense": {"dim": int, "count": int, "metric": str, "factory": str, "files": dict},
    "bm25": {"backend": str, "count": int, "params": dict, "files": dict},
    "milvus": {
        "uri": str,
        "collection": str,
        "dim": int,
        "count": int,
        "metric": str,
        "index_type": str,
        "files": dict,
    },
}
REQUIRED_FILES: dict[str, tuple[str, ...]] = {"dense": (INDEX_FILE, IDS_FILE), "bm25": (IDS_FILE,)}


def timestamp() -> str:
    """UTC time as written in manifests and sidecars (ISO 8601, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_manifest(manifest: object, path: Path) -> dict:
    """Validate a parsed manifest (see the module docstring); returns it."""
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{path}: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IntegrityError(f"{path}: format_version {version!r}; this densekit reads version {FORMAT_VERSION}")
    kind = manifest.setdefault("kind", "dense")
    for key, expected in REQUIRED_KEYS.get(kind, {"count": int, "files": dict}).items():
        value = manifest.get(key)
        if value is None:
            raise IntegrityError(f"{path}: missing {key!r} (required for a {kind} index)")
        if not isinstance(value, expected) or isinstance(value, bool):
            raise IntegrityError(
                f"{path}: {key!r} must be a {getattr(expected, '__name__', expected)}, got {type(value).__name__}"
            )
    if manifest["count"] < 0 or manifest.get("dim", 1) <= 0:
        raise IntegrityError(f"{path}: count and dim must be positive")
    files = manifest["files"]
    for name in REQUIRED_FILES.get(kind, ()):
        if name not in files:
            raise IntegrityError(f"{path}: 'files' does not list {name} (its checksum cannot be skipped)")
    for name, digest in files.items():
        safe_relative(name, path.parent, "file")
        if not isinstance(digest, str) or len(digest) != 64:
            raise IntegrityError(f"{path}: the sha256 of {name!r} is not a 64-character hex digest")
    return manifest


def read_manifest(directory: str | Path) -> dict:
    """The checked manifest of a saved index directory, with a clear error when missing or damaged."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.exists():
        with contextlib.suppress(OSError):
            clean_stale(directory)  # a writer killed between its two renames left the old index aside
    if not directory.is_dir():
        raise DensekitError(f"{directory}: no such index directory")
    if not path.is_file():
        raise IntegrityError(f"{path}: missing; {directory} is not a densekit index")
    return check_manifest(read_json(path, IntegrityError), path)


def verify_files(directory: str | Path, manifest: dict) -> None:
    """Check every file the manifest lists against its sha256."""
    directory = Path(directory)
    for name, expected in manifest.get("files", {}).items():
        path = safe_relative(name, directory, "file")
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"{path}: sha256 {actual[:12]}... differs from the manifest's {expected[:12]}... "
                "(the file was altered or truncated)"
            )


def previous_manifest(directory: Path) -> dict:
    """The manifest of an index about to be replaced ({} when there is none or it is unreadable)."""
    try:
        return read_manifest(directory)
    except DensekitError:
        return {}
