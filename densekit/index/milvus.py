"""`MilvusIndex`: a Milvus collection behind the same calls as :class:`~densekit.index.dense.DenseIndex`.

FAISS in one process is the default; a corpus that outgrows one machine, or a service with several
replicas and live updates, goes to Milvus. The same code talks to Milvus Lite (``uri`` a local path
such as ``runs/scifact.db``: pymilvus starts the embedded engine, which serves gRPC on 127.0.0.1 in
this process) and to Milvus Standalone or Distributed (``uri`` ``http://host:19530`` plus a token,
read from ``DENSEKIT_MILVUS_TOKEN`` unless given; a token is never written to a manifest).

The collection::

    id        VARCHAR primary key (BEIR ids are strings)
    vector    FLOAT_VECTOR(dim), metric IP
    title     VARCHAR        text      VARCHAR        metadata  JSON

Its properties record the fingerprint of the model that built it (``densekit.fingerprint``), so a
manifest pointing at a collection rebuilt with another model is refused. densekit's presets map to
Milvus index types (:data:`INDEX_TYPES`, parameters sized as the FAISS presets are); ``efSearch`` and
``nprobe`` (``--ef-search``, ``--nprobe``) become Milvus's ``ef`` and ``nprobe``.

A saved Milvus index is a directory like the others: ``manifest.json`` of kind ``milvus`` (uri,
collection, dim, metric, index type and parameters, model, count at build time) and, by default,
``docs.jsonl`` (the texts, for search output and RAG). ``DENSEKIT_MILVUS_URI`` points a saved index at
another deployment of the same collection (announced).

Example::

    index = MilvusIndex.create("runs/x.db", "scifact", dim=384, preset="hnsw", n_expected=5183, model=...)
    index.add(embeddings, ids)
    scores, ids = index.search(query_vectors, k=10, filter={"source": "faq"})
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from densekit import __version__
from densekit.errors import DensekitError, IntegrityError
from densekit.index.factory import check_search_params
from densekit.index.manifest import FORMAT_VERSION, read_manifest, timestamp, verify_files
from densekit.index.milvus_config import (
    CONSISTENCY_LEVELS,
    INDEX_TYPES,
    MILVUS_EXTRA,
    TOKEN_ENV,
    URI_ENV,
    connect,
    index_recipe,
    milvus_error,
    milvus_search_params,
    normalize_uri,
    require_pymilvus,
)
from densekit.index.milvus_filter import milvus_filter_expression
from densekit.progress import announce

# Re-exported: callers open the backend through this module.
__all__ = [
    "CONSISTENCY_LEVELS",
    "INDEX_TYPES",
    "MILVUS_EXTRA",
    "TOKEN_ENV",
    "URI_ENV",
    "MilvusIndex",
    "connect",
    "index_recipe",
    "milvus_search_params",
    "normalize_uri",
    "require_pymilvus",
]

FINGERPRINT_PROPERTY = "densekit.fingerprint"
MAX_VARCHAR = 65535  # Milvus's VARCHAR limit, in UTF-8 bytes
MAX_ID = 512
SEARCH_BATCH = 1024  # queries per request (a cluster accepts at most 16384)


def _fit(text: str) -> str:
    """`text` cut to Milvus's VARCHAR limit (UTF-8 bytes, on a character boundary)."""
    data = text.encode("utf-8")
    return text if len(data) <= MAX_VARCHAR else data[:MAX_VARCHAR].decode("utf-8", errors="ignore")


