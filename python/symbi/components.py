"""What the runtime composes: components behind one small Protocol, and their health.

A component is started inside the runtime's anyio task group and stopped, in reverse
order, when the runtime shuts down. Backends (the NATS transport, Qdrant, ...) are
components too, so choosing one is a matter of config, not of code in the runtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Callable, Literal, Protocol, runtime_checkable

import anyio
import msgspec
from anyio.abc import TaskGroup

from .callbacks import is_async_callable
from .errors import InvalidArgument

__all__ = ["Component", "ComponentHealth", "HealthStatus", "Housekeeper"]

log = logging.getLogger("symbi.runtime")

HealthState = Literal["ok", "degraded", "down"]


class ComponentHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: HealthState
    detail: str = ""


class HealthStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The runtime's health: the worst of its components' states."""

    status: HealthState
    components: dict[str, ComponentHealth]
    uptime_s: float
    version: str


@runtime_checkable
class Component(Protocol):
    """A long-lived part of the runtime."""

    @property
    def name(self) -> str: ...

    async def start(self, task_group: TaskGroup) -> None:
        """Start, spawning background tasks into ``task_group``. Return once ready."""

    async def stop(self) -> None:
        """Stop cleanly. The runtime bounds this by ``runtime.shutdown_grace_s``."""

    def health(self) -> ComponentHealth: ...


Task = Callable[[], Awaitable[None]]


class Housekeeper:
    """Runs registered maintenance tasks (cache expiry, compaction, ...) every
    ``runtime.gc_interval_ms``. A task that fails is logged and retried next round; a task
    that keeps failing marks the runtime degraded."""

    name = "housekeeper"

    def __init__(self, interval_s: float) -> None:
        if (
            isinstance(interval_s, bool)
            or not isinstance(interval_s, (int, float))
            or not (0 < interval_s < float("inf"))
        ):
            raise InvalidArgument(
                "interval_s must be a positive number of seconds",
                argument="interval_s",
                expected="> 0",
                got=interval_s,
            )
        self.interval_s = interval_s
        self._tasks: dict[str, Task] = {}
        self._failures: dict[str, int] = {}
        self._rounds = 0
        self._last_round = 0.0
        self._scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        self._halt = False

    @property
    def rounds(self) -> int:
        return self._rounds

    def register(self, name: str, task: Task) -> None:
        """Run ``await task()`` every round. ``task`` is an ``async def`` function taking
        no arguments (a bound method or ``functools.partial`` of one is fine). Registering
        a name again replaces its task."""
        if not isinstance(name, str) or not name:
            raise InvalidArgument(
                f"name must be a non-empty str naming the task, got {name!r}",
                argument="name",
                expected="a non-empty str",
                got=name,
            )
        if not callable(task):
            raise InvalidArgument(
                f"task must be an async function taking no arguments, got {type(task).__name__}",
                argument="task",
                expected="an async def function",
                got=type(task).__name__,
            )
        if not is_async_callable(task):
            raise InvalidArgument(
                f"task {getattr(task, '__qualname__', task)!r} is not an async function: "
                "the housekeeper awaits task() every round; define it with `async def` "
                "(wrap sync work as `async def task(): work()`)",
                argument="task",
                expected="an async def function",
                got=getattr(task, "__qualname__", type(task).__name__),
            )
        self._tasks[name] = task

    def unregister(self, name: str) -> None:
        self._tasks.pop(name, None)
        self._failures.pop(name, None)

    async def run_once(self) -> None:
        for name, task in list(self._tasks.items()):
            try:
                # A stuck task must not stall housekeeping for everything else.
                with anyio.fail_after(max(self.interval_s, 1.0)):
                    await task()
                self._failures.pop(name, None)
            except Exception:
                self._failures[name] = self._failures.get(name, 0) + 1
                log.exception("housekeeping task %r failed", name)
        self._rounds += 1
        self._last_round = time.monotonic()

    async def _loop(self, stopped: anyio.Event) -> None:
        try:
            with anyio.CancelScope() as self._scope:
                if self._halt:  # stop() came before this task began
                    return
                while True:
                    await anyio.sleep(self.interval_s)
                    await self.run_once()
        finally:
            stopped.set()

    async def start(self, task_group: TaskGroup) -> None:
        self._stopped = anyio.Event()
        self._halt = False
        task_group.start_soon(self._loop, self._stopped, name="symbi.housekeeper")

    async def stop(self) -> None:
        """Cancel the loop and wait until a round in progress has ended, so the
        components stopped after this one see no more maintenance."""
        self._halt = True
        if self._scope is not None:
            self._scope.cancel()
        if self._stopped is not None:
            await self._stopped.wait()

    def health(self) -> ComponentHealth:
        failing = sorted(n for n, c in self._failures.items() if c >= 3)
        if failing:
            return ComponentHealth(status="degraded", detail=f"failing tasks: {failing}")
        return ComponentHealth(
            status="ok", detail=f"{self._rounds} rounds, {len(self._tasks)} tasks"
        )
