"""``AuditLog``: the runtime's tamper-evident audit trail (component name ``"audit"``).

    async with symbi.Runtime(cfg) as rt:
        ev = await rt.audit.append("agent-1", "data.read", {"table": "patients"}, timeout=5)
        async for ev in rt.audit.stream(agent="agent-1", timeout=10): ...
        rt.audit.query(type="policy.denied", since=datetime(2025, 1, 1))
        rt.audit.verify()

**Durability and group commit.** ``append`` returns only after the event is on disk
(``fdatasync``). Appends join the *open batch*; one writer task hands each batch to the Rust
store as one group commit (number, chain, sign, one write, one fdatasync) in a worker thread
with the GIL released; everything queued meanwhile forms the next batch. All appenders of
a batch wait on the batch's one event, and each builds its own ``AuditEvent`` from what the
store returns for the batch (ids, chain hashes, signatures). ``record`` (the :class:`AuditSink`
protocol other components use) joins the open batch without waiting; everything recorded is
durable before ``stop()`` (or ``flush()``) returns.

**Timeouts without a cancel scope per append.** An appender notes its deadline on its
batch; one watchdog task sleeps until the earliest noted deadline and then wakes that
batch's waiters, and those past their deadline raise
:class:`~symbi.errors.RequestTimeout`. Cancellation is delivered at the wait as usual.

**Threads.** ``record`` may be called from any thread: from other threads it goes through a
thread-safe inbox and wakes the writer with ``call_soon_threadsafe`` (asyncio) or the trio
token (no polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import struct
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from types import TracebackType
from typing import Any, Callable, Optional, Protocol, Union, runtime_checkable

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

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
from .events import (
    _NS,
    AuditEvent,
    Checkpoint,
    InclusionProof,
    OpenReport,
    VerifyReport,
)

__all__ = [
    "AuditLog",
    "AuditSink",
    "AuditStream",
    "TimeLike",
    "query_dir",
    "verify_dir",
    "verify_inclusion",
]

log = logging.getLogger("symbi.audit")

#: A point in time: a datetime (naive means UTC), Unix seconds (int or float), or int
#: nanoseconds since the epoch (``AuditEvent.timestamp``): an int too large to be seconds
#: the trail can hold (beyond 2262-04-11) is read as nanoseconds. See :func:`_to_ns`.
TimeLike = Union[datetime, float, int]
PathLike = Union[str, "os.PathLike[str]"]

_encode = msgspec.json.Encoder(order="sorted").encode
_monotonic = time.monotonic
_time_ns = time.time_ns
DEFAULT_APPEND_TIMEOUT = 30.0
#: Limits the Rust store enforces too (rust/src/audit/event.rs), checked here so that one
#: bad event never fails the batch it would share with others.
_MAX_ID_BYTES = 4096
_MAX_DETAILS_BYTES = 16 << 20
#: Batches handed to the store at once. One: two concurrent store calls would race for
#: the store's tail lock, so a later batch could be numbered before an earlier one (events
#: handed over first must come first in the trail). Measured on 2 cores, a second batch in
#: flight gained nothing anyway: signing, not the fdatasync, is the bottleneck there, and
#: signing already uses every core.
_PIPELINE_DEPTH = 1


@runtime_checkable
class AuditSink(Protocol):
    """Where components send audit events without waiting for them to be written."""

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None: ...


def _bad_str(name: str, value: object) -> InvalidArgument:
    return InvalidArgument(
        f"{name} must be a non-empty string of at most {_MAX_ID_BYTES} bytes of UTF-8, "
        f"got {value!r:.200}",
        argument=name,
        expected="non-empty str",
        got=value,
    )


def _check_str(name: str, value: object) -> str:
    if type(value) is str and value and value.isascii() and len(value) <= _MAX_ID_BYTES:
        return value  # the common case, without encoding
    if not isinstance(value, str) or not value:
        raise _bad_str(name, value)
    try:
        n = len(value.encode())
    except UnicodeEncodeError:  # lone surrogates
        raise _bad_str(name, value) from None
    if n > _MAX_ID_BYTES:
        raise _bad_str(name, value)
    return str(value)


def _bad_details(expected: str, got: object, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"details {why}", argument="details", expected=expected, got=type(got).__name__
    )


def _encode_details(details: Optional[Mapping[str, Any]]) -> bytes:
    """Compact JSON with sorted keys: the bytes that are signed (encoded once, here)."""
    if details is None:
        return b"{}"
    if type(details) is not dict:
        if not isinstance(details, Mapping):
            raise _bad_details(
                "Mapping[str, JSON-able]", details, "must be a mapping with str keys"
            )
        details = dict(details)
    for k in details:
        if type(k) is not str:
            raise _bad_details(
                "Mapping[str, JSON-able]",
                details,
                f"must be a mapping with str keys, got key {k!r:.100}",
            )
    try:
        out = _encode(details)
    except (TypeError, msgspec.EncodeError, UnicodeEncodeError) as e:
        raise _bad_details(
            "JSON-able values",
            details,
            f"cannot be encoded as JSON: {e}; pass str, numbers, bools, None, lists and dicts",
        ) from None
    if len(out) > _MAX_DETAILS_BYTES:
        raise _bad_details(
            f"at most {_MAX_DETAILS_BYTES} bytes of JSON",
            details,
            f"encode to {len(out)} bytes; the limit is {_MAX_DETAILS_BYTES}, store large "
            "data elsewhere and reference it",
        )
    return out


#: Event timestamps are int64 nanoseconds since the Unix epoch: 1677-09-21 .. 2262-04-11.
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1
#: The largest ``after`` / ``limit`` the store takes (u64 / usize on 64-bit platforms).
_COUNT_MAX = 2**63 - 1


#: Whole Unix seconds of at most this size are seconds; larger ints are nanoseconds.
_SECONDS_MAX = _NS_MAX // _NS
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _float_to_ns(t: float) -> int:
    """The first nanosecond ``n`` whose float seconds (``n / 10**9``, which is how
    ``AuditEvent.time`` is computed) are ``>= t``. So ``timestamp >= _float_to_ns(t)``
    exactly when ``time >= t``: ``query(since=ev.time)`` includes ``ev`` and
    ``query(until=ev.time)`` excludes it, with no rounding either way."""
    exact = Fraction(t) * _NS
    hi = math.ceil(exact)  # hi / 10**9 >= t exactly, so its float is too
    # One float step below t cannot round up to t (t - ulp(t) is a float).
    lo = math.floor(exact - Fraction(math.ulp(t)) * _NS) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid / _NS >= t:
            hi = mid
        else:
            lo = mid
    return hi


def _to_ns(name: str, t: Optional[TimeLike]) -> Optional[int]:
    """``t`` as int nanoseconds since the epoch, without rounding through floats: the one
    conversion ``query``, ``query_dir``, reports and the CLI share."""
    if t is None:
        return None
    ns: Optional[int] = None
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        d = t - _EPOCH
        ns = (d.days * 86_400 + d.seconds) * _NS + d.microseconds * 1_000
    elif isinstance(t, int) and not isinstance(t, bool):
        ns = t * _NS if abs(t) <= _SECONDS_MAX else int(t)
    elif isinstance(t, float) and abs(t) <= _SECONDS_MAX + 1:
        ns = _float_to_ns(t)
    elif isinstance(t, float) and not math.isnan(t):
        ns = _NS_MAX + 1 if t > 0 else _NS_MIN - 1  # out of range, reported below
    if ns is not None:
        if _NS_MIN <= ns <= _NS_MAX:
            return ns
        raise InvalidArgument(
            f"{name}={t!r} is outside the times the audit trail can hold (1677-09-21 to "
            f"2262-04-11 UTC); pass a time in that range, or None for no bound",
            argument=name,
            expected="a time between 1677-09-21 and 2262-04-11 UTC",
            got=t,
        )
    raise InvalidArgument(
        f"{name} must be a datetime, Unix seconds or int nanoseconds, got {t!r}",
        argument=name,
        expected="datetime | float seconds | int nanoseconds",
        got=t,
    )


def _ns_to_datetime(ns: int) -> datetime:
    """An event time as an aware UTC datetime, truncated to the microsecond (never rounded
    up into the next second)."""
    return _EPOCH + timedelta(microseconds=ns // 1_000)


def _check_timeout(timeout: Optional[float]) -> Optional[float]:
    if timeout is None or (type(timeout) is float and timeout > 0):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
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
        if n is not None and (
            isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= _COUNT_MAX
        ):
            raise InvalidArgument(
                f"{name} must be an int in 0..2**63-1, or None for no bound",
                argument=name,
                expected="0 <= int < 2**63",
                got=n,
            )
    return {
        "agent": agent,
        "event_type": type,
        "since_ns": _to_ns("since", since),
        "until_ns": _to_ns("until", until),
        "after_seq": after,
        "limit": limit,
    }


#: (agent_id, event_type, details JSON, timestamp ns): what the store takes per event.
_Item = tuple[str, str, bytes, int]
#: What the store returns per batch (see ``_core.AuditStore.commit_batch``).
_Result = tuple[int, bytes, str, list[str], list[bytes], list[bytes]]


class _Batch:
    """Events handed to the store as one group commit, and everyone waiting for them.

    Waiters wait on ``wake``; it is set when the batch is resolved (``done``) and by the
    watchdog when ``deadline`` (the earliest deadline a waiter noted since the last wake-up)
    has passed, after which it is replaced."""

    __slots__ = ("complete", "deadline", "done", "error", "items", "result", "wake")

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.wake = anyio.Event()
        self.deadline = math.inf
        self.complete = False  # the store call returned (or failed)
        self.done = False  # resolved to the waiters, in sequence order
        self.error: Optional[BaseException] = None
        self.result: Optional[_Result] = None

    def event(self, i: int) -> AuditEvent:
        assert self.result is not None
        return AuditEvent._from_batch(self.result, self.items[i], i)


def _threadsafe_caller() -> Callable[[Callable[[], object]], object]:
    """A function that runs a callback on the current event loop from any thread."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # not asyncio: anyio's other backend is trio
        import trio  # type: ignore[import-not-found,import-untyped,unused-ignore]

        token = trio.lowlevel.current_trio_token()
        run_sync_soon: Callable[[Callable[[], object]], object] = token.run_sync_soon
        return run_sync_soon