class MilvusIndex:
    """Vectors with string ids in a Milvus collection. Make one with :meth:`create`, reopen with :meth:`load`."""

    def __init__(
        self,
        client: Any,
        uri: str,
        collection: str,
        dim: int,
        index_type: str = "FLAT",
        index_params: dict | None = None,
        search_params: dict | None = None,
        model: dict | None = None,
        preset: str | None = None,
        num_shards: int = 1,
        consistency_level: str = "Strong",
    ) -> None:
        self.client = client
        self.uri = uri
        self.collection = collection
        self._dim = dim
        self.metric = "ip"
        self.index_type = index_type
        self.index_params = dict(index_params or {})
        self.search_params = check_search_params(dict(search_params or {}))
        self.model = model or {}
        self.preset = preset
        self.num_shards = num_shards
        self.consistency_level = consistency_level
        self.factory = f"milvus:{index_type}"

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        try:
            rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        except Exception as exc:
            raise milvus_error(f"{self.uri}: cannot count {self.collection}", exc) from None
        return int(rows[0]["count(*)"])

    # -- creating and opening ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        uri: str,
        collection: str,
        dim: int,
        preset: str = "flat",
        n_expected: int = 0,
        model: dict | None = None,
        token: str | None = None,
        num_shards: int = 1,
        consistency_level: str = "Strong",
        search_params: dict | None = None,
        existing: str = "error",
    ) -> MilvusIndex:
        """Create `collection` at `uri` for vectors of `dim` (`preset`: flat, hnsw, ivf-flat, ivf-pq).

        `existing` says what to do when the collection is there: ``error``, ``resume`` (reopen it, after
        checking that the same model built it) or ``overwrite`` (drop it, only if densekit built it).
        """
        if existing not in ("error", "resume", "overwrite"):
            raise ValueError(f"existing must be error, resume or overwrite, got {existing!r}")
        if consistency_level not in CONSISTENCY_LEVELS:
            raise DensekitError(
                f"consistency level must be one of {', '.join(CONSISTENCY_LEVELS)}, got {consistency_level!r}"
            )
        if num_shards < 1:
            raise DensekitError(f"--num-shards must be >= 1, got {num_shards}")
        index_type, index_params, defaults = index_recipe(preset, n_expected, dim)
        params = {**defaults, **check_search_params(dict(search_params or {}))}
        milvus_search_params(index_type, params)
        uri = normalize_uri(uri)
        client = connect(uri, token)
        if index_type == "IVF_PQ" and str(client.get_server_version()).startswith("milvus_lite"):
            raise DensekitError(
                f"{uri}: Milvus Lite cannot build IVF_PQ indexes; use ivf-flat or hnsw, or a Milvus server"
            )
        model = model or {}
        fingerprint = str(model.get("fingerprint") or "")
        index = cls(
            client, uri, collection, dim, index_type, index_params, params, model, preset, num_shards, consistency_level
        )
        if client.has_collection(collection):
            recorded = index.recorded_fingerprint()
            if existing == "error":
                raise DensekitError(
                    f"{uri}: collection {collection!r} exists; pass --resume to finish filling it, --overwrite "
                    "to drop and rebuild it, or another --collection"
                )
            if existing == "overwrite":
                if recorded is None:
                    raise DensekitError(f"{uri}: collection {collection!r} was not built by densekit; not dropping it")
                client.drop_collection(collection)
            else:
                index.check_collection(fingerprint)
                built = client.describe_index(collection, "vector") or {}
                if built.get("index_type") not in (None, index_type):
                    raise DensekitError(
                        f"{uri}: collection {collection!r} has a {built['index_type']} index, not {index_type}; "
                        "resume with the --factory it was built with"
                    )
                return index
        pymilvus = require_pymilvus()
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("title", pymilvus.DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("text", pymilvus.DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("metadata", pymilvus.DataType.JSON)
        spec = client.prepare_index_params()
        spec.add_index("vector", index_type=index_type, metric_type="IP", params=index_params)
        try:
            client.create_collection(
                collection,
                schema=schema,
                index_params=spec,
                num_shards=num_shards,
                consistency_level=consistency_level,
                properties={FINGERPRINT_PROPERTY: fingerprint, "densekit.model": str(model.get("model") or "")},
            )
        except Exception as exc:
            raise milvus_error(f"{uri}: cannot create collection {collection!r}", exc) from None
        return index

    def recorded_fingerprint(self) -> str | None:
        """The model fingerprint the collection's properties record (None: not a densekit collection)."""
        properties = self.client.describe_collection(self.collection).get("properties") or {}
        return properties.get(FINGERPRINT_PROPERTY)

    def check_collection(self, fingerprint: str) -> None:
        """The collection exists, holds vectors of this dimension, and was built with this model."""
        if not self.client.has_collection(self.collection):
            raise IntegrityError(f"{self.uri}: no collection {self.collection!r} (dropped, or another deployment?)")
        info = self.client.describe_collection(self.collection)
        dims = [f.get("params", {}).get("dim") for f in info.get("fields", []) if f.get("name") == "vector"]
        if not dims or int(dims[0]) != self.dim:
            raise IntegrityError(
                f"{self.uri}: collection {self.collection!r} holds vectors of dimension {dims[0] if dims else None}, "
                f"not {self.dim}"
            )
        recorded = (info.get("properties") or {}).get(FINGERPRINT_PROPERTY)
        if recorded is None:
            raise IntegrityError(f"{self.uri}: collection {self.collection!r} was not built by densekit")
        if fingerprint and recorded and recorded != fingerprint:
            raise IntegrityError(
                f"{self.uri}: collection {self.collection!r} was built with another model (fingerprint "
                f"{recorded[:12]}... vs {fingerprint[:12]}...); rebuild it or choose another --collection"
            )
        try:
            self.client.load_collection(self.collection)
        except Exception as exc:
            raise milvus_error(f"{self.uri}: cannot load collection {self.collection!r}", exc) from None

    @classmethod
    def load(cls, directory: str | Path, token: str | None = None, verify: bool = True) -> MilvusIndex:
        """Open the collection a saved Milvus index directory names, checking the manifest and the collection."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        if manifest["kind"] != "milvus":
            raise DensekitError(f"{directory}: a {manifest['kind']} index, not a Milvus one")
        if verify:
            verify_files(directory, manifest)
        uri = manifest["uri"]
        override = os.environ.get(URI_ENV)
        if override and override != uri:
            announce(f"{directory}: searching Milvus at {override} (${URI_ENV}) instead of the manifest's {uri}")
            uri = override
        index = cls(
            connect(uri, token),
            uri,
            manifest["collection"],
            manifest["dim"],
            manifest["index_type"],
            manifest.get("index_params"),
            manifest.get("search_params"),
            manifest.get("model"),
            manifest.get("preset"),
            manifest.get("num_shards", 1),
            manifest.get("consistency_level", "Strong"),
        )
        index.check_collection(str(index.model.get("fingerprint") or ""))
        return index

    # -- changing ------------------------------------------------------------------------------------

    def existing(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` the collection holds (read with strong consistency)."""
        if not ids:
            return set()
        try:
            rows = self.client.query(self.collection, ids=list(ids), output_fields=["id"], consistency_level="Strong")
        except Exception as exc:
            raise milvus_error(f"{self.uri}: cannot read ids from {self.collection}", exc) from None
        return {row["id"] for row in rows}

    def _rows(self, embeddings: np.ndarray, ids: Sequence[str], documents: Sequence[Any] | None) -> list[dict]:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise DensekitError(f"expected vectors of dimension {self.dim}, got shape {embeddings.shape}")
        if len(ids) != len(embeddings):
            raise DensekitError(f"{len(embeddings)} embeddings but {len(ids)} ids")
        if documents is not None and len(documents) != len(ids):
            raise DensekitError(f"{len(documents)} documents but {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise DensekitError("document ids must be unique")
        rows = []
        vectors = embeddings.tolist()  # pymilvus packs Python floats faster than numpy scalars
        for i, doc_id in enumerate(ids):
            if not doc_id or len(doc_id.encode("utf-8")) > MAX_ID:
                raise DensekitError(f"document id {doc_id[:40]!r}: Milvus ids are 1 to {MAX_ID} bytes")
            doc = documents[i] if documents is not None else None
            rows.append(
                {
                    "id": doc_id,
                    "vector": vectors[i],
                    "title": _fit(getattr(doc, "title", "") or ""),
                    "text": _fit(getattr(doc, "text", "") or ""),
                    "metadata": dict(getattr(doc, "metadata", None) or {}),
                }
            )
        return rows

    def write(
        self, embeddings: np.ndarray, ids: Sequence[str], documents: Sequence[Any] | None = None, upsert: bool = True
    ) -> None:
        """Write rows (upsert by primary key, or plain insert for ids known to be new); no checks of presence."""
        rows = self._rows(embeddings, ids, documents)
        if not rows:
            return
        try:
            (self.client.upsert if upsert else self.client.insert)(self.collection, rows)
        except Exception as exc:
            raise milvus_error(f"{self.uri}: writing to {self.collection} failed", exc) from None

    def add(self, embeddings: np.ndarray, ids: list[str], documents: Sequence[Any] | None = None) -> None:
        """Add new documents; ids already there are an error (use :meth:`update`)."""
        clash = self.existing(ids)
        if clash:
            raise DensekitError(f"{len(clash)} ids already in the index, e.g. {sorted(clash)[0]!r} (use update)")
        self.write(embeddings, ids, documents, upsert=False)

    def update(self, embeddings: np.ndarray, ids: list[str], documents: Sequence[Any] | None = None) -> tuple[int, int]:
        """Insert or replace documents (upsert by id); returns ``(replaced, added)``."""
        replaced = len(self.existing(ids))
        self.write(embeddings, ids, documents, upsert=True)
        return replaced, len(ids) - replaced

    def remove(self, ids: list[str], missing_ok: bool = False) -> int:
        """Delete documents by id; returns how many were there. Unknown ids are an error unless `missing_ok`."""
        present = self.existing(ids)
        unknown = [i for i in ids if i not in present]
        if unknown and not missing_ok:
            raise DensekitError(f"{len(unknown)} ids are not in the index, e.g. {unknown[0]!r}")
        if present:
            try:
                self.client.delete(self.collection, ids=sorted(present))
            except Exception as exc:
                raise milvus_error(f"{self.uri}: deleting from {self.collection} failed", exc) from None
        return len(present)

    def flush(self) -> None:
        """Seal what was written (Milvus builds the index over sealed segments)."""
        try:
            self.client.flush(self.collection)
        except Exception as exc:
            raise milvus_error(f"{self.uri}: flushing {self.collection} failed", exc) from None

    # -- searching -----------------------------------------------------------------------------------

    def set_search_params(self, params: dict) -> None:
        """Change the default search parameters (efSearch -> ef for HNSW, nprobe for IVF); others are an error."""
        checked = check_search_params(params)
        milvus_search_params(self.index_type, {**self.search_params, **checked})
        self.search_params.update(checked)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        batch_size: int = SEARCH_BATCH,
        params: dict | None = None,
        filter: dict | str | None = None,  # noqa: A002 (LangChain's name)
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Top-`k` for each query row: `(scores (n, k), ids)`; a row with fewer hits is padded with -inf.

        `params` (efSearch, nprobe) override the defaults for this call; `filter` (a metadata dict, see
        :func:`~densekit.index.milvus_filter.milvus_filter_expression`, or a Milvus expression) is applied
        by Milvus, inside the search. HNSW's ``ef`` is raised to `k` when smaller (Milvus requires ef >= k).
        """
        if k <= 0:
            raise DensekitError(f"k must be positive, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise DensekitError(f"expected query vectors of dimension {self.dim}, got shape {queries.shape}")
        native = milvus_search_params(self.index_type, {**self.search_params, **check_search_params(params or {})})
        if "ef" in native:
            native["ef"] = max(native["ef"], k)
        expression = filter if isinstance(filter, str) else milvus_filter_expression(filter or {})
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids: list[list[str]] = []
        for start in range(0, len(queries), batch_size):
            batch = queries[start : start + batch_size]
            try:
                results = self.client.search(
                    self.collection,
                    data=batch.tolist(),
                    limit=k,
                    filter=expression,
                    output_fields=["id"],
                    search_params={"metric_type": "IP", "params": native},
                )
            except Exception as exc:
                raise milvus_error(f"{self.uri}: search in {self.collection} failed", exc) from None
            for row, hits in enumerate(results, start=start):
                ids.append([str(hit["id"]) for hit in hits])
                scores[row, : len(hits)] = [hit["distance"] for hit in hits]
        return scores, ids

    def documents(self, ids: Sequence[str]) -> dict[str, dict]:
        """`{id: {"title", "text", "metadata"}}` for the `ids` the collection holds (texts as stored there)."""
        if not ids:
            return {}
        rows = self.client.query(self.collection, ids=list(ids), output_fields=["id", "title", "text", "metadata"])
        return {row["id"]: {k: row.get(k) for k in ("title", "text", "metadata")} for row in rows}

    # -- describing ----------------------------------------------------------------------------------

    def manifest(self, count: int, files: dict[str, str]) -> dict:
        """The manifest of a saved Milvus index directory (never the token)."""
        return {
            "format_version": FORMAT_VERSION,
            "densekit_version": __version__,
            "kind": "milvus",
            "uri": self.uri,
            "collection": self.collection,
            "model": self.model,
            "dim": self.dim,
            "metric": self.metric,
            "factory": self.factory,
            "preset": self.preset,
            "index_type": self.index_type,
            "index_params": self.index_params,
            "search_params": self.search_params,
            "num_shards": self.num_shards,
            "consistency_level": self.consistency_level,
            "count": count,
            "created": timestamp(),
            "files": files,
        }
