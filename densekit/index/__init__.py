"""FAISS indexes: `DenseIndex` (factory strings, GPU placement, save/load with a manifest) and the
embedding cache."""

from densekit.index.dense import DenseIndex, read_manifest

__all__ = ["DenseIndex", "read_manifest"]
