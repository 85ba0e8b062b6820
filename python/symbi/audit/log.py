"""``AuditLog``: the runtime's tamper-evident audit trail (component name ``"audit"``).

    async with symbi.Runtime(cfg) as rt:
        ev = await rt.audit.append("agent-1", "data.read", {"table": "patients"}, timeout=5)
        async for ev in rt.audit.stream(agent="agent-1", timeout=10): ...
        rt.audit.query(type="policy.deny", since=datetime(2025, 1, 1))
        rt.audit.verify()

**Durability and group commit.** ``append`` returns only after the event is on disk
(``fdatasync``). One writer task drains every append queued while the previous batch was
being written and hands them to the Rust store as one batch (number, chain, sign, one
write, one fdatasync) in a worker thread with the GIL released. Many concurrent appenders
therefore share each fsync. ``record`` (the :class:`AuditSink` protocol other components
use) queues without waiting; everything queued is durable before ``stop()`` returns.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Optional, Protocol, Union, runtime_checkable

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from .. import _core
from ..components import ComponentHealth
from ..config import SecurityConfig
from ..errors import (
    AuditIntegrityError,
    DeliveryError,
    InvalidArgument,
    RequestTimeout,
    RuntimeStateError,
)
from .events import AuditEvent, Checkpoint, InclusionProof, OpenReport, VerifyReport

__all__ = ["AuditLog", "AuditSink", "TimeLike", "query_dir", "verify_dir", "verify_inclusion"]

log = logging.getLogger("symbi.audit")

#: A point in time: a datetime (naive means UTC) or Unix seconds.
TimeLike = Union[datetime, float, int]
PathLike = Union[str, "os.PathLike[str]"]

_encode = msgspec.json.Encoder(order="sorted").encode
DEFAULT_APPEND_TIMEOUT = 30.0


@runtime_checkable
class AuditSink(Protocol):
    """Where components send audit events without waiting for them to be written."""

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None: ...


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > 4096:
        raise InvalidArgument(
            f"{name} must be a non-empty string of at most 4096 bytes, got {value!r}",
            argument=name,
            expected="non-empty str",
            got=value,
        )
    return value


def _encode_details(details: Optional[Mapping[str, Any]]) -> bytes:
    if details is None:
        return b"{}"
    if not isinstance(details, Mapping) or not all(isinstance(k, str) for k in details):
        raise InvalidArgument(
            "details must be a mapping with str keys and JSON-able values",
            argument="details",
            expected="Mapping[str, JSON-able]",
            got=type(details).__name__,
        )
    try:
        return _encode(details)
    except (TypeError, msgspec.EncodeError) as e:
        raise InvalidArgument(
            f"details cannot be encoded as JSON: {e}; pass str, numbers, bools, None, "
            "lists and dicts",
            argument="details",
            expected="JSON-able values",
            got=type(details).__name__,
        ) from None


def _to_ns(name: str, t: Optional[TimeLike]) -> Optional[int]:
    if t is None:
        return None
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return int(t.timestamp() * 1e9)
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
        return int(t * 1e9)
    raise InvalidArgument(
        f"{name} must be a datetime or Unix seconds, got {t!r}",
        argument=name,
        expected="datetime | float seconds",
        got=t,
    )


def _check_timeout(timeout: Optional[float]) -> Optional[float]:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise InvalidArgument(
            f"timeout must be a positive number of seconds or None, got {timeout!r}",
            argument="timeout",
            expected="> 0 or None",
            got=timeout,
        )
    return timeout


def _query_args(
    agent: Optional[str],
    type: Optional[str],
    since: Optional[TimeLike],
    until: Optional[TimeLike],
    after: Optional[int],
    limit: Optional[int],
) -> dict[str, Any]:
    for name, v in (("agent", agent), ("type", type)):
        if v is not None and not isinstance(v, str):
            raise InvalidArgument(
                f"{name} must be a str or None", argument=name, expected="str", got=v
            )
    for name, n in (("after", after), ("limit", limit)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise InvalidArgument(
                f"{name} must be an int >= 0 or None", argument=name, expected="int >= 0", got=n
            )
    return {
        "agent": agent,
        "event_type": type,
        "since_ns": _to_ns("since", since),
        "until_ns": _to_ns("until", until),
        "after_seq": after,
        "limit": limit,
    }


@dataclass
class _Waiter:
    done: anyio.Event = field(default_factory=anyio.Event)
    event: Optional[AuditEvent] = None
    error: Optional[BaseException] = None


@dataclass
class _Sub:
    agent: Optional[str]
    type: Optional[str]
    send: MemoryObjectSendStream[AuditEvent]
    overflowed: bool = False


_Pending = tuple[str, str, bytes, int, Optional[_Waiter]]


class AuditLog:
    """A durable, signed, hash-chained audit trail in ``path`` (in memory when None).

    A runtime component: ``start``/``stop``/``health``. Outside a runtime use it as
    ``async with AuditLog(path) as log:``.
    """

    name = "audit"

    def __init__(
        self,
        path: Optional[PathLike] = None,
        *,
        checkpoint_every: int = 1024,
        segment_bytes: int = 64 << 20,
        max_batch: int = 8192,
        max_backlog: int = 100_000,
    ) -> None:
        for n, v, lo in (
            ("checkpoint_every", checkpoint_every, 0),
            ("segment_bytes", segment_bytes, 4096),
            ("max_batch", max_batch, 1),
            ("max_backlog", max_backlog, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidArgument(
                    f"{n} must be an int >= {lo}", argument=n, expected=f"int >= {lo}", got=v
                )
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise InvalidArgument(
                "path must be a directory path or None (in memory)",
                argument="path",
                expected="str | PathLike | None",
                got=type(path).__name__,
            )
        self._path = os.fspath(path) if path is not None else None
        self._opts = {"segment_bytes": segment_bytes, "checkpoint_every": checkpoint_every}
        self._max_batch = max_batch
        self._max_backlog = max_backlog
        self._store: Optional[_core.AuditStore] = None
        self._queue: deque[_Pending] = deque()
        self._wake: Optional[anyio.Event] = None
        self._writer_done: Optional[anyio.Event] = None
        self._loop_thread: Optional[int] = None
        self._running = False
        self._stopping = False
        self._closed = False
        self._subs: list[_Sub] = []
        self._last_error: Optional[str] = None
        self._appended = 0
        self._batches = 0
        self._own_tg: Optional[TaskGroup] = None

    @classmethod
    def from_config(cls, security: SecurityConfig) -> Optional[AuditLog]:
        """The trail ``security`` asks for: None when ``audit_enabled`` is false."""
        if not security.audit_enabled:
            return None
        return cls(security.audit_storage)

    # -------------------------------------------------------------- properties
    @property
    def path(self) -> Optional[str]:
        return self._path

    def _open(self) -> _core.AuditStore:
        if self._closed:
            raise RuntimeStateError("this AuditLog is closed; create a new one")
        if self._store is None:
            self._store = _core.AuditStore(self._path, **self._opts)
            rep = self.open_report
            if rep.truncated_bytes:
                log.warning(
                    "audit store %s: cut a torn tail of %d bytes from %s (unacknowledged writes)",
                    self._path,
                    rep.truncated_bytes,
                    rep.truncated_file,
                )
            if rep.damaged_regions:
                log.error(
                    "audit store %s has %d damaged regions; run verify() to locate them",
                    self._path,
                    rep.damaged_regions,
                )
        return self._store

    @property
    def public_key(self) -> bytes:
        """The Ed25519 public key that signs this trail (32 bytes)."""
        return self._open().public_key

    @property
    def key_id(self) -> str:
        return self._open().key_id

    @property
    def next_sequence(self) -> int:
        return self._open().next_seq

    @property
    def open_report(self) -> OpenReport:
        return msgspec.convert(self._open().open_report, OpenReport)

    @property
    def backlog(self) -> int:
        """Events queued by ``record`` or ``append`` and not yet durable."""
        return len(self._queue)

    # --------------------------------------------------------------- lifecycle
    async def start(self, task_group: TaskGroup) -> None:
        if self._running:
            raise RuntimeStateError("this AuditLog is already started")
        await anyio.to_thread.run_sync(self._open)
        self._loop_thread = threading.get_ident()
        self._running = True
        self._stopping = False
        self._writer_done = anyio.Event()
        task_group.start_soon(self._writer, name="symbi.audit.writer")

    async def stop(self) -> None:
        """Write everything queued, sign a final checkpoint and close the store."""
        if self._closed:
            return
        if self._running:
            self._stopping = True
            self._kick()
            assert self._writer_done is not None
            await self._writer_done.wait()
        elif self._queue:
            await self._commit(self._drain(len(self._queue)))
        for s in self._subs:
            s.send.close()
        if self._store is not None:
            await anyio.to_thread.run_sync(self._store.close)
        self._closed = True

    def health(self) -> ComponentHealth:
        if self._closed:
            return ComponentHealth(status="down", detail="closed")
        store = self._store
        if store is not None and store.failure is not None:
            return ComponentHealth(status="down", detail=f"write failed: {store.failure}")
        detail = f"{self._appended} events in {self._batches} batches, backlog {len(self._queue)}"
        if self._last_error or len(self._queue) > self._max_backlog:
            return ComponentHealth(
                status="degraded", detail=f"{detail}; last error: {self._last_error}"
            )
        if store is not None and store.open_report.get("damaged_regions"):
            return ComponentHealth(
                status="degraded", detail=f"{detail}; damaged regions on disk, run verify()"
            )
        return ComponentHealth(status="ok", detail=detail)

    async def __aenter__(self) -> AuditLog:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._own_tg = tg
        try:
            await self.start(tg)
        except BaseException as e:
            tg.cancel_scope.cancel()
            await tg.__aexit__(type(e), e, e.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Optional[bool]:
        tg = self._own_tg
        try:
            with anyio.CancelScope(shield=True):
                await self.stop()
        finally:
            if tg is not None:
                self._own_tg = None
                # The writer has finished; close the group without folding the body's
                # exception into an ExceptionGroup (it propagates as raised).
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        return None

    # ----------------------------------------------------------------- writing
    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        """Queue an event without waiting (the :class:`AuditSink` protocol). It is durable
        by the time ``stop()`` (or ``flush()``) returns."""
        if self._closed or self._stopping:
            raise RuntimeStateError("this AuditLog is stopped; events can no longer be recorded")
        item = (
            _check_str("agent_id", agent_id),
            _check_str("event_type", event_type),
            _encode_details(details),
            time.time_ns(),
            None,
        )
        self._queue.append(item)
        if self._running and threading.get_ident() == self._loop_thread:
            self._kick()

    async def append(
        self,
        agent_id: str,
        event_type: str,
        details: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = DEFAULT_APPEND_TIMEOUT,
    ) -> AuditEvent:
        """Append one event; returns it once it is durable (signed, chained, fsynced).

        Raises :class:`~symbi.errors.RequestTimeout` when it is not acknowledged within
        ``timeout`` seconds (it may still be written later)."""
        item_agent = _check_str("agent_id", agent_id)
        item_type = _check_str("event_type", event_type)
        payload = _encode_details(details)
        _check_timeout(timeout)
        if self._closed or self._stopping:
            raise RuntimeStateError("this AuditLog is stopped; open a new one to append")
        ts = time.time_ns()
        if not self._running:
            with anyio.fail_after(timeout) if timeout else _nullscope():
                return (await self._commit([(item_agent, item_type, payload, ts, None)]))[0]
        waiter = _Waiter()
        self._queue.append((item_agent, item_type, payload, ts, waiter))
        self._kick()
        try:
            with anyio.fail_after(timeout) if timeout else _nullscope():
                await waiter.done.wait()
        except TimeoutError:
            raise RequestTimeout(
                f"the audit append was not acknowledged within {timeout}s; the disk may be "
                "slow or full (the event may still be written)",
                recipient="audit",
                timeout=timeout,
            ) from None
        if waiter.error is not None:
            raise waiter.error
        assert waiter.event is not None
        return waiter.event

    async def flush(self, *, timeout: Optional[float] = DEFAULT_APPEND_TIMEOUT) -> None:
        """Wait until everything queued so far is durable."""
        _check_timeout(timeout)
        if not self._queue:
            return
        if not self._running:
            with anyio.fail_after(timeout) if timeout else _nullscope():
                await self._commit(self._drain(len(self._queue)))
            return
        marker = _Waiter()
        # A marker-only entry would be written; instead wait for the last queued item.
        last = self._queue[-1]
        if last[4] is None:
            self._queue[-1] = (*last[:4], marker)
        else:
            marker = last[4]
        self._kick()
        with anyio.fail_after(timeout) if timeout else _nullscope():
            await marker.done.wait()

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _drain(self, n: int) -> list[_Pending]:
        q = self._queue
        return [q.popleft() for _ in range(min(n, len(q)))]

    async def _commit(self, batch: list[_Pending]) -> list[AuditEvent]:
        store = self._open()
        items = [(a, t, d, ts) for a, t, d, ts, _ in batch]
        try:
            raw = await anyio.to_thread.run_sync(store.append_batch, items)
        except Exception as e:
            self._last_error = str(e)
            for *_, w in batch:
                if w is not None:
                    w.error = e
                    w.done.set()
            raise
        events = [AuditEvent._from_core(t) for t in raw]
        self._appended += len(events)
        self._batches += 1
        for ev, (*_, w) in zip(events, batch):
            if w is not None:
                w.event = ev
                w.done.set()
        if self._subs:
            self._publish(events)
        return events

    async def _writer(self) -> None:
        assert self._writer_done is not None
        try:
            while True:
                if not self._queue:
                    if self._stopping:
                        break
                    self._wake = anyio.Event()
                    # record() from other threads cannot wake us; poll for them.
                    with anyio.move_on_after(0.05):
                        await self._wake.wait()
                    continue
                batch = self._drain(self._max_batch)
                try:
                    await self._commit(batch)
                except Exception:
                    log.exception("audit batch of %d events failed", len(batch))
                    if self._store is not None and self._store.failure is not None:
                        self._fail_queue()
                        break
        finally:
            self._running = False
            self._writer_done.set()

    def _fail_queue(self) -> None:
        err = RuntimeStateError(f"the audit store failed: {self._last_error}; reopen it")
        while self._queue:
            *_, w = self._queue.popleft()
            if w is not None:
                w.error = err
                w.done.set()

    # ---------------------------------------------------------------- reading
    def _publish(self, events: list[AuditEvent]) -> None:
        for s in list(self._subs):
            for ev in events:
                if (s.agent is None or ev.agent_id == s.agent) and (
                    s.type is None or ev.event_type == s.type
                ):
                    try:
                        s.send.send_nowait(ev)
                    except anyio.WouldBlock:
                        s.overflowed = True
                        s.send.close()
                        self._subs.remove(s)
                        break
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        self._subs.remove(s)
                        break

    async def stream(
        self,
        *,
        agent: Optional[str] = None,
        type: Optional[str] = None,
        timeout: Optional[float] = None,
        buffer: int = 10_000,
    ) -> AsyncIterator[AuditEvent]:
        """Follow new events live, optionally only those of ``agent`` and/or ``type``.

        Iteration ends when no matching event arrives within ``timeout`` seconds (None:
        wait forever) or when the log stops. A consumer more than ``buffer`` events behind
        gets :class:`~symbi.errors.DeliveryError`; catch up with ``query(after=...)``."""
        _query_args(agent, type, None, None, None, None)
        _check_timeout(timeout)
        if self._closed:
            raise RuntimeStateError("this AuditLog is closed")
        send, recv = anyio.create_memory_object_stream[AuditEvent](max(1, buffer))
        sub = _Sub(agent, type, send)
        self._subs.append(sub)
        wait = math.inf if timeout is None else timeout
        try:
            while True:
                with anyio.move_on_after(wait) as scope:
                    try:
                        ev = await recv.receive()
                    except anyio.EndOfStream:
                        if sub.overflowed:
                            raise DeliveryError(
                                f"the audit stream fell more than {buffer} events behind; "
                                "catch up with query(after=<last sequence>) and stream again",
                                recipient="audit.stream",
                                reason="overflow",
                            ) from None
                        return
                if scope.cancelled_caught:
                    return
                yield ev
        finally:
            if sub in self._subs:
                self._subs.remove(sub)
            send.close()
            recv.close()

    def query(
        self,
        *,
        agent: Optional[str] = None,
        type: Optional[str] = None,
        since: Optional[TimeLike] = None,
        until: Optional[TimeLike] = None,
        after: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> list[AuditEvent]:
        """Durable events matching every filter given, oldest first: ``since <= timestamp
        < until``, ``sequence > after``, at most ``limit``."""
        args = _query_args(agent, type, since, until, after, limit)
        return [AuditEvent._from_core(t) for t in self._open().query(**args)]

    def verify(self) -> VerifyReport:
        """Recompute the chain, batch-verify every signature and check every checkpoint.
        Raises :class:`~symbi.errors.AuditIntegrityError` naming the first bad event."""
        return VerifyReport._from_core(self._open().verify(), self._path)

    def checkpoints(self) -> list[Checkpoint]:
        return [Checkpoint._from_core(t) for t in self._open().checkpoints()]

    def checkpoint(self) -> Checkpoint:
        """Sign and store a checkpoint over every event so far."""
        return Checkpoint._from_core(self._open().checkpoint())

    def prove(self, sequence: int) -> InclusionProof:
        """Prove event ``sequence`` is in the trail, against the latest checkpoint that
        covers it (one is cut now if none does yet)."""
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
            raise InvalidArgument(
                "sequence must be an int >= 0",
                argument="sequence",
                expected="int >= 0",
                got=sequence,
            )
        ck, path, ev, canonical = self._open().prove(sequence)
        checkpoint = Checkpoint._from_core(ck)
        return InclusionProof(
            sequence=sequence,
            tree_size=checkpoint.size,
            path=path,
            event=AuditEvent._from_core(ev),
            canonical=canonical,
            checkpoint=checkpoint,
        )


class _nullscope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ------------------------------------------------------------- module functions
def _dir_arg(path: PathLike) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument(
            "path must be the audit store directory",
            argument="path",
            expected="str | PathLike",
            got=path,
        )
    return os.fspath(path)


def verify_dir(
    path: PathLike, *, public_key: Optional[bytes] = None, allow_torn_tail: bool = False
) -> VerifyReport:
    """Verify the store in ``path`` read-only (with its ``audit.pub``, or a pinned
    ``public_key``). A torn tail left by a crash counts as damage unless
    ``allow_torn_tail``; opening the store with :class:`AuditLog` repairs it.
    Raises :class:`~symbi.errors.AuditIntegrityError` naming the first bad event."""
    p = _dir_arg(path)
    return VerifyReport._from_core(
        _core.audit_verify_dir(p, public_key=public_key, allow_torn_tail=allow_torn_tail), p
    )


def query_dir(
    path: PathLike,
    *,
    agent: Optional[str] = None,
    type: Optional[str] = None,
    since: Optional[TimeLike] = None,
    until: Optional[TimeLike] = None,
    after: Optional[int] = None,
    limit: Optional[int] = None,
) -> list[AuditEvent]:
    """Events stored in ``path`` that match the filters (see :meth:`AuditLog.query`)."""
    args = _query_args(agent, type, since, until, after, limit)
    return [AuditEvent._from_core(t) for t in _core.audit_query_dir(_dir_arg(path), **args)]


def verify_inclusion(proof: InclusionProof, checkpoint: Checkpoint, public_key: bytes) -> None:
    """Check that ``proof`` shows its event is in the trail ``checkpoint`` signs, and that
    the event and checkpoint are signed by ``public_key``. Raises
    :class:`~symbi.errors.AuditIntegrityError` (kind ``signature``, ``link`` or
    ``inclusion``) when anything does not hold."""
    if not isinstance(proof, InclusionProof) or not isinstance(checkpoint, Checkpoint):
        raise InvalidArgument(
            "pass an InclusionProof (from AuditLog.prove) and a Checkpoint",
            argument="proof",
            expected="InclusionProof, Checkpoint",
            got=type(proof).__name__,
        )
    seq = proof.sequence
    if not _core.audit_verify_checkpoint(
        checkpoint.size,
        checkpoint.root,
        checkpoint.timestamp,
        checkpoint.key_id,
        checkpoint.signature,
        bytes(public_key),
    ):
        raise AuditIntegrityError(
            f"the checkpoint over {checkpoint.size} events is not signed by this public key",
            sequence=max(checkpoint.size - 1, 0),
            kind="signature",
        )
    ev = proof.event
    if not _core.audit_verify_event(
        ev.prev_hash, seq, proof.canonical, ev.chain_hash, ev.signature, bytes(public_key)
    ):
        raise AuditIntegrityError(
            f"event {seq} in the proof does not match its chain hash or signature",
            sequence=seq,
            kind="link",
        )
    if proof.tree_size != checkpoint.size or not _core.audit_verify_inclusion(
        seq, checkpoint.size, ev.chain_hash, proof.path, checkpoint.root
    ):
        raise AuditIntegrityError(
            f"the inclusion proof of event {seq} does not lead to the checkpoint's root",
            sequence=seq,
            kind="inclusion",
        )
