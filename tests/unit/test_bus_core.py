"""The bus in one process: direct, request/response, pub/sub, delivery guarantees,
backpressure, rate limits, policy routing, dead letters and input validation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Optional

import anyio
import pytest

import symbi
from symbi.bus import Bus, InProcTransport, MailboxDelivery, RateLimit, SecureMessage
from symbi.errors import (
    DeliveryError,
    InvalidArgument,
    PolicyDenied,
    RateLimited,
    RequestTimeout,
    RuntimeStateError,
)
from symbi.policy import PolicyEngine

pytestmark = pytest.mark.anyio


class Task(symbi.Message):
    text: str


class Blob(symbi.Message):
    data: bytes


class ListSink:
    """A real AuditSink: keeps every event in memory."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        self.events.append((event_type, agent_id, details))

    def types(self) -> list[str]:
        return [e[0] for e in self.events]


@asynccontextmanager
async def world(
    agents: tuple[str, ...] = ("alice", "bob"),
    *,
    mailbox: int = 64,
    full: str = "wait",
    **kw: Any,
) -> AsyncIterator[tuple[Bus, MailboxDelivery, dict[str, list[Any]]]]:
    inbox: dict[str, list[Any]] = {a: [] for a in agents}
    async with anyio.create_task_group() as tg:
        d = MailboxDelivery(mailbox_size=mailbox, full=full)  # type: ignore[arg-type]
        d.bind(tg)
        bus = Bus(**kw)
        bus.set_local_delivery(d)
        for a in agents:
            bus.register_agent(a)

            async def fn(msg: Any, sender: Optional[str], a: str = a) -> Any:
                inbox[a].append((msg, sender))
                if isinstance(msg, Task) and msg.text == "boom":
                    raise ValueError("boom!")
                if isinstance(msg, Task) and msg.text.startswith("sleep"):
                    await anyio.sleep(float(msg.text.split()[1]))
                return Task(text=msg.text.upper()) if isinstance(msg, Task) else None

            d.add_agent(a, fn)
        try:
            async with bus:
                yield bus, d, inbox
        finally:
            d.close()
            tg.cancel_scope.cancel()


async def settle(cond: Any, timeout: float = 2.0) -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await anyio.sleep(0.005)


async def test_direct_send_delivers_once_with_sender() -> None:
    async with world() as (bus, _d, inbox):
        mid = await bus.send(Task(text="hi"), sender="alice", to="bob", timeout=1)
        assert len(mid) == 32
        await settle(lambda: inbox["bob"])
        assert inbox["bob"] == [(Task(text="hi"), "alice")]
        assert bus.stats.sent == 1 and bus.stats.delivered == 1
        assert bus.stats.single_signed == 1  # idle: signed alone


async def test_runtime_sender_is_none_for_the_agent() -> None:
    async with world() as (bus, _d, inbox):
        await bus.send(Task(text="x"), sender=None, to="bob", timeout=1)
        await settle(lambda: inbox["bob"])
        assert inbox["bob"][0][1] is None
        assert bus.runtime_id.startswith("symbi.runtime.")


async def test_request_response_and_handler_errors() -> None:
    async with world() as (bus, _d, _inbox):
        assert await bus.request(Task(text="hi"), sender="alice", to="bob", timeout=1) == Task(
            text="HI"
        )
        with pytest.raises(ValueError, match="boom!"):
            await bus.request(Task(text="boom"), sender="alice", to="bob", timeout=1)
        assert bus.stats.replies == 2


async def test_request_timeout_then_late_reply_is_dropped_and_counted() -> None:
    async with world() as (bus, _d, _inbox):
        with pytest.raises(RequestTimeout) as ei:
            await bus.request(Task(text="sleep 0.3"), sender="alice", to="bob", timeout=0.1)
        assert ei.value.recipient == "bob"
        assert bus.stats.request_timeouts == 1
        await settle(lambda: bus.stats.late_replies == 1)


async def test_publish_subscribe_with_wildcards() -> None:
    async with world(("alice", "bob", "carol")) as (bus, _d, _inbox):
        seen: dict[str, list[tuple[str, str]]] = {"bob": [], "carol": []}

        def collect(who: str) -> Any:
            async def h(msg: Task, meta: SecureMessage) -> None:
                seen[who].append((msg.text, meta.recipient))

            return h

        bus.subscribe("alerts.*", collect("bob"), subscriber="bob")
        sub = bus.subscribe("alerts.>", collect("carol"), subscriber="carol")
        await bus.publish("alerts.security", Task(text="a"), sender="alice", timeout=1)
        await bus.publish("alerts.security.high", Task(text="b"), sender="alice", timeout=1)
        await bus.publish("other", Task(text="c"), sender="alice", timeout=1)
        await settle(lambda: len(seen["carol"]) == 2 and len(seen["bob"]) == 1)
        assert seen["bob"] == [("a", "alerts.security")]
        assert sorted(seen["carol"]) == [("a", "alerts.security"), ("b", "alerts.security.high")]
        await sub.unsubscribe()
        await bus.publish("alerts.x", Task(text="d"), sender="alice", timeout=1)
        await settle(lambda: len(seen["bob"]) == 2)
        assert len(seen["carol"]) == 2


