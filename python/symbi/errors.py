"""Every error symbi raises, in one hierarchy rooted at :class:`SymbiError`.

Each class carries the context a caller needs as attributes (as httpx errors carry
``.request``), and every message says what to do next. Errors raised in the Rust core are
instances of these same classes: ``rust/src/errors.rs`` builds them by name.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "AuditIntegrityError",
    "AuditStorageError",
    "ComponentError",
    "ConfigError",
    "ContextStoreError",
    "DecryptError",
    "DeliveryError",
    "IllegalTransition",
    "InvalidArgument",
    "ModelError",
    "ParseError",
    "PolicyDenied",
    "RateLimited",
    "RemoteError",
    "ReplayError",
    "RequestTimeout",
    "ResourceLimitExceeded",
    "RuntimeStateError",
    "SandboxError",
    "SignatureError",
    "SymbiError",
    "ToolVerificationError",
    "VectorIndexError",
]


class SymbiError(Exception):
    """Root of every error symbi raises. Catch this to catch them all."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(SymbiError, ValueError):
    """A public entry point was called with a value it cannot use."""

    def __init__(self, message: str, *, argument: str, expected: str, got: Any = None) -> None:
        super().__init__(message)
        self.argument = argument
        self.expected = expected
        self.got = got


class ConfigError(SymbiError):
    """The configuration is invalid: ``source`` (a file or an environment variable), the
    dotted ``key`` and what was ``expected`` say where and why."""

    def __init__(
        self,
        message: str,
        *,
        source: Optional[str] = None,
        key: Optional[str] = None,
        expected: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.key = key
        self.expected = expected


class ParseError(SymbiError):
    """A policy or DSL text could not be parsed; ``line`` and ``column`` are 1-based."""

    def __init__(
        self,
        message: str,
        *,
        source: Optional[str] = None,
        line: Optional[int] = None,
        column: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.line = line
        self.column = column


class RuntimeStateError(SymbiError):
    """The runtime is not in a state that allows the call (not started, or shut down)."""


class ComponentError(SymbiError):
    """A runtime component failed to start or stop."""

    def __init__(self, message: str, *, component: str) -> None:
        super().__init__(message)
        self.component = component


class PolicyDenied(SymbiError):
    """The policy engine denied an action. ``decision`` holds the reason."""

    def __init__(self, message: str, *, decision: Any = None, request: Any = None) -> None:
        super().__init__(message)
        self.decision = decision
        self.request = request


class SignatureError(SymbiError):
    """A signature did not verify: the data was altered or signed by another key."""

    def __init__(
        self, message: str, *, message_id: Optional[str] = None, sender: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.message_id = message_id
        self.sender = sender


class DecryptError(SymbiError):
    """A ciphertext failed authentication or could not be decrypted."""

    def __init__(self, message: str, *, message_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.message_id = message_id


class ReplayError(SymbiError):
    """A message was seen before, or its timestamp is outside the accepted window."""

    def __init__(self, message: str, *, message_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.message_id = message_id


class RateLimited(SymbiError):
    """An agent exceeded its rate limit; retry after ``retry_after`` seconds."""

    def __init__(
        self, message: str, *, agent_id: Optional[str] = None, retry_after: Optional[float] = None
    ) -> None:
        super().__init__(message)
        self.agent_id = agent_id
        self.retry_after = retry_after


class DeliveryError(SymbiError):
    """A message could not be delivered; it is in the dead-letter queue."""

    def __init__(
        self,
        message: str,
        *,
        message_id: Optional[str] = None,
        recipient: Optional[str] = None,
        reason: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message_id = message_id
        self.recipient = recipient
        self.reason = reason


class RemoteError(SymbiError):
    """The handler of a request raised in another runtime (over the bus). ``error_type``
    is the qualified name of its exception class, ``recipient`` the agent that raised."""

    def __init__(
        self,
        message: str,
        *,
        error_type: Optional[str] = None,
        recipient: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.recipient = recipient


class RequestTimeout(SymbiError, TimeoutError):
    """No reply arrived within ``timeout`` seconds."""

    def __init__(
        self, message: str, *, recipient: Optional[str] = None, timeout: Optional[float] = None
    ) -> None:
        super().__init__(message)
        self.recipient = recipient
        self.timeout = timeout


class IllegalTransition(SymbiError):
    """An agent lifecycle transition that the state machine does not allow."""

    def __init__(
        self,
        message: str,
        *,
        agent_id: Optional[str] = None,
        from_state: Optional[str] = None,
        to_state: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.agent_id = agent_id
        self.from_state = from_state
        self.to_state = to_state


class ResourceLimitExceeded(SymbiError):
    """An agent went past one of its resource limits (``resource`` says which): what it
    asked for was refused and the event audited. Past its memory cap the agent is also
    suspended; a time budget (``execution_timeout``, an I/O wait) suspends it only with
    ``on_timeout="suspend"``."""

    def __init__(
        self,
        message: str,
        *,
        agent_id: Optional[str] = None,
        resource: Optional[str] = None,
        limit: Optional[float] = None,
        used: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.agent_id = agent_id
        self.resource = resource
        self.limit = limit
        self.used = used


class SandboxError(SymbiError):
    """A sandbox could not be started, or the sandboxed process failed."""

    def __init__(
        self, message: str, *, tier: Optional[str] = None, exit_code: Optional[int] = None
    ) -> None:
        super().__init__(message)
        self.tier = tier
        self.exit_code = exit_code


class AuditIntegrityError(SymbiError):
    """The audit trail failed verification. ``sequence`` is the first bad event and
    ``kind`` says what is wrong with it: ``signature``, ``link``, ``missing``, ``order``,
    ``corrupt`` (damaged bytes on disk) or ``inclusion`` (a proof that does not verify);
    or ``checkpoint`` (the checkpoint file is missing or damaged while every event is
    intact), with ``sequence`` None."""

    def __init__(
        self, message: str, *, sequence: Optional[int] = None, kind: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.sequence = sequence
        self.kind = kind


class AuditStorageError(SymbiError):
    """The audit store or its key files could not be read or written; ``path`` says which."""

    def __init__(self, message: str, *, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path


class ToolVerificationError(SymbiError):
    """An MCP tool schema failed SchemaPin verification."""

    def __init__(
        self,
        message: str,
        *,
        tool: Optional[str] = None,
        server: Optional[str] = None,
        reason: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.tool = tool
        self.server = server
        self.reason = reason


class VectorIndexError(SymbiError, ValueError):
    """The vector index refused a call or could not read/write its files.

    ``argument`` names the offending parameter (``vectors``, ``queries``, ``ids``, ``k``,
    ``ef``, ``filter``, ``metadata``...), ``id`` the unknown or duplicate id, ``expected``
    and ``got`` describe a bad value, and ``path`` the file for storage errors.
    """

    def __init__(
        self,
        message: str,
        *,
        argument: Optional[str] = None,
        id: Optional[int] = None,
        expected: Optional[str] = None,
        got: Any = None,
        path: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.argument = argument
        self.id = id
        self.expected = expected
        self.got = got
        self.path = path


class ModelError(SymbiError):
    """An embedding model or language model could not answer: it is not installed, or
    its service failed. ``model`` names the backend (``minilm``, ``http``, ``chat``...);
    ``url`` and ``status`` describe a failed HTTP call."""

    def __init__(
        self,
        message: str,
        *,
        model: Optional[str] = None,
        url: Optional[str] = None,
        status: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.url = url
        self.status = status


class ContextStoreError(SymbiError):
    """Agent memory could not be read or written: its SQLite file, its index files or its
    vector database (``backend``: ``embedded`` or ``qdrant``) failed. ``path`` names the
    file or URL."""

    def __init__(
        self, message: str, *, path: Optional[str] = None, backend: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.backend = backend
