"""Data types of the bus: the wire message, dead letters, statistics, and the Protocol
the runtime's agent host implements to receive local deliveries."""

from __future__ import annotations

from typing import Any, Literal, Optional, Protocol, runtime_checkable

import msgspec

from .._core import parse_envelope
from ..errors import InvalidArgument, SignatureError
from ..message import Message

__all__ = ["BusStats", "DeadLetter", "LocalDelivery", "SecureMessage"]


class SecureMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One sealed envelope as it travels: the seed's fields (``id``, ``sender``,
    ``recipient``, ``encrypted_payload``, ``signature``, ``timestamp``) plus the nonce, the
    key ids, the content type (the message class's qualified name), the batch position
    when the envelope was batch-signed, and ``wire``, the exact bytes on the wire.

    ``timestamp`` is seconds since the epoch (``timestamp_ns`` exactly). ``recipient`` is an
    agent id for ``kind="direct"`` and the topic for ``kind="topic"``. Build one from wire
    bytes with :meth:`from_wire`; nothing here is trusted until the bus has opened it.
    """

    id: str
    sender: str
    recipient: str
    encrypted_payload: bytes
    signature: bytes
    timestamp: float
    timestamp_ns: int
    kind: Literal["direct", "topic"]
    nonce: bytes
    sender_key_id: bytes
    recipient_key_id: bytes
    content_type: str
    batch: Optional[tuple[int, int]] = None
    wire: bytes = b""

    @classmethod
    def from_wire(cls, data: bytes) -> SecureMessage:
        """Parse envelope bytes (without decrypting). Raises SignatureError when they are
        not a well-formed symbi envelope, InvalidArgument when ``data`` is not bytes."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument(
                f"SecureMessage.from_wire takes bytes, got {type(data).__name__}",
                argument="data",
                expected="bytes",
                got=type(data).__name__,
            )
        data = bytes(data)
        d = parse_envelope(data)
        batch = d["batch"]
        return cls(
            id=d["id"],
            sender=d["sender"],
            recipient=d["recipient"],
            encrypted_payload=d["encrypted_payload"],
            signature=d["signature"],
            timestamp=d["timestamp_ns"] / 1e9,
            timestamp_ns=d["timestamp_ns"],
            kind=d["kind"],
            nonce=d["nonce"],
            sender_key_id=d["sender_key_id"],
            recipient_key_id=d["recipient_key_id"],
            content_type=d["content_type"],
            batch=None if batch is None else (int(batch[0]), int(batch[1])),
            wire=data,
        )

    def to_wire(self) -> bytes:
        """The envelope bytes. Only the bytes are authenticated: editing a field of this
        struct does not change them."""
        if not self.wire:
            raise SignatureError(
                f"SecureMessage {self.id} carries no wire bytes; build it with from_wire()",
                message_id=self.id,
                sender=self.sender,
            )
        return self.wire


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message the bus could not deliver, kept for inspection (``bus.dead_letters``)."""

    id: str
    sender: str
    recipient: str
    message_type: str
    reason: str
    attempts: int
    timestamp: float
    message: Optional[Message] = None


class BusStats(msgspec.Struct, kw_only=True):
    """Counters since the bus was created."""

    sent: int = 0
    delivered: int = 0
    published: int = 0
    topic_deliveries: int = 0
    requests: int = 0
    replies: int = 0
    late_replies: int = 0
    request_timeouts: int = 0
    retries: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    rejected: int = 0
    policy_denied: int = 0
    rate_limited: int = 0
    handler_errors: int = 0
    batches: int = 0
    batched_messages: int = 0
    single_signed: int = 0
    key_lookups: int = 0


@runtime_checkable
class LocalDelivery(Protocol):
    """What the bus needs of the agent host to hand a message to a local agent.

    ``deliver`` returns once ``msg`` is in ``to``'s mailbox (that is when the bus acks);
    with ``want_reply`` it returns a handle that ``wait_reply`` turns into the handler's
    return value (or raises its exception, or RequestTimeout). A full mailbox waits up to
    ``timeout`` or fails, as the host is configured; either way it raises a
    ``symbi.errors`` exception (DeliveryError for an unknown, terminated or full agent).
    """

    async def deliver(
        self,
        msg: Message,
        to: str,
        *,
        sender: Optional[str],
        timeout: float,
        want_reply: bool,
    ) -> Optional[Any]: ...

    async def wait_reply(self, handle: Any, *, recipient: str, timeout: float) -> Any: ...
