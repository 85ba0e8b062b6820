"""Per-agent resource limits, enforced, not only recorded.

* ``execution_timeout``: each task runs under an anyio cancel scope with that deadline.
* ``cpu_cores``: CPU time is measured per agent, step by step of its coroutine (see
  :class:`Metered`), and an agent past its share is paused until it is back under it: at
  its next await, or, for a handler that never awaits (a step cannot be interrupted),
  before its next message.
* ``memory_mb``: the bytes an agent owns through the runtime (queued messages, stored
  state) are accounted; a charge past the cap raises ``ResourceLimitExceeded``.
* ``disk_io_mbps`` / ``network_io_mbps``: I/O through runtime APIs passes token buckets;
  with a ``timeout`` too short for the budget, ``ResourceLimitExceeded`` is raised at once.

OS-level limits (rlimits, cgroups) are the sandbox's job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Coroutine, Generator
from typing import Any, Generic, Optional, TypeVar

import anyio
import msgspec
from msgspec import Meta
from typing_extensions import Annotated

from .errors import InvalidArgument, ResourceLimitExceeded

__all__ = ["AgentUsage", "Metered", "ResourceAccount", "ResourceLimits", "TokenBucket"]

T = TypeVar("T")
MB = 1024 * 1024


class ResourceLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one agent may use. ``None`` means unlimited."""

    memory_mb: Optional[Annotated[float, Meta(gt=0)]] = None
    cpu_cores: Optional[Annotated[float, Meta(gt=0, le=1024)]] = None
    disk_io_mbps: Optional[Annotated[float, Meta(gt=0)]] = None
    network_io_mbps: Optional[Annotated[float, Meta(gt=0)]] = None
    execution_timeout: Optional[Annotated[float, Meta(gt=0)]] = None

    @classmethod
    def parse(cls, value: Any) -> ResourceLimits:
        """Validate a ``ResourceLimits``, a mapping of its fields, or ``None``."""
        if value is None:
            return cls()
        try:
            if isinstance(value, cls):
                # The constructor does not check constraints: re-validate its fields.
                return msgspec.convert(msgspec.to_builtins(value), cls)
            return msgspec.convert(value, cls)
        except (msgspec.ValidationError, TypeError) as e:  # TypeError: an unencodable field
            raise InvalidArgument(
                f"invalid resource limits: {e}; every limit is a positive number or None",
                argument="limits",
                expected="ResourceLimits(memory_mb, cpu_cores, disk_io_mbps, "
                "network_io_mbps, execution_timeout)",
                got=value,
            ) from None


class AgentUsage(msgspec.Struct, kw_only=True):
    cpu_s: float = 0.0
    memory_bytes: int = 0
    disk_bytes: int = 0
    network_bytes: int = 0
    tasks: int = 0
    timeouts: int = 0
    throttled_s: float = 0.0


class TokenBucket:
    """``rate`` tokens per second, holding at most ``capacity``. ``take`` waits until the
    tokens are there (or fails fast with ``wait=False``)."""

    def __init__(self, rate: float, capacity: Optional[float] = None) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise InvalidArgument(
                "rate must be a positive finite number",
                argument="rate",
                expected="> 0",
                got=rate,
            )
        self.rate = rate
        self.capacity = capacity if capacity is not None else rate
        self._tokens = self.capacity
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def debit(self, amount: float) -> float:
        """Take ``amount`` now, possibly going negative; returns the seconds of debt."""
        self._refill()
        self._tokens -= amount
        return max(0.0, -self._tokens / self.rate)

    async def take(self, amount: float, *, timeout: Optional[float] = None) -> float:
        """Wait until ``amount`` tokens are available and take them; returns seconds waited.
        Amounts larger than the capacity are paid off over time rather than refused."""
        if amount < 0:
            raise InvalidArgument(
                "amount must be >= 0", argument="amount", expected=">= 0", got=amount
            )
        debt = self.debit(amount)
        if debt > 0:
            if timeout is not None and debt > timeout:
                self._tokens += amount  # refund: nothing was done
                raise TimeoutError(f"needs {debt:.3f}s of budget, more than the {timeout}s allowed")
            await anyio.sleep(debt)
        return debt


