"""A blocking wrapper for scripts and notebooks.

    with symbi.sync.Runtime() as rt:
        print(rt.health())

The async runtime runs on an event loop in a helper thread (an anyio blocking portal), so
this works from plain scripts and from inside an already running loop, as in Jupyter,
where the runtime can also outlive a cell: ``rt = symbi.sync.Runtime().start()`` and, in a
later cell, ``rt.close()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from contextlib import AbstractContextManager, ExitStack
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .components import Component, HealthStatus
from .config import Config
from .errors import RuntimeStateError
from .runtime import Runtime as AsyncRuntime
from .runtime import RuntimeState

__all__ = ["Runtime"]

T = TypeVar("T")


class Runtime(AbstractContextManager["Runtime"]):
    """The blocking twin of :class:`symbi.Runtime`."""

    def __init__(
        self,
        config: Optional[Config] = None,
        *,
        components: Sequence[Component] = (),
        backend: str = "asyncio",
    ) -> None:
        # Build the async runtime now so bad arguments fail here, in the caller's thread.
        self._async = AsyncRuntime(config, components=components)
        self._backend = backend
        self._stack: Optional[ExitStack] = None
        self._portal: Optional[BlockingPortal] = None

    def start(self) -> Runtime:
        if self._stack is not None:
            raise RuntimeStateError("this runtime is already started; call close() first")
        stack = ExitStack()
        try:
            portal = stack.enter_context(start_blocking_portal(self._backend))
            stack.enter_context(portal.wrap_async_context_manager(self._async))
        except BaseException:
            stack.close()
            raise
        self._stack, self._portal = stack, portal
        return self

    def close(self) -> None:
        """Shut the runtime down (graceful, bounded by ``shutdown_grace_s``). Idempotent."""
        stack, self._stack, self._portal = self._stack, None, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        stack, self._stack, self._portal = self._stack, None, None
        if stack is not None:
            stack.__exit__(exc_type, exc, tb)

    def _require_portal(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeStateError(
                "the runtime is not running; use `with symbi.sync.Runtime() as rt:`"
            )
        return self._portal

    # ------------------------------------------------------------ passthrough
    @property
    def config(self) -> Config:
        return self._async.config

    @property
    def state(self) -> RuntimeState:
        return self._async.state

    @property
    def runtime(self) -> AsyncRuntime:
        """The async runtime inside, for code that runs on its loop."""
        return self._async

    def health(self) -> HealthStatus:
        return self._require_portal().call(self._async.health)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(async_runtime, *args)`` on the runtime's loop and return its result."""
        return self._require_portal().call(fn, self._async, *args)
