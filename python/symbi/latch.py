"""``Latch``: a one-shot event for the per-request hot paths.

Most request outcomes are set before anyone waits for them (a request answered within
the batch that sent it, a reply handed to a callback), so allocating an ``anyio.Event``
(two objects, and a backend lookup) for each is wasted. A latch is a flag that makes its
event only when a ``wait`` would block.
"""

from __future__ import annotations

from typing import Callable, Optional

import anyio

__all__ = ["Latch"]


class Latch:
    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: Optional[anyio.Event] = None

    def set(self) -> None:
        if not self._set:
            self._set = True
            if self._event is not None:
                self._event.set()

    def is_set(self) -> bool:
        return self._set

    async def wait(self, event: Callable[[], anyio.Event] = anyio.Event) -> None:
        """Return once set. Unlike ``anyio.Event.wait`` this is not a checkpoint when the
        latch is already set. ``event`` makes the event to wait on: a caller that knows
        the backend's own Event class passes it, which skips anyio's backend lookup."""
        if self._set:
            return
        if self._event is None:
            self._event = event()
        await self._event.wait()
