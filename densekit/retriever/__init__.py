"""Retrievers (dense, BM25, hybrid, reranking), the encoder and training.

Heavy modules (torch, transformers, pyserini) are imported only when used:
`from densekit.retriever.encoder import Encoder`.
"""

from densekit.retriever.base import Retriever

__all__ = ["Retriever"]
