"""A blocking wrapper for scripts and notebooks.

    with symbi.sync.Runtime() as rt:
        echo = rt.spawn(Echo, name="echo")
        print(rt.request(echo.id, Ping(text="hi"), timeout=5), rt.status())

Every method of :class:`symbi.Runtime` that an application calls has a blocking twin
here with the same arguments; anything else runs on the loop with ``rt.call(fn)``.

The async runtime runs on an event loop in a helper thread (an anyio blocking portal), so
this works from plain scripts and from inside an already running loop, as in Jupyter,
where the runtime can also outlive a cell: ``rt = symbi.sync.Runtime().start()`` and, in a
later cell, ``rt.close()``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Sequence
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar, Union

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .bus import Subscription
from .bus.types import DeadLetter, SecureMessage
from .components import Component, HealthStatus
from .config import Config
from .errors import InvalidArgument, RuntimeStateError
from .host import AgentFactory, AgentHandle, SystemStatus
from .lifecycle import AgentState
from .message import Message
from .resources import AgentUsage
from .runtime import Runtime as AsyncRuntime
from .runtime import RuntimeState

__all__ = ["Runtime"]

T = TypeVar("T")

#: The event loops anyio can run the runtime on (``trio`` needs the trio package).
_BACKENDS = ("asyncio", "trio")


class Runtime(AbstractContextManager["Runtime"]):
    """The blocking twin of :class:`symbi.Runtime`."""

    def __init__(
        self,
        config: Optional[Config] = None,
        *,
        components: Sequence[Component] = (),
        backend: str = "asyncio",
    ) -> None:
        if backend not in _BACKENDS:
            raise InvalidArgument(
                f"backend must be one of {list(_BACKENDS)} (the event loop the runtime runs "
                f"on), got {backend!r}",
                argument="backend",
                expected=" | ".join(repr(b) for b in _BACKENDS),
                got=backend,
            )
        if backend == "trio" and importlib.util.find_spec("trio") is None:
            raise InvalidArgument(
                "backend='trio' needs the trio package: pip install trio "
                "(or use the default backend='asyncio')",
                argument="backend",
                expected="trio installed",
                got=backend,
            )
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

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(async_runtime, *args)`` on the runtime's loop and return its result."""
        if not callable(fn):
            raise InvalidArgument(
                f"call() takes an async function fn(runtime, *args), got {type(fn).__name__}",
                argument="fn",
                expected="an async function",
                got=type(fn).__name__,
            )
        return self._require_portal().call(fn, self._async, *args)

    # Everything runs on the runtime's own loop thread, so its state is never touched from
    # two threads at once.
    def _await(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        return self._require_portal().call(partial(fn, *args, **kw))

    def _on_loop(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return self._require_portal().call(partial(fn, *args, **kw))

    # ------------------------------------------ the async runtime's API, blocking
    def health(self) -> HealthStatus:
        return self._on_loop(self._async.health)

    def status(self) -> SystemStatus:
        return self._on_loop(self._async.status)

    def spawn(self, agent: AgentFactory, **spec: Any) -> AgentHandle:
        return self._await(self._async.spawn, agent, **spec)

    def send(
        self,
        msg: Message,
        *,
        to: str,
        timeout: float = 5.0,
        sender: Optional[str] = None,
        labels: Sequence[str] = (),
    ) -> str:
        return self._await(
            self._async.send, msg, to=to, timeout=timeout, sender=sender, labels=labels
        )

    def request(
        self,
        to: str,
        msg: Message,
        *,
        timeout: float = 5.0,
        sender: Optional[str] = None,
        labels: Sequence[str] = (),
    ) -> Any:
        return self._await(
            self._async.request, to, msg, timeout=timeout, sender=sender, labels=labels
        )

    def request_many(
        self,
        to: Union[str, Sequence[str]],
        msgs: Sequence[Message],
        *,
        timeout: float = 5.0,
        sender: Optional[str] = None,
        labels: Sequence[str] = (),
        return_exceptions: bool = False,
    ) -> list[Any]:
        return self._await(
            self._async.request_many,
            to,
            msgs,
            timeout=timeout,
            sender=sender,
            labels=labels,
            return_exceptions=return_exceptions,
        )

    def run_task(
        self, to: str, msg: Message, *, timeout: float = 5.0, labels: Sequence[str] = ()
    ) -> Any:
        return self._await(self._async.run_task, to, msg, timeout=timeout, labels=labels)

    def run_tasks(
        self,
        to: Union[str, Sequence[str]],
        msgs: Sequence[Message],
        *,
        timeout: float = 5.0,
        labels: Sequence[str] = (),
        return_exceptions: bool = False,
    ) -> list[Any]:
        return self._await(
            self._async.run_tasks,
            to,
            msgs,
            timeout=timeout,
            labels=labels,
            return_exceptions=return_exceptions,
        )

    def publish(
        self,
        topic: str,
        msg: Message,
        *,
        timeout: float = 5.0,
        sender: Optional[str] = None,
        labels: Sequence[str] = (),
    ) -> str:
        return self._await(
            self._async.publish, topic, msg, timeout=timeout, sender=sender, labels=labels
        )

    def subscribe(
        self,
        pattern: str,
        target: Union[str, Callable[[Any, SecureMessage], Awaitable[None]]],
    ) -> Subscription:
        """Like ``symbi.Runtime.subscribe``; a function target runs on the runtime's loop."""
        return self._on_loop(self._async.subscribe, pattern, target)

    def state_of(self, agent: str) -> AgentState:
        return self._on_loop(self._async.state_of, agent)

    def usage(self, agent: str) -> AgentUsage:
        return self._on_loop(self._async.usage, agent)

    def agents(self) -> list[AgentHandle]:
        return self._on_loop(self._async.agents)

    def resume(self, agent: str, reason: str = "policy cleared") -> None:
        self._on_loop(self._async.resume, agent, reason)

    def terminate(self, agent: str, reason: str = "manual override") -> None:
        self._await(self._async.terminate, agent, reason)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return self._on_loop(lambda: list(self._async.dead_letters))
