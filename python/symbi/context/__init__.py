"""Agent memory: short-term, working, long-term and shared knowledge, on SQLite plus a
vector index (embedded HNSW or Qdrant). See :class:`ContextManager`."""

from __future__ import annotations

from .cache import ByteLRU, CacheStats
from .manager import AgentMemory, ContextManager, ContextStats
from .store import ContextStore, StoredItem
from .types import MEMORY_KINDS, ContextId, ContextItem, KnowledgeItem, MemoryKind

__all__ = [
    "MEMORY_KINDS",
    "AgentMemory",
    "ByteLRU",
    "CacheStats",
    "ContextId",
    "ContextItem",
    "ContextManager",
    "ContextStats",
    "ContextStore",
    "KnowledgeItem",
    "MemoryKind",
    "StoredItem",
]
