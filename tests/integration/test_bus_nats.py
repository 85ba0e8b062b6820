"""Two buses — two key rings sharing only public bundles, as two processes would —
talking through a real nats-server: direct, request/response and pub/sub, then the server
dies and every call fails with a typed error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Optional

import anyio
import pytest

import symbi
from symbi.bus import Bus, MailboxDelivery, NatsTransport, SecureMessage
from symbi.errors import DeliveryError, PolicyDenied, RemoteError, RequestTimeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


class Order(symbi.Message):
    item: str
    qty: int


@asynccontextmanager
async def node(
    url: str, agents: list[str], hold: Optional[anyio.Event] = None, **kw: Any
) -> AsyncIterator[tuple[Bus, dict[str, list[Any]]]]:
    """A bus with ``agents`` behind the real MailboxDelivery. Their handler doubles an
    Order's qty, raises for a negative one, and for item "hold" first waits for ``hold``."""
    inbox: dict[str, list[Any]] = {a: [] for a in agents}
    async with anyio.create_task_group() as tg:
        d = MailboxDelivery()
        d.bind(tg)
        bus = Bus(
            transport=NatsTransport(url, reconnect_attempts=2, reconnect_wait=0.1),
            ack_timeout=0.5,
            **kw,
        )
        bus.set_local_delivery(d)
        for a in agents:
            bus.register_agent(a)

            async def fn(msg: Any, sender: Optional[str], a: str = a) -> Any:
                inbox[a].append((msg, sender))
                if isinstance(msg, Order) and msg.qty < 0:
                    raise ValueError("negative quantity")
                if hold is not None and isinstance(msg, Order) and msg.item == "hold":
                    await hold.wait()
                return Order(item=msg.item, qty=msg.qty * 2)

            d.add_agent(a, fn)
        try:
            async with bus:
                await bus.flush(timeout=5)
                yield bus, inbox
        finally:
            d.close()
            tg.cancel_scope.cancel()


async def test_two_runtimes_exchange_sealed_messages(nats_server: Any) -> None:
    async with AsyncExitStack() as stack:
        a, _ = await stack.enter_async_context(node(nats_server.url, ["alice"]))
        b, b_inbox = await stack.enter_async_context(node(nats_server.url, ["bob"]))
        with pytest.raises(symbi.errors.InvalidArgument):
            a.bundle("bob")  # nothing shared up front

        mid = await a.send(Order(item="widget", qty=3), sender="alice", to="bob", timeout=5)
        assert b_inbox["bob"] and b_inbox["bob"][0] == (Order(item="widget", qty=3), "alice")
        assert a.bundle("bob") == b.bundle("bob")  # pinned on first use
        assert len(mid) == 32 and a.stats.key_lookups == 1 and b.stats.key_lookups == 1

        reply = await a.request(Order(item="bolt", qty=5), sender="alice", to="bob", timeout=5)
        assert reply == Order(item="bolt", qty=10)
        with pytest.raises(RemoteError, match="negative quantity") as ei:
            await a.request(Order(item="bolt", qty=-1), sender="alice", to="bob", timeout=5)
        assert ei.value.error_type == "builtins.ValueError"
        # the runtime itself (sender=None) can talk to remote agents too
        assert await b.request(Order(item="r", qty=1), sender=None, to="alice", timeout=5) == Order(
            item="r", qty=2
        )

        got: list[tuple[Order, SecureMessage]] = []

        async def on_event(msg: Order, meta: SecureMessage) -> None:
            got.append((msg, meta))

        b.subscribe("orders.>", on_event, subscriber="bob")
        await b.flush(timeout=5)
        await a.publish("orders.created.eu", Order(item="gear", qty=1), sender="alice", timeout=5)
        with anyio.fail_after(5):
            while not got:
                await anyio.sleep(0.01)
        msg, meta = got[0]
        assert msg == Order(item="gear", qty=1)
        assert meta.sender == "alice" and meta.kind == "topic"
        assert meta.recipient == "orders.created.eu"
        assert b"gear" not in meta.wire


