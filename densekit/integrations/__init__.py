"""densekit's faces in RAG frameworks (LangChain, LlamaIndex, Haystack) and the HTTP service.

Each framework lives in its own module and its own extra (`pip install 'densekit[llamaindex]'`, ...);
nothing here is imported by `import densekit`, so a missing framework only matters to its module.
The framework-neutral parts (opening an index with its texts, metadata filters, fetching until `k`
documents pass) are in :mod:`densekit.integrations.common`.
"""