@dataclass
class _Sub:
    agent: Optional[str]
    type: Optional[str]
    send: MemoryObjectSendStream[AuditEvent]
    overflowed: bool = False


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
        # Write path (see the module docstring). ``_cur`` is the open batch while running;
        # ``_ready`` holds cut batches not yet handed over, ``_inflight`` those handed to
        # the store (oldest first). ``_inbox`` takes events recorded from other threads or
        # while not running.
        self._cur: Optional[_Batch] = None
        self._ready: deque[_Batch] = deque()
        self._inflight: deque[_Batch] = deque()
        self._inbox: deque[_Item] = deque()
        self._inbox_kicked = False
        self._tg: Optional[TaskGroup] = None
        self._wake: Optional[anyio.Event] = None
        self._idle = False
        self._failed = False
        self._watch_kick: Optional[anyio.Event] = None
        self._watch_at = math.inf
        self._call_soon: Optional[Callable[[Callable[[], object]], object]] = None
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
                    "audit store %s: moved a torn tail of %d bytes (an unfinished, "
                    "unacknowledged write) from %s to %s",
                    self._path,
                    rep.truncated_bytes,
                    rep.truncated_file,
                    rep.quarantine_file,
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
        n = len(self._inbox)
        for b in (self._cur, *self._ready, *self._inflight):
            if b is not None and not b.done:
                n += len(b.items)
        return n

    # --------------------------------------------------------------- lifecycle
    async def start(self, task_group: TaskGroup) -> None:
        if self._running:
            raise RuntimeStateError("this AuditLog is already started")
        await anyio.to_thread.run_sync(self._open)
        self._loop_thread = threading.get_ident()
        self._call_soon = _threadsafe_caller()
        self._tg = task_group
        self._cur = _Batch()
        self._wake = anyio.Event()
        self._watch_kick = anyio.Event()
        self._running = True
        self._stopping = False
        self._writer_done = anyio.Event()
        task_group.start_soon(self._writer, name="symbi.audit.writer")
        task_group.start_soon(self._watchdog, name="symbi.audit.watchdog")

    async def stop(self) -> None:
        """Write everything queued, sign a final checkpoint and close the store."""
        if self._closed:
            return
        if self._running:
            self._stopping = True
            self._kick()
            assert self._writer_done is not None
            await self._writer_done.wait()
        while self._inflight:  # the writer was cancelled; these finish on their own
            await self._inflight[-1].wake.wait()
        if not self._failed:
            # Left over when the writer was cancelled (or never started): write them now.
            leftovers = [*self._ready, *([self._cur] if self._cur is not None else [])]
            self._ready.clear()
            self._cur = None
            for b in leftovers:
                if b.items:
                    await self._commit_leftover(b)
            if self._inbox:
                await self._commit_direct(self._take_inbox())
        elif self._inbox:
            log.error(
                "audit: %d events recorded after the store failed were not written: %s",
                len(self._inbox),
                self._last_error,
            )
            self._inbox.clear()
        for s in self._subs:
            s.send.close()
        if self._store is not None:
            await anyio.to_thread.run_sync(self._store.close)
        self._closed = True
        if self._watch_kick is not None:
            self._watch_kick.set()

    def health(self) -> ComponentHealth:
        if self._closed:
            return ComponentHealth(status="down", detail="closed")
        store = self._store
        if store is not None and store.failure is not None:
            return ComponentHealth(status="down", detail=f"write failed: {store.failure}")
        backlog = self.backlog
        detail = f"{self._appended} events in {self._batches} batches, backlog {backlog}"
        if self._last_error or backlog > self._max_backlog:
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
        except BaseException:
            # Close the (task-less) group without folding the error into an
            # ExceptionGroup: a refused open raises AuditIntegrityError as it is.
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
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
        by the time ``stop()`` (or ``flush()``) returns. Cheap: no task, no event; safe to
        call from any thread."""
        if self._closed or self._stopping:
            raise RuntimeStateError("this AuditLog is stopped; events can no longer be recorded")
        item = (
            _check_str("agent_id", agent_id),
            _check_str("event_type", event_type),
            _encode_details(details),
            _time_ns(),
        )
        cur = self._cur
        if cur is not None and threading.get_ident() == self._loop_thread:
            cur.items.append(item)
            if len(cur.items) >= self._max_batch:
                self._cut()
            if self._idle:
                self._kick()
            return
        self._inbox.append(item)
        if self._running and not self._inbox_kicked:
            self._inbox_kicked = True
            call_soon = self._call_soon
            assert call_soon is not None
            # RuntimeError: the loop has closed; stop() writes the inbox.
            with contextlib.suppress(RuntimeError):
                call_soon(self._kick)

    async def append(
        self,
        agent_id: str,
        event_type: str,
        details: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = DEFAULT_APPEND_TIMEOUT,
    ) -> AuditEvent:
        """Append one event; returns it once it is durable (signed, chained, fdatasync'd).

        Raises :class:`~symbi.errors.RequestTimeout` when it is not acknowledged within
        ``timeout`` seconds (None: wait as long as it takes).

        Once ``append`` has validated the event it has handed it over: if the call then
        times out or is cancelled, the event is **still written** (it stays in its batch,
        which is never taken apart) and appears in the trail exactly once; only the
        acknowledgement is lost. Look it up with :meth:`query` if you need to know."""
        item = (
            _check_str("agent_id", agent_id),
            _check_str("event_type", event_type),
            _encode_details(details),
            _time_ns(),
        )
        _check_timeout(timeout)
        if self._closed or self._stopping:
            raise RuntimeStateError("this AuditLog is stopped; open a new one to append")
        b = self._cur
        if b is None or not self._running:
            with anyio.fail_after(timeout) if timeout else _nullscope():
                return (await self._commit_direct([item]))[0]
        i = len(b.items)
        b.items.append(item)
        if i + 1 >= self._max_batch:
            self._cut()
        if self._idle:
            self._kick()
        deadline = math.inf if timeout is None else _monotonic() + timeout
        while not b.done:
            if deadline != math.inf:
                if _monotonic() >= deadline:
                    raise RequestTimeout(
                        f"the audit append was not acknowledged within {timeout}s; the disk "
                        "may be slow or full (the event is still written when it can be)",
                        recipient="audit",
                        timeout=timeout,
                    )
                if deadline < b.deadline:
                    self._note_deadline(b, deadline)
            await b.wake.wait()
        if b.error is not None:
            raise b.error
        return b.event(i)

    async def flush(self, *, timeout: Optional[float] = DEFAULT_APPEND_TIMEOUT) -> None:
        """Wait until everything queued so far is durable. Raises
        :class:`~symbi.errors.RequestTimeout` after ``timeout`` seconds (what is queued is
        still written) and the store's error if writing failed."""
        _check_timeout(timeout)
        if not self._running or self._cur is None:
            if self._inbox:
                with anyio.fail_after(timeout) if timeout else _nullscope():
                    await self._commit_direct(self._take_inbox())
            return
        if threading.get_ident() == self._loop_thread:
            self._absorb_inbox()
        last: Optional[_Batch] = None
        for b in (self._cur, *reversed(self._ready), *reversed(self._inflight)):
            if b.items:
                last = b
                break
        if last is None:
            return
        self._kick()
        deadline = math.inf if timeout is None else _monotonic() + timeout
        while not last.done:
            if _monotonic() >= deadline:
                raise RequestTimeout(
                    f"the audit trail was not flushed within {timeout}s; the disk may be "
                    "slow or full (what is queued is still written)",
                    recipient="audit",
                    timeout=timeout,
                )
            if deadline < last.deadline:
                self._note_deadline(last, deadline)
            await last.wake.wait()
        if last.error is not None:
            raise last.error

    def _note_deadline(self, b: _Batch, deadline: float) -> None:
        """A waiter of ``b`` must be woken at ``deadline``: tell the watchdog if it plans
        to wake later than that."""
        b.deadline = deadline
        if deadline < self._watch_at:
            self._watch_at = deadline
            if self._watch_kick is not None:
                self._watch_kick.set()

    def _kick(self) -> None:
        """Wake the writer (on the loop thread)."""
        if self._idle and self._wake is not None:
            self._idle = False
            self._wake.set()

    def _cut(self) -> None:
        """Close the open batch (it is full) and open a new one."""
        assert self._cur is not None
        self._ready.append(self._cur)
        self._cur = _Batch()

    def _take_inbox(self) -> list[_Item]:
        q = self._inbox
        return [q.popleft() for _ in range(len(q))]

    def _absorb_inbox(self) -> None:
        self._inbox_kicked = False
        if not self._inbox:
            return
        assert self._cur is not None
        for item in self._take_inbox():
            self._cur.items.append(item)
            if len(self._cur.items) >= self._max_batch:
                self._cut()

    def _next_batch(self) -> Optional[_Batch]:
        """The next batch to hand to the store, if any."""
        if self._ready:
            return self._ready.popleft()
        b = self._cur
        if b is None or not b.items:
            return None
        self._cur = _Batch()
        return b

    async def _commit_direct(self, items: list[_Item]) -> list[AuditEvent]:
        """Write ``items`` as one batch now (when the writer is not running)."""
        store = self._open()
        try:
            res = await anyio.to_thread.run_sync(store.commit_batch, items)
        except Exception as e:
            self._last_error = str(e)
            raise
        self._appended += len(items)
        self._batches += 1
        events = [AuditEvent._from_batch(res, it, i) for i, it in enumerate(items)]
        if self._subs:
            self._publish(events)
        return events

    async def _commit_leftover(self, b: _Batch) -> None:
        try:
            b.result = await anyio.to_thread.run_sync(self._open().commit_batch, b.items)
        except Exception as e:
            b.error = e
            self._last_error = str(e)
            log.error("audit batch of %d events failed: %s", len(b.items), e)
        finally:
            b.complete = True
            self._resolve(b)

    async def _run(self, b: _Batch) -> None:
        """Hand ``b`` to the store (in a worker thread), then resolve what is complete."""
        store = self._store
        try:
            assert store is not None
            b.result = await anyio.to_thread.run_sync(store.commit_batch, b.items)
        except Exception as e:
            b.error = e
            self._last_error = str(e)
            log.error("audit batch of %d events failed: %s", len(b.items), e)
        except BaseException:
            # Cancelled before a worker thread took the batch (once one has, anyio waits
            # for it shielded): nothing was written. Put it back; stop() writes it.
            self._inflight.remove(b)
            self._ready.appendleft(b)
            raise
        b.complete = True
        q = self._inflight
        while q and q[0].complete:
            self._resolve(q.popleft())
        self._kick()

    def _resolve(self, b: _Batch) -> None:
        if b.error is None:
            self._appended += len(b.items)
            self._batches += 1
            if self._subs:
                self._publish([b.event(i) for i in range(len(b.items))])
        elif self._store is None or self._store.failure is not None or self._store.closed:
            self._failed = True
        b.done = True
        b.wake.set()

    async def _writer(self) -> None:
        assert self._writer_done is not None and self._tg is not None
        try:
            while True:
                self._absorb_inbox()
                if self._failed:
                    break
                while len(self._inflight) < _PIPELINE_DEPTH:
                    b = self._next_batch()
                    if b is None:
                        break
                    self._inflight.append(b)
                    self._tg.start_soon(self._run, b, name="symbi.audit.commit")
                if self._stopping and not self._inflight and not self._ready:
                    assert self._cur is not None
                    if not self._cur.items and not self._inbox:
                        break
                self._wake = anyio.Event()
                self._idle = True
                await self._wake.wait()
        finally:
            self._running = False
            self._idle = False
            if self._failed:
                self._fail_pending()
            # Otherwise (cancelled) stop() writes what is left.
            self._writer_done.set()

    def _fail_pending(self) -> None:
        """After a store failure: resolve every batch not handed over with the error, and
        say how many events were lost (never silently)."""
        err = RuntimeStateError(
            f"the audit store failed: {self._last_error}; reopen it (events queued after "
            "the failure were not written)"
        )
        pending = [*self._ready, *([self._cur] if self._cur is not None else [])]
        self._ready.clear()
        self._cur = None
        lost = len(self._inbox) + sum(len(b.items) for b in pending)
        self._inbox.clear()
        for b in pending:
            b.error = err
            b.complete = b.done = True
            b.wake.set()
        if lost:
            log.error("audit: %d queued events were not written: %s", lost, err)

    async def _watchdog(self) -> None:
        """Wake the waiters of any batch whose earliest noted deadline has passed."""
        while not self._closed:
            now = _monotonic()
            nearest = math.inf
            for b in (self._cur, *self._ready, *self._inflight):
                if b is None or b.done:
                    continue
                if b.deadline <= now:
                    b.deadline = math.inf
                    wake, b.wake = b.wake, anyio.Event()
                    wake.set()
                elif b.deadline < nearest:
                    nearest = b.deadline
            self._watch_at = nearest
            self._watch_kick = kick = anyio.Event()
            with anyio.move_on_after(nearest - _monotonic()):
                await kick.wait()

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
                        _drop(self._subs, s)
                        break
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        _drop(self._subs, s)
                        break

    def stream(
        self,
        *,
        agent: Optional[str] = None,
        type: Optional[str] = None,
        timeout: Optional[float] = None,
        buffer: int = 10_000,
    ) -> AuditStream:
        """Follow new events live, optionally only those of ``agent`` and/or ``type``.

        The stream receives every matching event appended **after this call** (it
        subscribes now, not when iteration starts). Iteration ends when no matching event
        arrives within ``timeout`` seconds (None: wait forever) or when the log stops. A
        consumer more than ``buffer`` events behind gets
        :class:`~symbi.errors.DeliveryError`; catch up with ``query(after=...)``. Close an
        unfinished stream with ``await stream.aclose()`` (or ``async with``); one that is
        dropped unsubscribes when it is garbage-collected."""
        _query_args(agent, type, None, None, None, None)
        _check_timeout(timeout)
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise InvalidArgument(
                f"buffer must be an int >= 1 (events held for a slow consumer), got {buffer!r}",
                argument="buffer",
                expected="int >= 1",
                got=buffer,
            )
        if self._closed:
            raise RuntimeStateError("this AuditLog is closed; open a new one to stream")
        return AuditStream(self._subs, agent, type, timeout, buffer)

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
        Raises :class:`~symbi.errors.AuditIntegrityError` naming the first bad event (see
        :mod:`symbi.audit` for the kinds)."""
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


def _drop(subs: list[_Sub], sub: _Sub) -> None:
    """Unsubscribe ``sub`` (it may already be gone: a garbage-collected stream removes
    itself at any allocation, from any thread)."""
    with contextlib.suppress(ValueError):
        subs.remove(sub)


def _unsubscribe(subs: list[_Sub], sub: _Sub, recv: MemoryObjectReceiveStream[AuditEvent]) -> None:
    _drop(subs, sub)
    sub.send.close()
    recv.close()


class AuditStream:
    """Live events from :meth:`AuditLog.stream`: an async iterator that is subscribed from
    the moment it is created, so no event appended between ``stream()`` and the first
    ``__anext__`` is missed."""

    def __init__(
        self,
        subs: list[_Sub],
        agent: Optional[str],
        type: Optional[str],
        timeout: Optional[float],
        buffer: int,
    ) -> None:
        send, recv = anyio.create_memory_object_stream[AuditEvent](buffer)
        self._sub = _Sub(agent, type, send)
        self._recv = recv
        self._wait = math.inf if timeout is None else timeout
        self._buffer = buffer
        subs.append(self._sub)
        # Unsubscribes when closed, or when the stream is dropped unclosed (the finalizer
        # holds no reference to the stream itself).
        self._close = weakref.finalize(self, _unsubscribe, subs, self._sub, recv)

    def __aiter__(self) -> AuditStream:
        return self

    async def __anext__(self) -> AuditEvent:
        if not self._close.alive:
            raise StopAsyncIteration
        with anyio.move_on_after(self._wait):
            try:
                return await self._recv.receive()
            except anyio.ClosedResourceError:  # closed by aclose() meanwhile
                raise StopAsyncIteration from None
            except anyio.EndOfStream:
                self._close()
                if self._sub.overflowed:
                    raise DeliveryError(
                        f"the audit stream fell more than {self._buffer} events behind; "
                        "catch up with query(after=<last sequence>) and stream again",
                        recipient="audit.stream",
                        reason="overflow",
                    ) from None
                raise StopAsyncIteration from None
        self._close()  # no matching event within the timeout
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Unsubscribe; events already received are dropped."""
        self._close()

    async def __aenter__(self) -> AuditStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close()


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
    ``public_key``). A torn tail left by a crash (an unfinished last record) counts as
    damage unless ``allow_torn_tail``; opening the store with :class:`AuditLog` moves it
    aside. A complete last record with a bad CRC is never a torn tail. Raises
    :class:`~symbi.errors.AuditIntegrityError` naming the first bad event, or kind
    ``checkpoint`` (``sequence`` None) when only the checkpoint file is wrong (see
    :mod:`symbi.audit` for the kinds)."""
    if not isinstance(allow_torn_tail, bool):
        raise InvalidArgument(
            "allow_torn_tail must be a bool",
            argument="allow_torn_tail",
            expected="bool",
            got=allow_torn_tail,
        )
    if public_key is not None and not isinstance(public_key, (bytes, bytearray, memoryview)):
        raise InvalidArgument(
            "public_key must be the trail's 32-byte Ed25519 public key (bytes) or None",
            argument="public_key",
            expected="bytes | None",
            got=type(public_key).__name__,
        )
    p = _dir_arg(path)
    return VerifyReport._from_core(
        _core.audit_verify_dir(
            p,
            public_key=None if public_key is None else bytes(public_key),
            allow_torn_tail=allow_torn_tail,
        ),
        p,
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


_EVENT_DOMAIN = b"symbi.audit.event.v1\0"


def _decode_canonical(b: bytes) -> Optional[tuple[int, str, int, str, str, str, bytes]]:
    """``(sequence, event_id, timestamp, key_id, agent_id, event_type, details JSON)`` of
    canonical event bytes (layout in ``events.py``), or None when they are malformed."""
    try:
        if not b.startswith(_EVENT_DOMAIN):
            return None
        p = len(_EVENT_DOMAIN)
        seq, eid, ts, n = struct.unpack_from(">Q16sqH", b, p)
        p += 34
        fields = [b[p : p + n]]
        p += n
        for _ in range(3):
            (n,) = struct.unpack_from(">I", b, p)
            fields.append(b[p + 4 : p + 4 + n])
            p += 4 + n
        if p != len(b):
            return None
        kid, agent, etype = (f.decode() for f in fields[:3])
    except (struct.error, UnicodeDecodeError):
        return None
    return seq, str(uuid.UUID(bytes=eid)), ts, kid, agent, etype, fields[3]


def _bad_proof(argument: str, expected: str, got: object) -> InvalidArgument:
    return InvalidArgument(
        f"{argument} must be {expected}; pass the InclusionProof and Checkpoint that "
        f"AuditLog.prove returned and the trail's 32-byte public key, got {got!r:.100}",
        argument=argument,
        expected=expected,
        got=got,
    )


def _check_proof_args(proof: object, checkpoint: object, public_key: object) -> bytes:
    """Type-check what :func:`verify_inclusion` hands to the Rust core (msgspec structs do
    not validate their fields on construction); return the key as bytes."""
    if not isinstance(proof, InclusionProof):
        raise _bad_proof("proof", "an InclusionProof", type(proof).__name__)
    if not isinstance(checkpoint, Checkpoint):
        raise _bad_proof("checkpoint", "a Checkpoint", type(checkpoint).__name__)
    if not isinstance(public_key, (bytes, bytearray, memoryview)):
        raise _bad_proof("public_key", "bytes", type(public_key).__name__)
    ev = proof.event
    if not isinstance(ev, AuditEvent):
        raise _bad_proof("proof.event", "an AuditEvent", type(ev).__name__)
    u64 = (
        ("proof.sequence", proof.sequence),
        ("proof.tree_size", proof.tree_size),
        ("checkpoint.size", checkpoint.size),
    )
    for name, v in u64:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
            raise _bad_proof(name, "an int in 0..2**64-1", v)
    t = checkpoint.timestamp
    if isinstance(t, bool) or not isinstance(t, int) or not _NS_MIN <= t <= _NS_MAX:
        raise _bad_proof("checkpoint.timestamp", "int nanoseconds", t)
    if not isinstance(checkpoint.key_id, str):
        raise _bad_proof("checkpoint.key_id", "a str", checkpoint.key_id)
    blobs = (
        ("checkpoint.root", checkpoint.root),
        ("checkpoint.signature", checkpoint.signature),
        ("proof.canonical", proof.canonical),
        ("proof.event.prev_hash", ev.prev_hash),
        ("proof.event.chain_hash", ev.chain_hash),
        ("proof.event.signature", ev.signature),
    )
    for name, blob in blobs:
        if not isinstance(blob, bytes):
            raise _bad_proof(name, "bytes", type(blob).__name__)
    if not isinstance(proof.path, list) or not all(isinstance(h, bytes) for h in proof.path):
        raise _bad_proof("proof.path", "a list of bytes", proof.path)
    return bytes(public_key)


def _event_matches(ev: AuditEvent, seq: int, canonical: bytes) -> bool:
    """Does ``ev`` show exactly the event whose canonical bytes are ``canonical``? The
    chain hash, signature and inclusion path cover only those bytes, so every field a
    reader sees must come from them."""
    f = _decode_canonical(canonical)
    if f is None:
        return False
    c_seq, eid, ts, kid, agent, etype, details = f
    try:
        same_details = _encode(ev.details) == details
    except (TypeError, msgspec.EncodeError):
        return False
    # type() checks: True == 1 and 2.0 == 2 would pass ==.
    shown = (ev.sequence, ev.event_id, ev.timestamp, ev.key_id, ev.agent_id, ev.event_type)
    return (
        c_seq == seq
        and type(ev.sequence) is int
        and type(ev.timestamp) is int
        and shown == (seq, eid, ts, kid, agent, etype)
        and same_details
    )


def verify_inclusion(proof: InclusionProof, checkpoint: Checkpoint, public_key: bytes) -> None:
    """Check that ``proof`` shows its event is in the trail ``checkpoint`` signs, that the
    event and checkpoint are signed by ``public_key``, and that every field of
    ``proof.event`` (sequence, time, agent, type, details, ids) is what was signed. Raises
    :class:`~symbi.errors.AuditIntegrityError` (kind ``signature``, ``link`` or
    ``inclusion``) when anything does not hold, and
    :class:`~symbi.errors.InvalidArgument` for arguments of the wrong type."""
    key = _check_proof_args(proof, checkpoint, public_key)
    seq = proof.sequence
    if not _core.audit_verify_checkpoint(
        checkpoint.size,
        checkpoint.root,
        checkpoint.timestamp,
        checkpoint.key_id,
        checkpoint.signature,
        key,
    ):
        raise AuditIntegrityError(
            f"the checkpoint over {checkpoint.size} events is not signed by this public key",
            sequence=max(checkpoint.size - 1, 0),
            kind="signature",
        )
    ev = proof.event
    if not _core.audit_verify_event(
        ev.prev_hash, seq, proof.canonical, ev.chain_hash, ev.signature, key
    ):
        raise AuditIntegrityError(
            f"event {seq} in the proof does not match its chain hash or signature",
            sequence=seq,
            kind="link",
        )
    if not _event_matches(ev, seq, proof.canonical) or ev.key_id != checkpoint.key_id:
        raise AuditIntegrityError(
            f"the event in the proof of event {seq} differs from the signed bytes it comes "
            "with (sequence, time, agent, type, details or ids were changed); trust only "
            "the fields decoded from proof.canonical",
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
