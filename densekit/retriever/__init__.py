"""Retrievers (dense, BM25, hybrid, reranking), the encoder, training, and the LangChain adapter.

Heavy modules (torch, transformers, pyserini) are imported only when used:
`from densekit.retriever.encoder import Encoder`.
"""

from densekit.retriever.base import Retriever

__all__ = ["Retriever"]