async def test_request_timeout_across_nats_and_the_late_reply_is_dropped(
    nats_server: Any,
) -> None:
    hold = anyio.Event()
    async with AsyncExitStack() as stack:
        a, _ = await stack.enter_async_context(node(nats_server.url, ["alice"]))
        b, b_inbox = await stack.enter_async_context(node(nats_server.url, ["bob"], hold))
        # The handler holds until released, so the timeout alone decides; 2 s leaves room
        # for the key lookup and the delivery ack on a loaded machine.
        with anyio.fail_after(10), pytest.raises(RequestTimeout) as ei:
            await a.request(Order(item="hold", qty=1), sender="alice", to="bob", timeout=2.0)
        assert ei.value.recipient == "bob" and ei.value.timeout == 2.0
        assert b_inbox["bob"] == [(Order(item="hold", qty=1), "alice")]
        assert a.stats.request_timeouts == 1 and a.stats.late_replies == 0
        hold.set()  # the handler finishes only now, after the requester gave up
        with anyio.fail_after(10):
            while a.stats.late_replies < 1:
                await anyio.sleep(0.01)
        assert b.stats.replies == 1 and a.stats.late_replies == 1
        # the late reply was dropped, not handed to a later request
        reply = await a.request(Order(item="next", qty=2), sender="alice", to="bob", timeout=5)
        assert reply == Order(item="next", qty=4)


async def test_killing_the_server_fails_every_call_with_typed_errors(nats_server: Any) -> None:
    async with AsyncExitStack() as stack:
        a, _ = await stack.enter_async_context(node(nats_server.url, ["alice"]))
        _b, b_inbox = await stack.enter_async_context(node(nats_server.url, ["bob"]))
        await a.send(Order(item="before", qty=1), sender="alice", to="bob", timeout=5)
        assert len(b_inbox["bob"]) == 1
        nats_server.kill()
        # fail_after only catches a hang; each call is bounded by its own timeout
        with anyio.fail_after(10), pytest.raises(DeliveryError) as ei:
            await a.send(Order(item="after", qty=1), sender="alice", to="bob", timeout=1.0)
        assert ei.value.recipient == "bob" and ei.value.message_id
        dead = a.dead_letters[-1]
        assert dead.recipient == "bob" and dead.id == ei.value.message_id
        with anyio.fail_after(10), pytest.raises(DeliveryError) as ei:
            await a.request(Order(item="after", qty=1), sender="alice", to="bob", timeout=1.0)
        assert ei.value.recipient == "bob"
        with anyio.fail_after(10), pytest.raises(DeliveryError):
            await a.publish("orders.x", Order(item="after", qty=1), sender="alice", timeout=1.0)
        assert a.health().status == "down"
        assert len(b_inbox["bob"]) == 1


async def test_flush_while_the_server_is_down_raises(nats_server: Any) -> None:
    async with node(nats_server.url, ["alice"]) as (a, _):
        await a.flush(timeout=5)
        nats_server.kill()
        with anyio.fail_after(10):
            while a.transport.connected:
                await anyio.sleep(0.01)
        # nats-py buffers while reconnecting; a flush must not report that as done
        with anyio.fail_after(10), pytest.raises(DeliveryError) as ei:
            await a.flush(timeout=1.0)
        assert ei.value.reason == "disconnected"


class Doubler(symbi.Agent):
    @symbi.handler
    async def on_order(self, msg: Order, ctx: symbi.Context) -> Order:
        return Order(item=msg.item, qty=msg.qty * 2)


class Caller(symbi.Agent):
    """Asks an agent of the other runtime, as itself; the id comes in the message."""

    @symbi.handler
    async def on_order(self, msg: Order, ctx: symbi.Context) -> Order:
        reply = await ctx.request(msg.item, Order(item="via-caller", qty=msg.qty), timeout=5)
        assert isinstance(reply, Order)
        return reply


async def test_two_runtimes_configured_for_nats_talk_agent_to_agent(nats_server: Any) -> None:
    cfg = symbi.Config.from_dict(
        {"runtime": {"mode": "distributed"}, "bus": {"nats_url": nats_server.url}}
    )
    async with symbi.Runtime(cfg) as left, symbi.Runtime(cfg) as right:
        assert left.bus.transport.name == "nats"
        doubler = await right.spawn(Doubler, name="doubler")
        caller = await left.spawn(Caller, name="caller")
        await right.bus.flush(timeout=5)
        await left.bus.flush(timeout=5)
        # the runtime asks its own agent, which asks the other runtime's agent by id
        got = await left.request("caller", Order(item=doubler.id, qty=21), timeout=10)
        assert got == Order(item="via-caller", qty=42)
        assert left.bus.stats.key_lookups >= 1  # the doubler's key came from the directory
        assert right.bus.bundle(caller.id) == left.bus.bundle(caller.id)  # pinned on use
        # an id that no runtime on the bus answers for is dead-lettered, not lost
        with pytest.raises(DeliveryError):
            await left.send(Order(item="x", qty=1), to="nobody-here", timeout=2)
        assert left.dead_letters[-1].recipient == "nobody-here"


class Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        self.events.append((event_type, agent_id, details))

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [d for t, _a, d in self.events if t == event_type]


