"""Connecting to Milvus and mapping densekit's index presets and search parameters to Milvus's.

The URI says which Milvus: a local path is Milvus Lite (pymilvus starts the embedded engine, which
serves gRPC on 127.0.0.1 inside this process); ``http(s)://host:port`` is Milvus Standalone or
Distributed (or a Milvus Lite server), with a token from ``--token`` or ``DENSEKIT_MILVUS_TOKEN``.
A manifest records the URI without credentials, never the token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from densekit.errors import DensekitError
from densekit.index.factory import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    check_search_params,
    default_nprobe,
    ivf_lists,
    pq_subquantizers,
)

MILVUS_EXTRA = "pip install 'densekit[milvus]'"
TOKEN_ENV = "DENSEKIT_MILVUS_TOKEN"
URI_ENV = "DENSEKIT_MILVUS_URI"
#: densekit preset -> Milvus index type
INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivf-flat": "IVF_FLAT", "ivf-pq": "IVF_PQ"}
CONNECT_TIMEOUT = 60.0  # seconds; a busy machine can take more than pymilvus's 10 to answer the first call
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")


def require_pymilvus() -> Any:
    """The pymilvus module, or a DensekitError naming the extra."""
    try:
        import pymilvus
    except ImportError:
        raise DensekitError(f"the Milvus backend needs pymilvus and milvus-lite: {MILVUS_EXTRA}") from None
    return pymilvus


def is_local(uri: str) -> bool:
    """A Milvus Lite data path (not a server address)."""
    return "://" not in uri


def normalize_uri(uri: str) -> str:
    """The URI as a manifest records it: a local path made absolute; a server URI without credentials."""
    if not uri:
        raise DensekitError("--uri is empty: give a Milvus Lite path (runs/x.db) or a server (http://host:19530)")
    if is_local(uri):
        return str(Path(uri).expanduser().resolve())
    scheme, _, rest = uri.partition("://")
    if "@" in rest.split("/", 1)[0]:
        raise DensekitError(f"put credentials in --token or ${TOKEN_ENV}, not in the URI ({scheme}://...@...)")
    return uri


def connect(uri: str, token: str | None = None) -> Any:
    """A MilvusClient for `uri` (a Lite path starts the embedded engine); `token` defaults to the env var."""
    pymilvus = require_pymilvus()
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    if is_local(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise DensekitError(f"{uri}: a local Milvus Lite path needs milvus-lite: {MILVUS_EXTRA}") from None
    try:
        return pymilvus.MilvusClient(uri=uri, token=token, timeout=CONNECT_TIMEOUT)
    except pymilvus.MilvusException as exc:
        raise DensekitError(f"cannot connect to Milvus at {uri}: {exc.message}") from None


def milvus_error(what: str, exc: Exception) -> DensekitError:
    """One line for a Milvus server error."""
    return DensekitError(f"{what}: {getattr(exc, 'message', None) or str(exc).splitlines()[0]}")


def index_recipe(preset: str, n_expected: int, dim: int) -> tuple[str, dict, dict]:
    """(Milvus index type, build parameters, default search parameters) for a densekit preset."""
    name = preset.strip().lower()
    if name not in INDEX_TYPES:
        raise DensekitError(
            f"--backend milvus maps the presets {', '.join(INDEX_TYPES)} to Milvus index types; "
            f"{preset!r} has no Milvus counterpart"
        )
    if name == "flat":
        return "FLAT", {}, {}
    if name == "hnsw":
        return "HNSW", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}, {"efSearch": HNSW_EF_SEARCH}
    nlist = ivf_lists(max(n_expected, 1))
    params: dict = {"nlist": nlist}
    if name == "ivf-pq":
        params.update(m=pq_subquantizers(dim), nbits=8)
    return INDEX_TYPES[name], params, {"nprobe": default_nprobe(nlist)}


def milvus_search_params(index_type: str, params: dict) -> dict:
    """densekit search parameters (efSearch, nprobe) checked for `index_type`, by Milvus's names."""
    params = check_search_params(params)
    out = {}
    for name, value in params.items():
        if name == "efSearch" and index_type.startswith("HNSW"):
            out["ef"] = value
        elif name == "nprobe" and index_type.startswith("IVF"):
            out["nprobe"] = value
        else:
            raise DensekitError(f"search parameter {name}={value} does not apply to a Milvus {index_type} index")
    return out
