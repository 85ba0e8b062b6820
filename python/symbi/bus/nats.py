"""A transport over a NATS server (``pip install 'symbi[nats]'``).

Subjects: ``symbi.agent.<id>`` (direct messages; the answer is the ack),
``symbi.topic.<topic>`` (pub/sub; patterns go to the server as they are),
``symbi.reply.<bus>.<corr>`` (replies to requests) and ``symbi.keys.<id>`` (the key
directory: each runtime answers for its own agents' public bundles; the other side pins a
bundle on first use). Agent ids are percent-encoded into one subject token.

Only sealed envelopes travel: the server sees subjects, sizes and timing, never payloads.
nats-py runs on asyncio, so this transport needs the asyncio backend of anyio.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Optional, Union

import anyio

from ..errors import ComponentError, DeliveryError, InvalidArgument
from .transport import Handler, Incoming, TransportSubscription, check_timeout

__all__ = ["NatsTransport"]

log = logging.getLogger("symbi.bus.nats")


def _nats() -> Any:
    try:
        import nats
        import nats.errors
    except ImportError:  # pragma: no cover - depends on the environment
        raise ComponentError(
            "the NATS transport needs nats-py: pip install 'symbi[nats]'", component="bus"
        ) from None
    return nats


class _NatsSub:
    def __init__(self, subject: str, sub: Any) -> None:
        self._subject = subject
        self._sub = sub

    @property
    def subject(self) -> str:
        return self._subject

    async def unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as e:  # closed connection: nothing left to unsubscribe from
                log.debug("unsubscribe %s: %r", self._subject, e)


class NatsTransport:
    """``NatsTransport("nats://127.0.0.1:4222")``. ``reconnect_attempts`` and
    ``reconnect_wait`` tune how long the client keeps trying after losing the server;
    every call stays bounded by its own timeout either way."""

    name = "nats"

    def __init__(
        self,
        servers: Union[str, Sequence[str]] = "nats://127.0.0.1:4222",
        *,
        name: str = "symbi",
        reconnect_attempts: int = 10,
        reconnect_wait: float = 0.5,
    ) -> None:
        if isinstance(servers, str):
            servers = [servers]
        servers = list(servers)
        if not servers or not all(isinstance(s, str) and s for s in servers):
            raise InvalidArgument(
                "servers is a NATS URL or a list of them, e.g. 'nats://127.0.0.1:4222'",
                argument="servers",
                expected="str | list[str]",
                got=servers,
            )
        if isinstance(reconnect_attempts, bool) or not isinstance(reconnect_attempts, int):
            raise InvalidArgument(
                "reconnect_attempts must be an int (-1: forever)",
                argument="reconnect_attempts",
                expected="int",
                got=reconnect_attempts,
            )
        self._servers = servers
        self._client_name = name
        self._reconnect_attempts = reconnect_attempts
        self._reconnect_wait = check_timeout(reconnect_wait, "reconnect_wait")
        self._nc: Optional[Any] = None

    @property
    def connected(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload) if self._nc is not None else 1024 * 1024

    async def connect(self, *, timeout: float) -> None:
        check_timeout(timeout)
        nats = _nats()

        async def quiet(e: Exception) -> None:
            log.debug("nats: %r", e)

        try:
            with anyio.fail_after(timeout):
                self._nc = await nats.connect(
                    servers=self._servers,
                    name=self._client_name,
                    connect_timeout=min(timeout, 2.0),
                    allow_reconnect=True,
                    max_reconnect_attempts=self._reconnect_attempts,
                    reconnect_time_wait=self._reconnect_wait,
                    error_cb=quiet,
                )
        except Exception as e:
            raise DeliveryError(
                f"cannot connect to NATS at {', '.join(self._servers)}: {e!r}; is nats-server "
                "running?",
                recipient=self._servers[0],
                reason="disconnected",
            ) from None

    async def close(self, *, timeout: float) -> None:
        nc, self._nc = self._nc, None
        if nc is None:
            return
        with anyio.move_on_after(timeout, shield=True):
            try:
                await nc.close()
            except Exception as e:
                log.debug("nats close: %r", e)

    def _client(self, subject: str) -> Any:
        nc = self._nc
        if nc is None or nc.is_closed:
            raise DeliveryError(
                "the NATS connection is closed", recipient=subject, reason="disconnected"
            )
        return nc

    def _check_size(self, nc: Any, subject: str, data: bytes) -> None:
        if len(data) > int(nc.max_payload):
            raise DeliveryError(
                f"{len(data)} bytes is over the NATS server's max_payload ({nc.max_payload})",
                recipient=subject,
                reason="too-large",
            )

    async def publish(self, subject: str, data: bytes, *, timeout: float) -> None:
        nc = self._client(subject)
        self._check_size(nc, subject, data)
        if not nc.is_connected:
            raise DeliveryError(
                "NATS is reconnecting; the publish was not sent",
                recipient=subject,
                reason="disconnected",
            )
        try:
            with anyio.fail_after(timeout):
                await nc.publish(subject, data)
        except TimeoutError:
            raise DeliveryError(
                f"publishing on {subject!r} took over {timeout}s",
                recipient=subject,
                reason="timeout",
            ) from None
        except Exception as e:
            raise DeliveryError(
                f"NATS refused the publish on {subject!r}: {e!r}",
                recipient=subject,
                reason="disconnected",
            ) from None

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        nats = _nats()
        nc = self._client(subject)
        self._check_size(nc, subject, data)
        try:
            with anyio.fail_after(timeout):
                msg = await nc.request(subject, data, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise DeliveryError(
                f"nobody listens on {subject!r}", recipient=subject, reason="no-responders"
            ) from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise DeliveryError(
                f"no answer on {subject!r} within {timeout}s", recipient=subject, reason="timeout"
            ) from None
        except Exception as e:
            reason = "disconnected" if not nc.is_connected else "transport error"
            raise DeliveryError(
                f"NATS request on {subject!r} failed: {e!r}", recipient=subject, reason=reason
            ) from None
        return bytes(msg.data)

    async def subscribe(
        self, subject: str, handler: Handler, *, timeout: float
    ) -> TransportSubscription:
        nc = self._client(subject)

        async def cb(m: Any) -> None:
            responder = None
            if m.reply:
                reply = m.reply

                async def responder(answer: bytes) -> None:
                    try:
                        await nc.publish(reply, answer)
                    except Exception as e:
                        log.debug("nats respond on %s: %r", reply, e)

            try:
                await handler(Incoming(m.subject, bytes(m.data), responder))
            except Exception:
                log.exception("bus handler for %s failed", m.subject)

        try:
            with anyio.fail_after(timeout):
                sub = await nc.subscribe(subject, cb=cb)
        except Exception as e:
            raise DeliveryError(
                f"could not subscribe to {subject!r}: {e!r}",
                recipient=subject,
                reason="disconnected",
            ) from None
        return _NatsSub(subject, sub)

    async def flush(self, *, timeout: float) -> None:
        """Wait until the server has processed everything sent so far (subscriptions)."""
        nc = self._client("flush")
        if not nc.is_connected:
            # Reconnecting, nats-py buffers locally and its flush can succeed without the
            # server having seen anything.
            raise DeliveryError(
                "NATS is reconnecting; nothing can be flushed to the server",
                recipient="flush",
                reason="disconnected",
            )
        try:
            with anyio.fail_after(timeout):
                # nats-py 2.16 writes the PING straight to the socket, ahead of commands
                # still in its pending buffer, so a PONG no longer proves our SUBs reached
                # the server. Drain that buffer first (private API, guarded), then ping.
                drain = getattr(nc, "_flush_pending", None)
                if drain is not None and nc.is_connected:
                    await drain(force_flush=True)
                await nc.flush(timeout=timeout)
        except Exception as e:
            raise DeliveryError(
                f"NATS flush failed: {e!r}", recipient="flush", reason="disconnected"
            ) from None
