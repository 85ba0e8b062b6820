"""symbi: run autonomous AI agents securely, in-process.

The public API is what ``__all__`` lists; ``symbi._core`` (the Rust extension) is private.
"""

from __future__ import annotations

from . import dsl, errors, sync
from ._core import __version__
from .agent import Agent, Context, handler
from .components import Component, ComponentHealth, HealthStatus, Housekeeper
from .config import Config, ContextConfig, McpConfig, RuntimeConfig, SecurityConfig, parse_size
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
from .resources import ResourceLimits
from .runtime import Runtime
from .scheduler import Priority
from .vector import VectorIndex

__all__ = [
    "Agent",
    "AgentHandle",
    "AgentState",
    "Allow",
    "AllowWithConditions",
    "Component",
    "ComponentHealth",
    "Config",
    "Context",
    "ContextConfig",
    "Decision",
    "Deny",
    "HealthStatus",
    "Housekeeper",
    "McpConfig",
    "Message",
    "Policy",
    "PolicyEngine",
    "PolicyRequest",
    "Priority",
    "ResourceLimits",
    "Runtime",
    "RuntimeConfig",
    "SecurityConfig",
    "SpawnError",
    "SymbiError",
    "SystemStatus",
    "VectorIndex",
    "__version__",
    "dsl",
    "errors",
    "handler",
    "parse_size",
    "sync",
]