class DropAcks(InProcTransport):
    """A real transport that loses the first ``n`` acks after the recipient handled the
    message: the sender times out and retries the same envelope."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.requests = 0

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        self.requests += 1
        ack = await super().request(subject, data, timeout=timeout)
        if subject.startswith("symbi.agent.") and self.n > 0:
            self.n -= 1
            await anyio.sleep(timeout)  # the ack never arrives
            raise DeliveryError("ack lost", recipient=subject, reason="timeout")
        return ack


async def test_exactly_once_under_lost_acks() -> None:
    t = DropAcks(2)
    async with world(transport=t, ack_timeout=0.05, retry_backoff=0.01) as (bus, _d, inbox):
        await bus.send(Task(text="once"), sender="alice", to="bob", timeout=2)
        await settle(lambda: inbox["bob"])
        await anyio.sleep(0.05)
        assert inbox["bob"] == [(Task(text="once"), "alice")]
        assert bus.stats.retries == 2 and bus.stats.duplicates == 2
        assert t.requests == 3


async def test_retries_exhausted_dead_letters_and_raises() -> None:
    t = DropAcks(100)
    sink = ListSink()
    async with world(
        transport=t, ack_timeout=0.03, retry_attempts=3, retry_backoff=0.01, audit=sink
    ) as (bus, _d, inbox):
        with pytest.raises(DeliveryError) as ei:
            await bus.send(Task(text="x"), sender="alice", to="bob", timeout=0.5)
        assert "retries exhausted" in bus.dead_letters[0].reason
        assert ei.value.recipient == "bob"
        assert len(inbox["bob"]) == 1  # it did arrive, once; only the acks were lost
        assert "bus.dead_letter" in sink.types()


async def test_unknown_agent_goes_to_dead_letters() -> None:
    async with world() as (bus, _d, _inbox):
        with pytest.raises(DeliveryError) as ei:
            await bus.send(Task(text="x"), sender="alice", to="nobody", timeout=0.5)
        assert ei.value.reason == "unknown recipient"
        (dl,) = bus.dead_letters
        assert dl.recipient == "nobody" and dl.message == Task(text="x")
        assert dl.message_type.endswith("test_bus_core.Task")


async def test_registered_agent_without_mailbox_is_dead_lettered() -> None:
    async with world() as (bus, _d, _inbox):
        bus.register_agent("ghost")  # identity, but no mailbox in the delivery
        with pytest.raises(DeliveryError, match="no local agent"):
            await bus.send(Task(text="x"), sender="alice", to="ghost", timeout=0.5)
        assert bus.dead_letters[-1].recipient == "ghost"


async def test_full_mailbox_fail_mode_raises_delivery_error() -> None:
    async with world(mailbox=1, full="fail") as (bus, _d, inbox):
        await bus.send(Task(text="sleep 0.3"), sender="alice", to="bob", timeout=1)
        await settle(lambda: inbox["bob"])  # the worker is busy with it
        await bus.send(Task(text="fills"), sender="alice", to="bob", timeout=1)
        with pytest.raises(DeliveryError) as ei:
            await bus.send(Task(text="over"), sender="alice", to="bob", timeout=1)
        assert ei.value.reason == "mailbox full"


async def test_full_mailbox_wait_mode_waits_then_delivers_or_times_out() -> None:
    async with world(mailbox=1, full="wait") as (bus, _d, inbox):
        await bus.send(Task(text="sleep 0.2"), sender="alice", to="bob", timeout=1)
        await settle(lambda: inbox["bob"])
        await bus.send(Task(text="fills"), sender="alice", to="bob", timeout=1)
        start = anyio.current_time()
        await bus.send(Task(text="waits"), sender="alice", to="bob", timeout=2)
        assert anyio.current_time() - start > 0.05
        await settle(lambda: len(inbox["bob"]) == 3)
        assert [m.text for m, _ in inbox["bob"]] == ["sleep 0.2", "fills", "waits"]
        await bus.send(Task(text="sleep 1"), sender="alice", to="bob", timeout=1)
        await settle(lambda: len(inbox["bob"]) == 4)
        await bus.send(Task(text="fills"), sender="alice", to="bob", timeout=1)
        with pytest.raises(DeliveryError) as ei:
            await bus.send(Task(text="late"), sender="alice", to="bob", timeout=0.2)
        assert ei.value.reason in ("mailbox full", "retries exhausted: timeout", "timeout")


async def test_full_mailbox_longer_than_the_ack_timeout_still_delivers_once() -> None:
    # In-process the recipient's wait for mailbox space runs inside the sender's attempt,
    # bounded by the sender's whole deadline (carried in the frame), not by ack_timeout:
    # one attempt waits and delivers, exactly once.
    async with world(mailbox=1, ack_timeout=0.05, retry_attempts=10) as (bus, _d, inbox):
        await bus.send(Task(text="sleep 0.3"), sender="alice", to="bob", timeout=1)
        await settle(lambda: inbox["bob"])
        await bus.send(Task(text="fills"), sender="alice", to="bob", timeout=1)
        start = anyio.current_time()
        await bus.send(Task(text="patient"), sender="alice", to="bob", timeout=2)
        assert anyio.current_time() - start > 0.1  # it waited for space, past ack_timeout
        assert bus.stats.retries == 0 and bus.stats.duplicates == 0
        await settle(lambda: len(inbox["bob"]) == 3)
        await anyio.sleep(0.05)
        assert [m.text for m, _ in inbox["bob"]] == ["sleep 0.3", "fills", "patient"]


async def test_rate_limit_fail_and_wait() -> None:
    async with world(
        rate_limits={"alice": RateLimit(rate=20, burst=2)}, rate_limit_mode="fail"
    ) as (
        bus,
        _d,
        _inbox,
    ):
        await bus.send(Task(text="1"), sender="alice", to="bob", timeout=1)
        await bus.send(Task(text="2"), sender="alice", to="bob", timeout=1)
        with pytest.raises(RateLimited) as ei:
            await bus.send(Task(text="3"), sender="alice", to="bob", timeout=1)
        assert ei.value.agent_id == "alice" and 0 < (ei.value.retry_after or 0) <= 0.05
        await bus.send(Task(text="bob is free"), sender="bob", to="alice", timeout=1)
    async with world(default_rate_limit=RateLimit(rate=50, burst=1)) as (bus, _d, _inbox):
        start = anyio.current_time()
        for i in range(4):
            await bus.send(Task(text=str(i)), sender="alice", to="bob", timeout=1)
        assert anyio.current_time() - start >= 0.05  # 3 waits of ~20 ms
        # the bucket is empty now: a wait longer than the timeout fails at once
        with pytest.raises(RateLimited):
            await bus.send(Task(text="x"), sender="alice", to="bob", timeout=0.001)
        assert bus.stats.rate_limited >= 3


def engine(*policies: str) -> PolicyEngine:
    return PolicyEngine(enforce_policies=True, policies=policies)


async def test_policy_denies_send_publish_and_subscribe() -> None:
    sink = ListSink()
    pol = engine(
        """policy bus {
            allow: [send] if resource != "bob" && !("secret" in context.data_labels)
            allow: [publish] if resource == "open.news"
            allow: [subscribe] if resource == "open.*"
        }"""
    )
    pol.audit_sink = sink
    async with world(policy=pol) as (bus, _d, inbox):
        with pytest.raises(PolicyDenied):
            await bus.send(Task(text="x"), sender="alice", to="bob", timeout=1)
        await bus.send(Task(text="ok"), sender="bob", to="alice", timeout=1)
        with pytest.raises(PolicyDenied):
            await bus.send(Task(text="x"), sender="bob", to="alice", timeout=1, labels=["secret"])
        await bus.publish("open.news", Task(text="n"), sender="alice", timeout=1)
        with pytest.raises(PolicyDenied):
            await bus.publish("closed.news", Task(text="n"), sender="alice", timeout=1)
        bus.subscribe("open.*", _noop, subscriber="bob")
        with pytest.raises(PolicyDenied):
            bus.subscribe("closed.>", _noop, subscriber="bob")
        assert bus.stats.policy_denied == 4
        assert [m.text for m, _ in inbox["alice"]] == ["ok"]
        assert inbox["bob"] == []
        assert sink.types().count("policy.denied") == 4


async def _noop(msg: Any, meta: SecureMessage) -> None:
    return None


async def test_policy_rate_limit_condition_is_honoured() -> None:
    pol = engine("policy rl { allow: [send, publish, subscribe]\n require: { rate_limit: 5 } }")
    async with world(policy=pol, rate_limit_mode="fail") as (bus, _d, _inbox):
        for _ in range(5):
            await bus.send(Task(text="x"), sender="alice", to="bob", timeout=1)
        with pytest.raises(RateLimited):
            await bus.send(Task(text="x"), sender="alice", to="bob", timeout=1)


async def test_oversized_and_malformed_inputs() -> None:
    async with world(max_message_bytes=1024) as (bus, _d, _inbox):
        with pytest.raises(InvalidArgument, match="over the bus limit") as ei:
            await bus.send(Blob(data=b"x" * 2000), sender="alice", to="bob", timeout=1)
        assert ei.value.argument == "msg"
        with pytest.raises(InvalidArgument, match=r"symbi\.Message"):
            await bus.send({"text": "hi"}, sender="alice", to="bob", timeout=1)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="timeout"):
            await bus.send(Task(text="x"), sender="alice", to="bob", timeout=0)
        with pytest.raises(InvalidArgument, match="no identity"):
            await bus.send(Task(text="x"), sender="mallory", to="bob", timeout=1)
        with pytest.raises(InvalidArgument, match="labels"):
            await bus.send(Task(text="x"), sender="alice", to="bob", timeout=1, labels="pii")
        with pytest.raises(InvalidArgument, match="wildcard"):
            await bus.publish("a.*", Task(text="x"), sender="alice", timeout=1)
        with pytest.raises(InvalidArgument, match="last token"):
            bus.subscribe("a.>.b", _noop, subscriber="bob")
        with pytest.raises(InvalidArgument):
            bus.register_agent("alice")  # already has an identity
        with pytest.raises(InvalidArgument):
            bus.register_agent("")


async def test_not_running_is_a_state_error() -> None:
    bus = Bus()
    bus.register_agent("a")
    with pytest.raises(RuntimeStateError):
        await bus.send(Task(text="x"), sender="a", to="a", timeout=1)
    assert bus.health().status == "down"


async def test_under_load_sends_are_batch_signed() -> None:
    async with world(mailbox=1000) as (bus, _d, inbox):
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(
                    lambda i=i: bus.send(Task(text=str(i)), sender="alice", to="bob", timeout=5)
                )
        await settle(lambda: len(inbox["bob"]) == 200)
        assert bus.stats.batches >= 1 and bus.stats.batched_messages >= 100
        assert sorted(int(m.text) for m, _ in inbox["bob"]) == list(range(200))
        assert bus.health().status == "ok"


async def test_unregistered_agent_stops_receiving() -> None:
    async with world() as (bus, _d, _inbox):
        bus.unregister_agent("bob")
        with pytest.raises(DeliveryError):
            await bus.send(Task(text="x"), sender="alice", to="bob", timeout=0.3)
        with pytest.raises(InvalidArgument):
            bus.unregister_agent(bus.runtime_id)


async def test_inproc_publish_reaches_exactly_the_current_subscribers() -> None:
    """Publishing follows every subscribe/unsubscribe (one, two, wildcard, none), and a
    closed transport or an oversized payload raises at the await."""
    t = InProcTransport(max_payload=64)
    await t.connect(timeout=1)
    got: list[tuple[str, bytes]] = []

    def collector(name: str) -> Any:
        async def h(inc: Any) -> None:
            got.append((name, inc.data))

        return h

    a = await t.subscribe("x.one", collector("a"), timeout=1)
    await t.publish("x.one", b"1", timeout=1)
    b = await t.subscribe("x.one", collector("b"), timeout=1)
    await t.publish("x.one", b"2", timeout=1)
    w = await t.subscribe("x.*", collector("w"), timeout=1)
    await t.publish("x.one", b"3", timeout=1)
    await t.publish("x.two", b"4", timeout=1)
    await b.unsubscribe()
    await w.unsubscribe()
    await t.publish("x.one", b"5", timeout=1)
    await a.unsubscribe()
    await t.publish("x.one", b"6", timeout=1)  # nobody listens: dropped, as NATS does
    assert got == [
        ("a", b"1"),
        ("a", b"2"),
        ("b", b"2"),
        ("a", b"3"),
        ("b", b"3"),
        ("w", b"3"),
        ("w", b"4"),
        ("a", b"5"),
    ]
    await t.subscribe("x.one", collector("c"), timeout=1)
    with pytest.raises(DeliveryError, match="byte limit"):
        await t.publish("x.one", b"y" * 65, timeout=1)
    await t.close(timeout=1)
    with pytest.raises(DeliveryError, match="not connected"):
        await t.publish("x.one", b"7", timeout=1)
    await t.connect(timeout=1)
    await t.publish("x.one", b"8", timeout=1)
    assert got[-1] == ("c", b"8")
