"""Transports move sealed envelopes between buses; they never see plaintext.

A transport offers NATS semantics on byte payloads: ``publish`` (fire and forget, to
every matching subscriber), ``request`` (to one responder, waiting for its answer: the
bus uses it for acks), and ``subscribe`` with ``*``/``>`` wildcards. :class:`InProcTransport`
does this inside one process; :class:`symbi.bus.nats.NatsTransport` over a NATS server.

Failures raise :class:`~symbi.errors.DeliveryError` with ``reason`` one of
``"no-responders"`` (nobody subscribes to the subject), ``"timeout"`` (no answer in
time), ``"disconnected"`` (the transport is closed or lost its server) or
``"too-large"``; the bus retries the transient ones.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Callable, Optional, Protocol, runtime_checkable

import msgspec

from ..deadlines import check_timeout
from ..errors import DeliveryError, InvalidArgument
from .topics import topic_matches

__all__ = [
    "Handler",
    "InProcTransport",
    "Incoming",
    "Transport",
    "TransportSubscription",
    "check_timeout",
]


class Incoming(msgspec.Struct, gc=False):
    """A message a subscription received. ``respond`` answers a ``request`` (once).

    One is made per message on every transport, so it is a Struct built in C (a third of
    the cost of a slotted class) and untracked by the cycle collector: it refers to its
    subject, its bytes and a responder, never back to itself."""

    subject: str
    data: bytes
    _responder: Optional[Callable[[bytes], Awaitable[None]]] = None

    @property
    def wants_response(self) -> bool:
        return self._responder is not None

    async def respond(self, data: bytes) -> None:
        r, self._responder = self._responder, None
        if r is not None:
            await r(data)


Handler = Callable[[Incoming], Awaitable[None]]


@runtime_checkable
class TransportSubscription(Protocol):
    @property
    def subject(self) -> str: ...

    async def unsubscribe(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Byte-level messaging with NATS semantics. Every call is bounded by ``timeout``."""

    @property
    def name(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    @property
    def max_payload(self) -> int: ...

    async def connect(self, *, timeout: float) -> None: ...

    async def close(self, *, timeout: float) -> None: ...

    # An awaitable rather than a coroutine function: a transport may hand back its
    # subscriber's own awaitable (InProcTransport does, to save a frame per message).
    def publish(self, subject: str, data: bytes, *, timeout: float) -> Awaitable[None]: ...

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes: ...

    async def subscribe(
        self, subject: str, handler: Handler, *, timeout: float
    ) -> TransportSubscription: ...


class _InProcSub:
    __slots__ = ("_transport", "handler", "subject", "wild")

    def __init__(self, transport: InProcTransport, subject: str, handler: Handler) -> None:
        self._transport = transport
        self.subject = subject
        self.handler = handler
        self.wild = "*" in subject or ">" in subject

    async def unsubscribe(self) -> None:
        self._transport._remove(self)


async def _raise(check: Callable[[str, bytes], None], subject: str, data: bytes) -> None:
    check(subject, data)  # raises, at await time as for any transport


class InProcTransport:
    """In-process delivery. Handlers run in the caller's task, bounded by its timeout, so
    a direct send is a few function calls; bytes are passed, never objects, so what an
    agent receives is exactly what was sealed. The default transport of a Bus."""

    name = "inproc"

    def __init__(self, *, max_payload: int = 16 * 1024 * 1024) -> None:
        if isinstance(max_payload, bool) or not isinstance(max_payload, int) or max_payload < 1:
            raise InvalidArgument(
                "max_payload must be a positive int (bytes)",
                argument="max_payload",
                expected="int >= 1",
                got=max_payload,
            )
        self._max_payload = max_payload
        self._exact: dict[str, list[_InProcSub]] = {}
        self._wild: list[_InProcSub] = []
        self._connected = False
        # Subject -> handler of its only subscriber, while connected and no wildcard
        # subscription exists: what a publish looks up first (see _refresh).
        self._direct: dict[str, Handler] = {}

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def max_payload(self) -> int:
        return self._max_payload

    async def connect(self, *, timeout: float) -> None:
        check_timeout(timeout)
        self._connected = True
        self._refresh()

    async def close(self, *, timeout: float) -> None:
        self._connected = False
        self._refresh()

    def _refresh(self, subject: Optional[str] = None) -> None:
        """Update ``_direct`` for ``subject`` (O(1), on exact (un)subscribes), or rebuild
        it (connect, close, wildcard changes: rare)."""
        if not self._connected or self._wild:
            self._direct = {}
        elif subject is None:
            self._direct = {k: v[0].handler for k, v in self._exact.items() if len(v) == 1}
        else:
            subs = self._exact.get(subject)
            if subs is not None and len(subs) == 1:
                self._direct[subject] = subs[0].handler
            else:
                self._direct.pop(subject, None)

    def _remove(self, sub: _InProcSub) -> None:
        if sub.wild:
            if sub in self._wild:
                self._wild.remove(sub)
        else:
            subs = self._exact.get(sub.subject)
            if subs and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._exact[sub.subject]
        self._refresh(None if sub.wild else sub.subject)

    def _matching(self, subject: str) -> list[_InProcSub]:
        subs = list(self._exact.get(subject, ()))
        if self._wild:
            subs.extend(s for s in self._wild if topic_matches(s.subject, subject))
        return subs

    def _check(self, subject: str, data: bytes) -> None:
        if not self._connected:
            raise DeliveryError(
                f"the {self.name} transport is not connected; start the bus first",
                recipient=subject,
                reason="disconnected",
            )
        if len(data) > self._max_payload:
            raise DeliveryError(
                f"{len(data)} bytes is over the transport's {self._max_payload} byte limit",
                recipient=subject,
                reason="too-large",
            )

    def publish(self, subject: str, data: bytes, *, timeout: float) -> Awaitable[None]:
        # Subscriber handlers run inline and must bound their own awaits (the bus's do:
        # they open the envelope synchronously and hand user handlers to a task group), so
        # a publish costs no cancel scope; ``timeout`` bounds transports that do network
        # I/O. With one exact subscriber (the common case) the handler's own awaitable is
        # returned, saving a coroutine per message; errors still surface at ``await``.
        handler = self._direct.get(subject)
        if handler is not None and len(data) <= self._max_payload:
            return handler(Incoming(subject, data))
        if not self._connected or len(data) > self._max_payload:
            return _raise(self._check, subject, data)
        return self._publish_all(subject, data)

    async def _publish_all(self, subject: str, data: bytes) -> None:
        for s in self._matching(subject):
            await s.handler(Incoming(subject, data))

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        self._check(subject, data)
        subs = self._matching(subject)
        if not subs:
            raise DeliveryError(
                f"nobody listens on {subject!r}", recipient=subject, reason="no-responders"
            )
        box: list[bytes] = []

        async def respond(answer: bytes) -> None:
            box.append(answer)

        # As in publish: the handler runs inline and bounds its own awaits (the bus's
        # handlers do), so a request costs no cancel scope.
        await subs[0].handler(Incoming(subject, data, respond))
        if not box:
            raise DeliveryError(
                f"the responder on {subject!r} did not answer", recipient=subject, reason="timeout"
            )
        return box[0]

    async def subscribe(
        self, subject: str, handler: Handler, *, timeout: float
    ) -> TransportSubscription:
        sub = _InProcSub(self, subject, handler)
        if sub.wild:
            self._wild.append(sub)
        else:
            self._exact.setdefault(subject, []).append(sub)
        self._refresh(None if sub.wild else subject)
        return sub
