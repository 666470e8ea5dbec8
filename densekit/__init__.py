"""densekit: dense retrieval and RAG toolkit.

Mine hard negatives, train dual encoders, index with FAISS (CPU or GPU), evaluate on BEIR/MTEB,
and plug the result into a LangChain pipeline. See the README for the CLI and the Python API.
"""

__version__ = "0.1.0"
