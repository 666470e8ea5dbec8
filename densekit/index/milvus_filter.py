"""LangChain-style metadata filters as Milvus boolean expressions, so Milvus filters inside the search.

The filter dict has the meaning :func:`densekit.retriever.langchain.matches` gives it: every key must
be present in the document's metadata and equal to its value; a list, tuple or set value means "any
of these". On the collection's JSON ``metadata`` field that is::

    {"source": "faq"}                 metadata["source"] == "faq"
    {"source": "faq", "year": 2024}   metadata["source"] == "faq" and metadata["year"] == 2024
    {"lang": ["en", "de"]}            (metadata["lang"] == "en" or metadata["lang"] == "de")
    {"lang": []}                      false

A list becomes equalities joined by ``or`` rather than Milvus's ``in``: Milvus Lite accepts ``in`` on
scalar fields only, not on JSON paths, and the ``or`` form means the same on every deployment.
``doc_id`` and ``title``, which the LangChain adapters add to a hit's metadata, are the collection's
``id`` and ``title`` columns (``id in ["a", "b"]``), so a filter means what it means after the search.
Values are strings, numbers or booleans (JSON null has no equality in Milvus: an error). A missing key
compares false in Milvus, as in :func:`matches`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from densekit.errors import DensekitError

METADATA_FIELD = "metadata"
#: keys the LangChain adapters add to a hit's metadata, which are columns of the collection
COLUMNS = {"doc_id": "id", "title": "title"}


def _literal(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DensekitError(f"filter {key!r}: {value} cannot be compared in Milvus")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # double quotes, backslash escapes: Milvus's string syntax
    raise DensekitError(
        f"filter {key!r}: Milvus filters compare strings, numbers and booleans, not {type(value).__name__}"
    )


def milvus_filter_expression(filter: dict[str, Any] | None) -> str:  # noqa: A002 (LangChain's name)
    """A Milvus boolean expression on the JSON ``metadata`` field equal to the metadata `filter` dict.

    Keys become JSON paths (``metadata["key"]``); a list/tuple/set value is "any of these". An empty or
    None filter gives ``""`` (no filtering). Raises DensekitError for a callable or a value Milvus
    cannot compare.
    """
    if not filter:
        return ""
    if not isinstance(filter, dict):
        raise DensekitError(
            "Milvus filters in the database with a metadata dict ({key: value or [values]}); "
            f"got {type(filter).__name__}"
        )
    clauses = []
    for key, wanted in filter.items():
        if not isinstance(key, str) or not key:
            raise DensekitError(f"filter keys are metadata names (non-empty strings), got {key!r}")
        column = COLUMNS.get(key)
        path = column or f"{METADATA_FIELD}[{json.dumps(key, ensure_ascii=False)}]"
        if isinstance(wanted, list | tuple | set | frozenset):
            values = sorted(wanted, key=repr) if isinstance(wanted, set | frozenset) else list(wanted)
            if not values:
                return "false"
            literals = [_literal(key, v) for v in values]
            if column is not None:
                clauses.append(f"{column} in [{', '.join(literals)}]")
            elif len(literals) == 1:
                clauses.append(f"{path} == {literals[0]}")
            else:
                clauses.append("(" + " or ".join(f"{path} == {v}" for v in literals) + ")")
        else:
            clauses.append(f"{path} == {_literal(key, wanted)}")
    return " and ".join(clauses)
