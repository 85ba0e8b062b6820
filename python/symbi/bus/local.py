"""A small :class:`~symbi.bus.LocalDelivery`: bounded anyio mailboxes and one worker per
agent. The runtime uses its agent host instead; this one serves a standalone bus (and
the tests)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable, Literal, Optional

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import DeliveryError, InvalidArgument, RequestTimeout, RuntimeStateError
from ..message import Message
from .transport import check_timeout

__all__ = ["AgentFn", "MailboxDelivery"]

#: An agent: ``async fn(msg, sender) -> reply``.
AgentFn = Callable[[Any, Optional[str]], Awaitable[Any]]


class _Reply:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None


class _Box:
    __slots__ = ("fn", "recv", "send")

    def __init__(self, fn: AgentFn, size: int) -> None:
        self.fn = fn
        s, r = anyio.create_memory_object_stream[tuple[Any, Optional[str], Optional[_Reply]]](size)
        self.send: MemoryObjectSendStream[tuple[Any, Optional[str], Optional[_Reply]]] = s
        self.recv: MemoryObjectReceiveStream[tuple[Any, Optional[str], Optional[_Reply]]] = r


class MailboxDelivery:
    """Bounded mailboxes (``mailbox_size`` messages each). A full mailbox makes
    ``deliver`` wait up to its timeout (``full="wait"``) or fail at once (``"fail"``),
    raising DeliveryError(reason="mailbox full") either way; nothing is dropped."""

    def __init__(self, *, mailbox_size: int = 1024, full: Literal["wait", "fail"] = "wait"):
        if isinstance(mailbox_size, bool) or not isinstance(mailbox_size, int) or mailbox_size < 1:
            raise InvalidArgument(
                "mailbox_size must be an int >= 1",
                argument="mailbox_size",
                expected="int >= 1",
                got=mailbox_size,
            )
        if full not in ("wait", "fail"):
            raise InvalidArgument(
                "full must be 'wait' or 'fail'",
                argument="full",
                expected="'wait' | 'fail'",
                got=full,
            )
        self.mailbox_size = mailbox_size
        self.full = full
        self._boxes: dict[str, _Box] = {}
        self._tg: Optional[TaskGroup] = None
        self.handled = 0

    def bind(self, task_group: TaskGroup) -> None:
        """Run agent workers in ``task_group`` (existing and future agents)."""
        self._tg = task_group
        for agent, box in self._boxes.items():
            task_group.start_soon(self._worker, agent, box)

    def add_agent(self, agent_id: str, fn: AgentFn) -> None:
        if agent_id in self._boxes:
            raise InvalidArgument(
                f"agent {agent_id!r} already has a mailbox",
                argument="agent_id",
                expected="a new id",
                got=agent_id,
            )
        box = self._boxes[agent_id] = _Box(fn, self.mailbox_size)
        if self._tg is not None:
            self._tg.start_soon(self._worker, agent_id, box)

    def remove_agent(self, agent_id: str) -> None:
        """Close ``agent_id``'s mailbox; its worker ends after the queued messages."""
        box = self._boxes.pop(agent_id, None)
        if box is not None:
            box.send.close()

    def close(self) -> None:
        """Close every mailbox (workers end once their queues drain)."""
        for agent in list(self._boxes):
            self.remove_agent(agent)

    def depth(self, agent_id: str) -> int:
        box = self._boxes.get(agent_id)
        return 0 if box is None else box.send.statistics().current_buffer_used

    async def _worker(self, agent: str, box: _Box) -> None:
        async with box.recv:
            async for msg, sender, reply in box.recv:
                try:
                    value = await box.fn(msg, sender)
                except Exception as e:
                    if reply is not None:
                        reply.error = e
                else:
                    if reply is not None:
                        reply.value = value
                finally:
                    self.handled += 1
                    if reply is not None:
                        reply.done.set()

    async def deliver(
        self,
        msg: Message,
        to: str,
        *,
        sender: Optional[str],
        timeout: float,
        want_reply: bool,
    ) -> Optional[_Reply]:
        check_timeout(timeout)
        box = self._boxes.get(to)
        if box is None:
            raise DeliveryError(f"no local agent {to!r}", recipient=to, reason="unknown recipient")
        if self._tg is None:
            raise RuntimeStateError("MailboxDelivery is not bound to a task group; call bind()")
        reply = _Reply() if want_reply else None
        item = (msg, sender, reply)
        try:
            box.send.send_nowait(item)
        except anyio.WouldBlock:
            if self.full == "fail":
                raise DeliveryError(
                    f"agent {to!r} has a full mailbox ({self.mailbox_size} messages); retry "
                    "later or enlarge it",
                    recipient=to,
                    reason="mailbox full",
                ) from None
            try:
                with anyio.fail_after(timeout):
                    await box.send.send(item)
            except TimeoutError:
                raise DeliveryError(
                    f"agent {to!r} kept a full mailbox ({self.mailbox_size} messages) for "
                    f"{timeout:.3g}s; the message was not accepted",
                    recipient=to,
                    reason="mailbox full",
                ) from None
        return reply

    async def wait_reply(self, handle: Any, *, recipient: str, timeout: float) -> Any:
        if not isinstance(handle, _Reply):
            raise InvalidArgument(
                "handle must be what deliver(want_reply=True) returned",
                argument="handle",
                expected="a reply handle",
                got=type(handle).__name__,
            )
        with anyio.move_on_after(timeout):
            await handle.done.wait()
        if not handle.done.is_set():
            raise RequestTimeout(
                f"no reply from {recipient!r} within {timeout:.3g}s",
                recipient=recipient,
                timeout=timeout,
            )
        if handle.error is not None:
            raise handle.error
        return handle.value