class Deny:
    """A policy denying the (principal, action, resource) triples in ``rules``."""

    def __init__(self, rules: set[tuple[str, str, str]]) -> None:
        self.rules = rules
        self.seen: list[tuple[str, str, str]] = []

    def enforce(self, req: Any) -> None:
        who = req.principal if isinstance(req.principal, str) else req.principal.id
        what = req.resource if isinstance(req.resource, str) else req.resource.id
        self.seen.append((who, req.action, what))
        if (who, req.action, what) in self.rules:
            raise PolicyDenied(f"denied {who} {req.action} {what}")


async def test_the_receiving_runtime_enforces_its_policy_on_remote_senders(
    nats_server: Any,
) -> None:
    """A permissive runtime cannot push past the recipient's policy: direct messages,
    requests and topic copies from another runtime are checked where they arrive."""
    policy = Deny({("alice", "send", "bob"), ("alice", "publish", "t.x")})
    audit = Audit()
    async with AsyncExitStack() as stack:
        b, b_inbox = await stack.enter_async_context(
            node(nats_server.url, ["bob"], policy=policy, audit=audit)
        )
        a, _ = await stack.enter_async_context(node(nats_server.url, ["alice", "carol"]))
        with anyio.fail_after(10), pytest.raises(PolicyDenied, match="denied alice send bob"):
            await a.send(Order(item="no", qty=1), sender="alice", to="bob", timeout=5)
        with anyio.fail_after(10), pytest.raises(PolicyDenied):
            await a.request(Order(item="no", qty=1), sender="alice", to="bob", timeout=5)
        assert b_inbox["bob"] == []
        assert ("alice", "send", "bob") in policy.seen
        dead = [d for d in b.dead_letters if d.sender == "alice"]
        assert len(dead) == 2 and all("policy denied" in d.reason for d in dead)
        assert len([d for d in audit.of("bus.rejected") if d["reason"] == "policy"]) == 2
        # an allowed remote sender still gets through
        await a.send(Order(item="ok", qty=1), sender="carol", to="bob", timeout=5)
        assert b_inbox["bob"] == [(Order(item="ok", qty=1), "carol")]

        got: list[Order] = []

        async def on(msg: Order, meta: SecureMessage) -> None:
            got.append(msg)

        b.subscribe("t.>", on, subscriber="bob")
        await b.flush(timeout=5)
        await a.publish("t.x", Order(item="denied", qty=1), sender="alice", timeout=5)
        await a.publish("t.y", Order(item="allowed", qty=1), sender="alice", timeout=5)
        with anyio.fail_after(10):
            while not got or not any(
                d.recipient == "bob" and "t.x" in d.reason for d in b.dead_letters
            ):
                await anyio.sleep(0.01)
        assert got == [Order(item="allowed", qty=1)]
        assert ("alice", "publish", "t.x") in policy.seen


class _Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        self.events.append((event_type, agent_id, details))


async def test_envelopes_from_made_up_senders_do_not_stall_an_inbox(nats_server: Any) -> None:
    """A keyless NATS client that claims unknown senders and never answers key lookups
    cannot hold up a pinned sender: the junk is refused at once (and audited) while the
    made-up ids are looked up in the background."""
    import nats  # type: ignore[import-untyped]

    from symbi._core import BusKeyRing

    rogue = await nats.connect(nats_server.url)
    try:

        async def silent(_m: Any) -> None:
            pass

        await rogue.subscribe("symbi.keys.>", cb=silent)  # answers no key lookup
        await rogue.flush()
        sink = _Sink()
        async with AsyncExitStack() as stack:
            a, _ = await stack.enter_async_context(node(nats_server.url, ["alice"]))
            b, b_inbox = await stack.enter_async_context(node(nats_server.url, ["bob"], audit=sink))
            a.add_peer("bob", b.bundle("bob"))
            b.add_peer("alice", a.bundle("alice"))
            ring = BusKeyRing(30.0)
            ring.add_peer("bob", b.bundle("bob"))
            for i in range(8):
                ring.create_identity(f"ghost{i}")
                env = ring.seal(f"ghost{i}", "bob", "x", b"junk", False)
                await rogue.publish("symbi.agent.bob", env)
            await rogue.flush()
            await a.send(Order(item="legit", qty=1), sender="alice", to="bob", timeout=3)
            assert b_inbox["bob"] == [(Order(item="legit", qty=1), "alice")]
            with anyio.fail_after(5):
                while b.stats.rejected < 8:
                    await anyio.sleep(0.01)
            rejected = [d for t, _a, d in sink.events if t == "bus.rejected"]
            assert {f"ghost{i}" for i in range(8)} <= {
                g for d in rejected for g in (f"ghost{i}" for i in range(8)) if g in d["error"]
            }
            assert all(d["reason"] == "signature" for d in rejected)
    finally:
        await rogue.close()
