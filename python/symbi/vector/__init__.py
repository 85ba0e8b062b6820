"""Vector search: an in-process HNSW index (Rust core) with live updates, metadata filters,
4-bit compression and crash-safe, mmap-backed persistence.

>>> import numpy as np, symbi
>>> index = symbi.VectorIndex(dim=4)
>>> index.add([1, 2], np.eye(4, dtype=np.float32)[:2], [{"lang": "de"}, {"lang": "en"}])
2
>>> ids, dist = index.search(np.array([1, 0, 0, 0], dtype=np.float32), k=1, filter={"lang": "de"})
>>> int(ids[0])
1
"""

from __future__ import annotations

from .index import NO_ID, VectorIndex, VectorIndexStats, VectorRecord
from .qdrant import QdrantVectorStore
from .store import EmbeddedVectorStore, VectorStore

__all__ = [
    "NO_ID",
    "EmbeddedVectorStore",
    "QdrantVectorStore",
    "VectorIndex",
    "VectorIndexStats",
    "VectorRecord",
    "VectorStore",
]
