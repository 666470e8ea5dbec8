"""LangChain faces of densekit (the `langchain` extra: `pip install 'densekit[langchain]'`).

- :class:`DensekitRetriever` -- a `BaseRetriever` over a saved index (dense, BM25 or hybrid).
- :class:`DensekitEmbeddings` -- an `Embeddings` over a densekit :class:`~densekit.retriever.encoder.Encoder`.
- :class:`DensekitVectorStore` -- a `VectorStore` over a densekit index directory or in memory.
"""

from densekit.integrations.common import matches
from densekit.integrations.langchain.embeddings import DensekitEmbeddings
from densekit.integrations.langchain.retriever import DensekitRetriever, documents_to_json
from densekit.integrations.langchain.vectorstore import DensekitVectorStore

__all__ = ["DensekitEmbeddings", "DensekitRetriever", "DensekitVectorStore", "documents_to_json", "matches"]
