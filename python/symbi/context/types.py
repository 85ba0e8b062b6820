"""Data types of agent memory: what is stored and what retrieval returns."""

from __future__ import annotations

from typing import Any, Literal, NewType, Optional

import msgspec

__all__ = ["MEMORY_KINDS", "ContextId", "ContextItem", "KnowledgeItem", "MemoryKind"]

#: An item's id: ``"<kind>:<n>"``, e.g. ``"lt:42"`` (long-term) or ``"sh:7"`` (shared).
ContextId = NewType("ContextId", str)

#: ``short_term``: a bounded window of the agent's recent items (in memory);
#: ``working``: scratch items of one task, dropped when the task ends (in memory);
#: ``long_term``: persistent and vector-indexed, kept ``knowledge_retention_days``;
#: ``shared``: knowledge across agents, every read and write policy-checked and audited.
MemoryKind = Literal["short_term", "working", "long_term", "shared"]
MEMORY_KINDS: tuple[str, ...] = ("short_term", "working", "long_term", "shared")


class ContextItem(msgspec.Struct, frozen=True, kw_only=True):
    """One item of an agent's memory. ``score`` is the cosine similarity to the query
    (on retrieval); ``expires_at`` is a Unix time, None for never."""

    id: str
    agent_id: str
    kind: str
    content: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: float
    expires_at: Optional[float] = None
    task_id: Optional[str] = None
    score: Optional[float] = None


class KnowledgeItem(msgspec.Struct, frozen=True, kw_only=True):
    """One item of shared knowledge, found by :meth:`ContextManager.search_knowledge`."""

    id: str
    collection: str
    content: str
    source_agent: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: float
    expires_at: Optional[float] = None
    score: Optional[float] = None
