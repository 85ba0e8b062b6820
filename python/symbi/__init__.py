"""symbi: run autonomous AI agents securely, in-process.

The public API is what ``__all__`` lists (its subpackages too: ``symbi.audit``,
``symbi.policy``, ...); ``symbi._core`` (the Rust extension) is private.
"""

from __future__ import annotations

from . import audit, bus, context, dsl, embed, errors, policy, rag, scheduler, sync, vector
from ._core import __version__
from .agent import Agent, Context, handler
from .bus import Bus, DeadLetter, SecureMessage, Subscription
from .components import Component, ComponentHealth, HealthStatus, Housekeeper
from .config import (
    BusConfig,
    Config,
    ContextConfig,
    McpConfig,
    RuntimeConfig,
    SecurityConfig,
    parse_size,
)
from .context import ContextId, ContextItem, ContextManager, KnowledgeItem
from .embed import Embedder, HashingEmbedder, HttpEmbedder, MiniLMEmbedder
from .errors import SymbiError
from .host import AgentHandle, SpawnError, SystemStatus
from .lifecycle import AgentState
from .message import Message
from .policy import (
    Allow,
    AllowWithConditions,
    Decision,
    Deny,
    Policy,
    PolicyEngine,
    PolicyRequest,
)
from .rag import Answer, Document, DocumentStore, RagPipeline
from .resources import ResourceLimits
from .runtime import Runtime
from .scheduler import Priority
from .vector import EmbeddedVectorStore, QdrantVectorStore, VectorIndex, VectorStore

__all__ = [
    "Agent",
    "AgentHandle",
    "AgentState",
    "Allow",
    "AllowWithConditions",
    "Answer",
    "Bus",
    "BusConfig",
    "Component",
    "ComponentHealth",
    "Config",
    "Context",
    "ContextConfig",
    "ContextId",
    "ContextItem",
    "ContextManager",
    "DeadLetter",
    "Decision",
    "Deny",
    "Document",
    "DocumentStore",
    "EmbeddedVectorStore",
    "Embedder",
    "HashingEmbedder",
    "HealthStatus",
    "Housekeeper",
    "HttpEmbedder",
    "KnowledgeItem",
    "McpConfig",
    "Message",
    "MiniLMEmbedder",
    "Policy",
    "PolicyEngine",
    "PolicyRequest",
    "Priority",
    "QdrantVectorStore",
    "RagPipeline",
    "ResourceLimits",
    "Runtime",
    "RuntimeConfig",
    "SecureMessage",
    "SecurityConfig",
    "SpawnError",
    "Subscription",
    "SymbiError",
    "SystemStatus",
    "VectorIndex",
    "VectorStore",
    "__version__",
    "audit",
    "bus",
    "context",
    "dsl",
    "embed",
    "errors",
    "handler",
    "parse_size",
    "policy",
    "rag",
    "scheduler",
    "sync",
    "vector",
]
