"""`DensekitEmbeddings`: a langchain-core `Embeddings` over a densekit :class:`~densekit.retriever.encoder.Encoder`.

Documents are embedded with the model's document prompt and queries with its query prompt, pooled and
L2-normalised exactly as densekit indexes them (the model folder's configuration says which), so
vectors from this class and from `densekit index build` with the same model are the same vectors.
The async methods (`aembed_documents`, `aembed_query`) are langchain-core's: they run the encoder on
the default executor's worker thread, so the event loop is not blocked while a model runs.

Example::

    embeddings = DensekitEmbeddings("all-MiniLM-L6-v2")          # a name, a folder, or an Encoder
    embeddings.embed_query("what causes scurvy?")                  # list of 384 floats, unit norm
    embeddings.embed_documents(["Scurvy is caused by ...", "..."])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from densekit.errors import DensekitError
from densekit.progress import interactive


class DensekitEmbeddings(Embeddings):
    """LangChain embeddings from a densekit model.

    Args:
        model: a model name (``all-MiniLM-L6-v2``), a model folder, or an
            :class:`~densekit.retriever.encoder.Encoder` to share (its settings are used as they are).
        device: torch device ("cpu", "cuda", ...) when `model` is a name or folder; default CUDA when
            available.
        batch_size: texts per forward pass (default: the encoder's).
        encoder_options: further :class:`~densekit.retriever.encoder.Encoder` arguments (pooling,
            normalize, max_length, query_prompt, document_prompt, dtype) when `model` is a name or folder.
    """

    def __init__(
        self,
        model: Any = "all-MiniLM-L6-v2",
        *,
        device: str | None = None,
        batch_size: int | None = None,
        **encoder_options: Any,
    ) -> None:
        from densekit.retriever.encoder import Encoder

        if isinstance(model, Encoder):
            if device is not None or encoder_options:
                raise DensekitError("device and encoder options apply to a model name or folder, not to an Encoder")
            self.encoder = model
        elif isinstance(model, (str, Path)):
            self.encoder = Encoder(model, device=device, **encoder_options)
        else:
            raise DensekitError(f"model must be a model name, a folder or an Encoder, got {type(model).__name__}")
        if batch_size is not None and batch_size <= 0:
            raise DensekitError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        """Length of every vector."""
        return self.encoder.dim

    @property
    def normalize(self) -> bool:
        """Whether the vectors are L2-normalised (the model's configuration)."""
        return bool(self.encoder.config.normalize)

    def describe(self) -> dict:
        """What an index manifest records about the model (name, folder, fingerprint, settings)."""
        return self.encoder.describe()

    def encode_documents(self, texts: list[str], show_progress: bool | None = None) -> np.ndarray:
        """Document vectors as a float32 array `(len(texts), dim)`; `show_progress` defaults to
        :func:`densekit.progress.interactive`."""
        return self.encoder.encode_documents(
            list(texts), batch_size=self.batch_size, show_progress=interactive(show_progress)
        )

    def encode_query(self, text: str) -> np.ndarray:
        """One query vector as a float32 array `(dim,)`."""
        return self.encoder.encode_queries([text], batch_size=self.batch_size, show_progress=False)[0]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (with the model's document prompt); one list of floats per text."""
        if not texts:
            return []
        return self.encode_documents(texts, show_progress=False).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (with the model's query prompt)."""
        return self.encode_query(text).tolist()

    def __repr__(self) -> str:
        return (
            f"DensekitEmbeddings(model={self.encoder.model_id!r}, dim={self.dim}, device={str(self.encoder.device)!r})"
        )
