"""The Retriever protocol, re-exported from :mod:`densekit.protocols` (its home at the bottom layer)."""

from __future__ import annotations

from densekit.protocols import Retriever

__all__ = ["Retriever"]
