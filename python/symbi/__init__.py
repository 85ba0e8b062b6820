"""symbi: run autonomous AI agents securely, in-process.

The public API is what ``__all__`` lists; ``symbi._core`` (the Rust extension) is private.
"""

from __future__ import annotations

from . import errors, sync
from ._core import __version__
from .components import Component, ComponentHealth, HealthStatus, Housekeeper
from .config import Config, ContextConfig, McpConfig, RuntimeConfig, SecurityConfig, parse_size
from .errors import SymbiError
from .message import Message
from .runtime import Runtime

__all__ = [
    "Component",
    "ComponentHealth",
    "Config",
    "ContextConfig",
    "HealthStatus",
    "Housekeeper",
    "McpConfig",
    "Message",
    "Runtime",
    "RuntimeConfig",
    "SecurityConfig",
    "SymbiError",
    "__version__",
    "errors",
    "parse_size",
    "sync",
]
