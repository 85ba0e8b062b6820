"""Agents in the autogen-core shape: a class with typed handlers, one per message type.

    class Task(symbi.Message):
        text: str

    class Echo(symbi.Agent):
        @symbi.handler
        async def on_task(self, msg: Task, ctx: symbi.Context) -> Task:
            return Task(text=msg.text.upper())

A plain ``async def fn(msg: Task, ctx) -> ...`` also makes an agent. Handlers are chosen by
the message's exact type, then by its nearest base class.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, TypeVar

from .errors import InvalidArgument
from .message import Message

if TYPE_CHECKING:
    from .resources import ResourceAccount

__all__ = ["Agent", "Context", "FunctionAgent", "handler"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_HANDLER_ATTR = "__symbi_handler__"


def handler(fn: F) -> F:
    """Mark an ``async def`` method as the handler of the message type its second
    parameter is annotated with."""
    probe: Any = fn  # checked without narrowing F
    if not inspect.iscoroutinefunction(probe):
        raise InvalidArgument(
            f"@handler needs an async def, {getattr(fn, '__qualname__', fn)!r} is not one",
            argument="fn",
            expected="async function",
            got=type(fn).__name__,
        )
    setattr(fn, _HANDLER_ATTR, True)
    return fn


def _message_type(fn: Callable[..., Any], skip_self: bool) -> type[Message]:
    params = list(inspect.signature(fn).parameters.values())
    if skip_self:
        params = params[1:]
    name = getattr(fn, "__qualname__", repr(fn))
    if not params:
        raise InvalidArgument(
            f"handler {name} takes no message parameter; declare `msg: YourMessage`",
            argument="handler",
            expected="(msg: Message, ctx: Context)",
        )
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:
        raise InvalidArgument(
            f"cannot resolve the annotations of handler {name}: {e}",
            argument="handler",
            expected="resolvable annotations",
        ) from None
    typ = hints.get(params[0].name)
    if not (isinstance(typ, type) and issubclass(typ, Message)):
        raise InvalidArgument(
            f"handler {name}: parameter {params[0].name!r} must be annotated with a "
            f"symbi.Message subclass, got {typ!r}",
            argument="handler",
            expected="a symbi.Message subclass annotation",
            got=typ,
        )
    return typ


class Context:
    """What a handler sees of the runtime while it handles one message."""

    def __init__(
        self,
        *,
        agent_id: str,
        agent_name: str,
        sender: Optional[str],
        account: ResourceAccount,
        runtime: Any,
    ) -> None:
        self.agent_id = agent_id
        self.agent_name = agent_name
        self.sender = sender
        self._account = account
        self._runtime = runtime

    async def send(
        self, msg: Message, *, to: str, timeout: float = 5.0, labels: Sequence[str] = ()
    ) -> str:
        """Send ``msg`` to agent ``to`` as this agent (signed with its key, encrypted for
        the recipient, policy-checked with ``labels``); returns the message id."""
        return await self._runtime.send(  # type: ignore[no-any-return]
            msg, to=to, timeout=timeout, sender=self.agent_id, labels=labels
        )

    async def request(
        self, to: str, msg: Message, *, timeout: float = 5.0, labels: Sequence[str] = ()
    ) -> Any:
        """Send ``msg`` as this agent and wait for the recipient handler's return value."""
        return await self._runtime.request(
            to, msg, timeout=timeout, sender=self.agent_id, labels=labels
        )

    async def publish(
        self, topic: str, msg: Message, *, timeout: float = 5.0, labels: Sequence[str] = ()
    ) -> str:
        """Publish ``msg`` on ``topic`` as this agent; returns the message id."""
        return await self._runtime.publish(  # type: ignore[no-any-return]
            topic, msg, timeout=timeout, sender=self.agent_id, labels=labels
        )

    @property
    def memory(self) -> Any:
        """This agent's memory (short-term, working, long-term, shared knowledge)."""
        return self._runtime.context.for_agent(self.agent_id)

    async def disk_io(self, nbytes: int, *, timeout: Optional[float] = None) -> None:
        """Account (and throttle to ``disk_io_mbps``) disk I/O the agent is about to do."""
        await self._account.disk_io(nbytes, timeout=timeout)

    async def network_io(self, nbytes: int, *, timeout: Optional[float] = None) -> None:
        """Account (and throttle to ``network_io_mbps``) network I/O the agent is about to do."""
        await self._account.network_io(nbytes, timeout=timeout)

    def charge_memory(self, nbytes: int, what: str = "allocation") -> None:
        """Account state the agent keeps; raises ResourceLimitExceeded past its cap."""
        self._account.charge_memory(nbytes, what)

    def release_memory(self, nbytes: int) -> None:
        self._account.release_memory(nbytes)


Handler = Callable[[Any, Context], Coroutine[Any, Any, Any]]


class Agent:
    """Base class of agents. Subclass it and mark handlers with :func:`handler`."""

    _handlers: ClassVar[dict[type[Message], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type[Message], str] = {}
        for base in reversed(cls.__mro__[1:]):
            table.update(getattr(base, "_handlers", {}))
        for attr, fn in vars(cls).items():
            if getattr(fn, _HANDLER_ATTR, False):
                typ = _message_type(fn, skip_self=True)
                if typ in table and table[typ] in vars(cls) and table[typ] != attr:
                    raise InvalidArgument(
                        f"{cls.__name__} has two handlers for {typ.__name__}: "
                        f"{table[typ]} and {attr}",
                        argument="handler",
                        expected="one handler per message type",
                    )
                table[typ] = attr
        cls._handlers = table

    def __init__(self) -> None:
        self.id = ""
        self.name = ""

    @classmethod
    def handled_types(cls) -> tuple[type[Message], ...]:
        return tuple(cls._handlers)

    def resolve(self, msg: Message) -> Optional[Handler]:
        """The handler for ``msg``: its exact type's, else its nearest base class's."""
        for typ in type(msg).__mro__:
            attr = self._handlers.get(typ)
            if attr is not None:
                bound: Handler = getattr(self, attr)
                return bound
        return None

    async def on_start(self) -> None:
        """Called once, while the agent is Initializing. Raise to fail it."""

    async def on_stop(self) -> None:
        """Called once, when the agent is terminated."""


class FunctionAgent(Agent):
    """An agent made from one ``async def fn(msg: SomeMessage, ctx)``."""

    def __init__(self, fn: Callable[[Any, Context], Awaitable[Any]]) -> None:
        super().__init__()
        if not inspect.iscoroutinefunction(fn):
            raise InvalidArgument(
                f"an agent function must be an async def, got {fn!r}",
                argument="agent",
                expected="an Agent subclass or an async function",
                got=type(fn).__name__,
            )
        self._fn = fn
        self._type = _message_type(fn, skip_self=False)

    def handled(self) -> type[Message]:
        return self._type

    def resolve(self, msg: Message) -> Optional[Handler]:
        return self._fn if isinstance(msg, self._type) else None
