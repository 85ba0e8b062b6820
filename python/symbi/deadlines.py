"""Timeouts for many short waits without a cancel scope each.

A cancel scope with a deadline costs more than the rest of a short request (it looks up
the current task, arms a timer and unwinds on exit), so the agent host's replies and the
bus's pending requests share this instead: one watchdog task sleeps until the earliest
deadline and expires whatever is still waiting then. A waiter just waits on its own event
and checks, when woken, whether it was answered or expired.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import anyio

from .errors import InvalidArgument

__all__ = ["Deadlines", "Expirable", "check_timeout"]


def check_timeout(timeout: object, argument: str = "timeout") -> float:
    """``timeout`` as float seconds; InvalidArgument unless it is positive and finite
    (every await in symbi is bounded, so "no timeout" is not a value)."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (timeout > 0 and math.isfinite(timeout))
    ):
        raise InvalidArgument(
            f"{argument} must be a positive, finite number of seconds, got {timeout!r}",
            argument=argument,
            expected="> 0 seconds",
            got=timeout,
        )
    return float(timeout)


class _IsSet(Protocol):
    def is_set(self) -> bool: ...


class Expirable(Protocol):
    """A wait the watchdog can end: ``done`` tells whether it already ended;
    ``expire()`` ends it as timed out (and must set ``done``)."""

    @property
    def done(self) -> _IsSet: ...

    def expire(self) -> None: ...


class Deadlines:
    """``add(deadline, waiter)`` (deadline in ``anyio.current_time()`` seconds); ``run()``
    is the watchdog, started once in a task group and cancelled with it."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Expirable]] = []
        self._seq = itertools.count()
        self._wake = anyio.Event()
        #: How many waits the watchdog expired.
        self.expired = 0
        self._settled = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, deadline: float, waiter: Expirable) -> None:
        entry = (deadline, next(self._seq), waiter)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wake.set()  # a new earliest deadline: the watchdog must re-arm

    def settled(self) -> None:
        """A waiter that was added ended before its deadline. Its entry stays in the heap
        (removing it would cost O(n)) until half the heap is such leftovers; then they go
        in bulk, so answered waits (and what they hold) are not kept alive for long."""
        self._settled += 1
        if self._settled > 1024 and self._settled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].done.is_set()]
            heapq.heapify(self._heap)
            self._settled = 0

    def expire_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, waiter = heapq.heappop(self._heap)
            if not waiter.done.is_set():
                self.expired += 1
                waiter.expire()

    async def run(self) -> None:
        while True:
            now = anyio.current_time()
            self.expire_due(now)
            self._wake = anyio.Event()
            if self._heap:
                with anyio.move_on_after(self._heap[0][0] - now):
                    await self._wake.wait()
            else:
                await self._wake.wait()