class ResourceAccount:
    """The accounting and enforcement for one agent."""

    def __init__(self, agent_id: str, limits: ResourceLimits) -> None:
        self.agent_id = agent_id
        self.limits = limits
        self.usage = AgentUsage()
        # CPU: `cpu_cores` CPU-seconds per second, with 100 ms of burst.
        self._cpu = (
            TokenBucket(limits.cpu_cores, limits.cpu_cores * 0.1) if limits.cpu_cores else None
        )
        self._disk = TokenBucket(limits.disk_io_mbps * MB) if limits.disk_io_mbps else None
        self._net = TokenBucket(limits.network_io_mbps * MB) if limits.network_io_mbps else None

    # ---------------------------------------------------------------- memory
    @property
    def memory_cap_bytes(self) -> Optional[int]:
        return int(self.limits.memory_mb * MB) if self.limits.memory_mb else None

    def charge_memory(self, nbytes: int, what: str) -> None:
        """Account ``nbytes`` more owned by the agent, or raise if past its cap."""
        cap = self.memory_cap_bytes
        if cap is not None and self.usage.memory_bytes + nbytes > cap:
            raise ResourceLimitExceeded(
                f"agent {self.agent_id!r} would own {self.usage.memory_bytes + nbytes} bytes "
                f"with this {what}, over its memory limit of {self.limits.memory_mb} MB; "
                "drain its mailbox or raise limits.memory_mb",
                agent_id=self.agent_id,
                resource="memory",
                limit=float(cap),
                used=float(self.usage.memory_bytes + nbytes),
            )
        self.usage.memory_bytes += nbytes

    def release_memory(self, nbytes: int) -> None:
        self.usage.memory_bytes = max(0, self.usage.memory_bytes - nbytes)

    # ------------------------------------------------------------------- cpu
    def charge_cpu(self, seconds: float) -> float:
        """Record CPU time; returns how long the agent must pause to be back in its share."""
        self.usage.cpu_s += seconds
        if self._cpu is None:
            return 0.0
        return self._cpu.debit(seconds)

    def cpu_owed(self) -> float:
        """Seconds the agent must still pause to be back in its CPU share (0: it is)."""
        return 0.0 if self._cpu is None else self._cpu.debit(0.0)

    async def pay_cpu(self) -> None:
        """Pause until the agent is back in its CPU share. The host calls this before a
        message: a handler that never awaits runs in one step, so its debt can only be
        paid before the agent's next one."""
        owed = self.cpu_owed()
        if owed > 0.0:
            self.usage.throttled_s += owed
            await anyio.sleep(owed)

    # -------------------------------------------------------------------- io
    async def disk_io(self, nbytes: int, *, timeout: Optional[float] = None) -> None:
        self.usage.disk_bytes += nbytes
        if self._disk is not None:
            self.usage.throttled_s += await self._take(self._disk, "disk_io", nbytes, timeout)

    async def network_io(self, nbytes: int, *, timeout: Optional[float] = None) -> None:
        self.usage.network_bytes += nbytes
        if self._net is not None:
            self.usage.throttled_s += await self._take(self._net, "network_io", nbytes, timeout)

    async def _take(
        self, bucket: TokenBucket, resource: str, nbytes: int, timeout: Optional[float]
    ) -> float:
        try:
            return await bucket.take(nbytes, timeout=timeout)
        except TimeoutError:
            # Not a TimeoutError: the host would take that for the handler's own error.
            rate = bucket.rate / MB
            raise ResourceLimitExceeded(
                f"agent {self.agent_id!r} cannot do {nbytes} bytes of {resource} within "
                f"{timeout}s at its limit of {rate:g} MB/s; wait longer, do less at once, "
                f"or raise limits.{resource}_mbps",
                agent_id=self.agent_id,
                resource=resource,
                limit=rate,
                used=float(nbytes),
            ) from None


def _step(
    coro: Coroutine[Any, Any, Any],
    account: ResourceAccount,
    send_value: Any,
    throw: Optional[BaseException],
) -> tuple[bool, Any, float]:
    """One step of ``coro``, its CPU time charged: (finished, result or yielded value,
    pause the agent owes). The coroutine's own exception propagates, uncharged."""
    clock = time.thread_time
    t0 = clock()
    try:
        yielded = coro.throw(throw) if throw is not None else coro.send(send_value)
    except StopIteration as stop:
        account.charge_cpu(clock() - t0)
        return True, stop.value, 0.0
    return False, yielded, account.charge_cpu(clock() - t0)


class Metered(Generic[T]):
    """Awaitable wrapper that measures the CPU time of each step of a coroutine and
    charges it to an account, pausing the coroutine while the agent is over its CPU share.

    A step is the code between two suspension points, so interleaved agents are never
    charged for each other's work.
    """

    __slots__ = ("_account", "_coro", "_first")

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        account: ResourceAccount,
        first: Optional[tuple[Any, float]] = None,
    ) -> None:
        self._coro = coro
        self._account = account
        self._first = first  # (yielded, pause) of a first step already taken

    @staticmethod
    def first_step(coro: Coroutine[Any, Any, T], account: ResourceAccount) -> tuple[bool, Any]:
        """Take the coroutine's first step now, metered: ``(True, result)`` when it
        finished (most handlers never suspend: no awaitable is needed), else ``(False,
        metered)``, a Metered to await for the rest. Raises the coroutine's exception."""
        done, got, pause = _step(coro, account, None, None)
        if done:
            return True, got
        return False, Metered(coro, account, (got, pause))

    def __await__(self) -> Generator[Any, Any, T]:
        coro, account = self._coro, self._account
        if self._first is None:
            done, yielded, pause = _step(coro, account, None, None)
            if done:
                result: T = yielded
                return result
        else:
            yielded, pause = self._first
        while True:
            send_value: Any = None
            throw: Optional[BaseException] = None
            try:
                send_value = yield yielded
            except BaseException as e:  # cancellation and errors go into the coroutine
                throw = e
            else:
                if pause > 0:
                    account.usage.throttled_s += pause
                    # Sleep on the event loop as part of this task, so the pause is
                    # cancellable like any other await.
                    try:
                        yield from anyio.sleep(pause).__await__()
                    except BaseException as e:
                        send_value, throw = None, e
            done, yielded, pause = _step(coro, account, send_value, throw)
            if done:
                result = yielded
                return result
