"""The bus when something goes wrong: a wildcard reaching a denied topic, failing topic
handlers, rate limits played against each other, forged topic envelopes, a caller
cancelled mid-subscription, and handlers that are not async. Nothing is dropped
silently: each refused or failed copy is dead-lettered or rejected, and audited."""

from __future__ import annotations

import collections
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import symbi
from symbi.bus import Bus, InProcTransport, MailboxDelivery, RateLimit, SecureMessage
from symbi.bus.ratelimit import RateLimiter
from symbi.errors import InvalidArgument, RateLimited

pytestmark = pytest.mark.anyio


class Note(symbi.Message):
    text: str


class Other(symbi.Message):
    text: str


class ListSink:
    """A real AuditSink: keeps every event in memory."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        self.events.append((event_type, agent_id, details))

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [d for t, _a, d in self.events if t == event_type]


async def settle(cond: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await anyio.sleep(0.005)


async def _types(rt: symbi.Runtime) -> list[str]:
    assert rt.audit is not None
    await rt.audit.flush(timeout=5)
    return [e.event_type for e in rt.audit.query()]


# ---------------------------------------------------------------- policy at delivery
async def test_wildcard_subscription_gets_no_topic_the_policy_denies() -> None:
    async with symbi.Runtime() as rt:
        deny = rt.policy.register(
            'policy no_secrets { deny: [subscribe] if resource.id == "secrets.alerts" }'
        )
        got: list[tuple[str, str]] = []

        async def fn(msg: Note, meta: SecureMessage) -> None:
            got.append((meta.recipient, msg.text))

        spied: list[str] = []

        async def spy(msg: Note, ctx: symbi.Context) -> None:
            spied.append(msg.text)

        await rt.spawn(spy, name="spy")
        with pytest.raises(symbi.errors.PolicyDenied):
            rt.subscribe("secrets.alerts", "spy")
        rt.subscribe("secrets.*", fn)  # the pattern itself is allowed
        rt.subscribe(">", "spy")
        await rt.publish("secrets.alerts", Note(text="the secret"))
        await rt.publish("secrets.public", Note(text="public"))
        # copies are handled in publish order: a wrongly delivered secret would be first
        await settle(lambda: got and spied)
        assert got == [("secrets.public", "public")] and spied == ["public"]
        refused = [d for d in rt.dead_letters if d.message == Note(text="the secret")]
        assert sorted(d.recipient for d in refused) == sorted(
            [rt.bus.runtime_id, rt.agents()[0].id]
        )
        assert all("secrets.alerts" in d.reason and "policy" in d.reason for d in refused)
        types = await _types(rt)
        assert types.count("bus.dead_letter") == 2 and types.count("policy.denied") >= 2

        # A policy change takes effect for the very next copy, both ways.
        rt.policy.remove(deny)
        rt.policy.register('policy no_public { deny: [subscribe] if resource == "secrets.public" }')
        await rt.publish("secrets.public", Note(text="now denied"))
        await rt.publish("secrets.alerts", Note(text="now allowed"))
        await settle(lambda: len(got) == 2 and len(spied) == 2)
        assert got[1] == ("secrets.alerts", "now allowed") and spied[1] == "now allowed"
        assert [d.message for d in rt.dead_letters[-2:]] == [Note(text="now denied")] * 2


# ------------------------------------------------------------------ failing handlers
async def test_topic_handler_that_raises_or_times_out_is_dead_lettered() -> None:
    cfg = symbi.Config.from_dict({"bus": {"handler_timeout_s": 0.2}})
    async with symbi.Runtime(cfg) as rt:

        async def boom(msg: Note, meta: SecureMessage) -> None:
            raise RuntimeError("fn exploded")

        async def own_timeout(msg: Note, meta: SecureMessage) -> None:
            raise TimeoutError("its own")

        async def slow(msg: Note, meta: SecureMessage) -> None:
            await anyio.sleep(30)

        rt.subscribe("t.boom", boom)
        rt.subscribe("t.own", own_timeout)
        rt.subscribe("t.slow", slow)
        for t in ("t.boom", "t.own", "t.slow"):
            await rt.publish(t, Note(text=t))
        await settle(lambda: len(rt.dead_letters) == 3)
        by_topic = {d.message.text: d for d in rt.dead_letters if isinstance(d.message, Note)}
        assert "RuntimeError: fn exploded" in by_topic["t.boom"].reason
        assert "TimeoutError: its own" in by_topic["t.own"].reason  # not our deadline
        assert "timed out after 0.2s" in by_topic["t.slow"].reason
        assert all(d.recipient == rt.bus.runtime_id for d in by_topic.values())
        assert rt.bus.stats.handler_errors == 3
        assert (await _types(rt)).count("bus.dead_letter") == 3


# ------------------------------------------------------------------------ rate limits
class A(symbi.Message):
    x: int = 0


class B(symbi.Message):
    x: int = 0


async def _sink(msg: symbi.Message, ctx: symbi.Context) -> None:
    return None


def _type(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


async def test_alternating_message_types_do_not_refill_the_bucket() -> None:
    cfg = symbi.Config.from_dict({"bus": {"rate_limit_mode": "fail"}})
    async with symbi.Runtime(cfg) as rt:
        # One message per 100 s and per 50 s: a bucket of one token each.
        rt.policy.register(
            f'policy ra {{ allow: [send] if context.message_type == "{_type(A)}"\n'
            " require: { rate_limit: 0.01 } }"
        )
        rt.policy.register(
            f'policy rb {{ allow: [send] if context.message_type == "{_type(B)}"\n'
            " require: { rate_limit: 0.02 } }"
        )
        await rt.spawn(_sink, name="sink")
        await rt.send(A(), to="sink")
        for msg in (B(), A(), B()):
            with pytest.raises(RateLimited):
                await rt.send(msg, to="sink")


def test_rate_limiter_keeps_what_is_left_when_the_limit_changes() -> None:
    lim = RateLimiter({})
    wide, narrow = RateLimit(rate=0.001, burst=10), RateLimit(rate=0.001, burst=2)
    assert lim.take("a", wide) == 0.0  # 9 left
    assert lim.take("a", narrow) == 0.0  # capped at 2, one taken
    assert lim.take("a", narrow) == 0.0
    assert lim.take("a", narrow) > 0  # empty
    assert lim.take("a", wide) > 0  # a wider limit does not refill it either
    assert lim.take("b", narrow) == 0.0  # buckets stay per agent


async def test_the_strictest_policy_rate_limit_wins() -> None:
    cfg = symbi.Config.from_dict({"bus": {"rate_limit_mode": "fail"}})
    async with symbi.Runtime(cfg) as rt:
        rt.policy.register("policy general { allow: [send]\n require: { rate_limit: 1000 } }")
        rt.policy.register(
            f'policy strict {{ allow: [send] if context.message_type == "{_type(A)}"\n'
            " require: { rate_limit: 0.01 } }"
        )
        await rt.spawn(_sink, name="sink")
        await rt.send(A(), to="sink")
        with pytest.raises(RateLimited) as ei:
            await rt.send(A(), to="sink")
        assert (ei.value.retry_after or 0) > 10  # strict's 0.01/s, not general's 1000/s


async def test_a_malformed_rate_limit_in_any_allowing_policy_denies() -> None:
    async with symbi.Runtime() as rt:
        rt.policy.register("policy general { allow: [send]\n require: { rate_limit: 1000 } }")
        rt.policy.register('policy bad { allow: [send]\n require: { rate_limit: "fast" } }')
        await rt.spawn(_sink, name="sink")
        with pytest.raises(symbi.errors.PolicyDenied, match="rate_limit"):
            await rt.send(A(), to="sink")


# ---------------------------------------------------------- forged topic envelopes
@asynccontextmanager
async def bus_with(
    agents: tuple[str, ...] = ("alice", "bob"), **kw: Any
) -> AsyncIterator[tuple[Bus, MailboxDelivery]]:
    async with anyio.create_task_group() as tg:
        d = MailboxDelivery()
        d.bind(tg)
        bus = Bus(**kw)
        bus.set_local_delivery(d)
        for a in agents:
            bus.register_agent(a)
            d.add_agent(a, _noop_agent)
        try:
            async with bus:
                yield bus, d
        finally:
            d.close()
            tg.cancel_scope.cancel()


async def _noop_agent(msg: Any, sender: Any) -> None:
    return None


async def hello_on_t_x(bus: Bus) -> tuple[list[str], list[bytes]]:
    """bob follows t.x; alice publishes "hello" and bob has it. Returns what bob's handler
    got and the envelopes seen on the wire."""
    got: list[str] = []

    async def h(msg: Note, meta: SecureMessage) -> None:
        got.append(msg.text)

    envs: list[bytes] = []
    bus.add_wiretap(envs.append)
    bus.subscribe("t.x", h, subscriber="bob")
    await bus.flush()
    await bus.publish("t.x", Note(text="hello"), sender="alice", timeout=1)
    await settle(lambda: got == ["hello"])
    return got, envs


async def test_forged_and_stale_topic_envelopes_are_rejected_and_audited() -> None:
    sink = ListSink()
    async with bus_with(audit=sink, replay_window_s=0.3) as (bus, _d):
        got, envs = await hello_on_t_x(bus)
        forged = bytearray(envs[0])
        forged[-1] ^= 1
        await bus.transport.publish("symbi.topic.t.x", bytes(forged), timeout=1)
        assert bus.stats.rejected == 1
        assert [d["reason"] for d in sink.of("bus.rejected")] == ["signature"]
        await anyio.sleep(0.5)  # past the replay window: the original is stale now
        await bus.transport.publish("symbi.topic.t.x", envs[0], timeout=1)
        assert bus.stats.rejected == 2
        assert [d["reason"] for d in sink.of("bus.rejected")] == ["signature", "replay"]
        assert all(a == "bob" for t, a, _ in sink.events if t == "bus.rejected")
        assert got == ["hello"]


# ------------------------------------------------------ cancelled while subscribing
class _Tracked:
    """A transport subscription that tells its transport when it ends."""

    def __init__(self, inner: Any, live: collections.Counter[str]) -> None:
        self._inner, self._live = inner, live

    @property
    def subject(self) -> str:
        return str(self._inner.subject)

    async def unsubscribe(self) -> None:
        self._live[self.subject] -= 1
        await self._inner.unsubscribe()


class Gated(InProcTransport):
    """The in-process transport, where subscribing to ``held`` waits for ``gate`` (a slow
    server), counting the live subscriptions per subject."""

    def __init__(self) -> None:
        super().__init__()
        self.held = ""
        self.gate = anyio.Event()
        self.waiting = 0
        self.live: collections.Counter[str] = collections.Counter()

    async def subscribe(self, subject: str, handler: Any, *, timeout: float) -> Any:
        if subject == self.held:
            self.waiting += 1
            await self.gate.wait()
        sub = await super().subscribe(subject, handler, timeout=timeout)
        self.live[subject] += 1
        return _Tracked(sub, self.live)


async def test_a_caller_cancelled_mid_subscription_leaves_the_agent_reachable() -> None:
    t = Gated()
    async with bus_with(("alice",), transport=t) as (bus, d):
        got: list[Any] = []

        async def fn(msg: Any, sender: Any) -> None:
            got.append(msg)

        t.held = "symbi.keys.bob"  # bob's first subscription is made, the second hangs
        bus.register_agent("bob")
        d.add_agent("bob", fn)
        with anyio.move_on_after(0.1) as scope:  # the caller gives up meanwhile
            await bus.send(Note(text="a"), sender="alice", to="alice", timeout=5)
        assert scope.cancelled_caught
        await settle(lambda: t.waiting == 2)  # retried in the background
        t.gate.set()
        await settle(lambda: t.live["symbi.keys.bob"] == 1)
        # the half-made subscription was undone: bob listens once, not twice
        assert t.live["symbi.agent.bob"] == 1
        await bus.send(Note(text="b"), sender="alice", to="bob", timeout=5)
        await settle(lambda: got == [Note(text="b")])


async def test_flush_waits_for_a_subscribe_another_task_has_under_way() -> None:
    t = Gated()
    async with bus_with(("alice",), transport=t) as (bus, _d):
        await bus.flush(timeout=5)
        t.held = "symbi.keys.bob"
        bus.register_agent("bob")  # the background subscriber takes it, then waits
        await settle(lambda: t.waiting == 1)
        flushed = anyio.Event()

        async def flush() -> None:
            await bus.flush(timeout=5)
            flushed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(flush)
            await anyio.sleep(0.1)
            assert not flushed.is_set()  # bob is not listening yet
            t.gate.set()
        assert t.live["symbi.keys.bob"] == 1 and t.live["symbi.agent.bob"] == 1


async def test_subscriptions_made_for_an_agent_that_left_meanwhile_are_dropped() -> None:
    t = Gated()
    async with bus_with(("alice",), transport=t) as (bus, _d):
        t.held = "symbi.keys.bob"
        bus.register_agent("bob")
        await settle(lambda: t.waiting == 1)
        bus.unregister_agent("bob")  # while its subscriptions are being made
        t.gate.set()
        await settle(lambda: t.live["symbi.keys.bob"] == 0 == t.live["symbi.agent.bob"])
        await bus.flush(timeout=5)
        assert t.live["symbi.keys.bob"] == 0 == t.live["symbi.agent.bob"]
        assert "bob" not in bus._agent_subs


# ------------------------------------------------------------------ handler checks
async def test_subscribe_refuses_a_handler_that_is_not_async() -> None:
    async with symbi.Runtime() as rt:
        got: list[str] = []

        def plain(msg: Note, meta: SecureMessage) -> None:
            got.append(msg.text)

        for bad in (lambda m, meta: got.append(m), plain, functools.partial(plain)):
            with pytest.raises(InvalidArgument, match="async") as ei:
                rt.subscribe("t.x", bad)  # type: ignore[arg-type]
            assert ei.value.argument == "handler"

        async def tagged(tag: str, msg: Note, meta: SecureMessage) -> None:
            got.append(f"{tag}:{msg.text}")

        class Handler:
            async def __call__(self, msg: Note, meta: SecureMessage) -> None:
                got.append(f"obj:{msg.text}")

        rt.subscribe("t.p", functools.partial(tagged, "partial"))
        rt.subscribe("t.o", Handler())
        await rt.publish("t.p", Note(text="x"))
        await rt.publish("t.o", Note(text="y"))
        await settle(lambda: len(got) == 2)
        assert sorted(got) == ["obj:y", "partial:x"] and not rt.dead_letters


# ------------------------------------------------------- overlapping subscriptions
async def test_overlapping_subscriptions_of_one_subscriber_each_get_the_copy() -> None:
    """One envelope opens once per subscriber (a second open is a replay), yet each of its
    handlers whose pattern matches gets the copy; one handler or one agent gets it once."""
    seen: list[tuple[str, str]] = []

    def recorder(tag: str) -> Any:
        async def handler(msg: Note, meta: SecureMessage) -> None:
            seen.append((tag, msg.text))

        return handler

    class Reader(symbi.Agent):
        def __init__(self) -> None:
            super().__init__()
            self.got: list[str] = []

        @symbi.handler
        async def on_note(self, msg: Note, ctx: symbi.Context) -> None:
            self.got.append(msg.text)

    async with symbi.Runtime() as rt:
        reader = Reader()
        await rt.spawn(reader, name="reader", topics=["news.*", "news.>"])
        exact, wild = recorder("exact"), recorder("wild")
        rt.subscribe("news.today", exact)
        rt.subscribe("news.*", wild)
        rt.subscribe("news.>", wild)  # the same handler again: still one copy for it
        await rt.bus.flush(timeout=5)
        await rt.publish("news.today", Note(text="hello"), timeout=5)
        await settle(lambda: len(seen) >= 2 and reader.got)
        await anyio.sleep(0.1)  # any extra copy would have arrived by now
        assert sorted(seen) == [("exact", "hello"), ("wild", "hello")]
        assert reader.got == ["hello"]
        assert rt.dead_letters == []


# ------------------------------------------------------------ frames vs the transport
async def test_the_frame_limit_is_clamped_to_the_transport_max_payload() -> None:
    """A frame within max_message_bytes whose envelope would not fit the transport fails
    up front with the size error, not as a dead-lettered transport failure."""
    async with bus_with(transport=InProcTransport(max_payload=8192)) as (bus, _d):
        with pytest.raises(InvalidArgument, match="transport's max payload"):
            await bus.send(Note(text="x" * 7000), sender="alice", to="bob", timeout=5)
        with pytest.raises(InvalidArgument, match="transport's max payload"):
            await bus.publish("t.x", Note(text="x" * 7000), sender="alice", timeout=5)
        assert bus.dead_letters == []


class DropsBigReplies(InProcTransport):
    """The in-process transport refusing large payloads on reply subjects only (as a
    NATS server does past its max_payload)."""

    async def publish(self, subject: str, data: bytes, *, timeout: float) -> None:
        if subject.startswith("symbi.reply.") and len(data) > 4096:
            raise symbi.errors.DeliveryError(
                f"{len(data)} bytes is over max_payload", recipient=subject, reason="too-large"
            )
        await super().publish(subject, data, timeout=timeout)


async def test_a_reply_the_transport_refuses_reaches_the_requester_as_an_error() -> None:
    t = DropsBigReplies()
    async with anyio.create_task_group() as tg:
        d = MailboxDelivery()
        d.bind(tg)

        async def big(msg: Any, sender: Any) -> Note:
            return Note(text="r" * 8000)

        d.add_agent("bob", big)
        d.add_agent("alice", _noop_agent)
        server, client = Bus(transport=t), Bus(transport=t)
        server.set_local_delivery(d)
        client.set_local_delivery(d)
        server.register_agent("bob")
        client.register_agent("alice")
        try:
            async with server, client:
                await server.flush()
                await client.flush()
                # Not a RequestTimeout after the full 10 s: an error reply says why.
                with pytest.raises(symbi.errors.RemoteError, match="too large"):
                    await client.request(Note(text="q"), sender="alice", to="bob", timeout=10)
        finally:
            d.close()
            tg.cancel_scope.cancel()


# ------------------------------------------------------------ late and replayed copies
class Recording(InProcTransport):
    """The in-process transport, keeping what was published on reply subjects."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes, *, timeout: float) -> None:
        if subject.startswith("symbi.reply."):
            self.replies.append((subject, data))
        await super().publish(subject, data, timeout=timeout)


async def test_only_a_verified_late_reply_counts_and_garbage_or_replays_are_audited() -> None:
    t = Recording()
    sink = ListSink()
    hold = anyio.Event()
    async with anyio.create_task_group() as tg:
        d = MailboxDelivery()
        d.bind(tg)

        async def slow(msg: Any, sender: Any) -> Note:
            await hold.wait()
            return Note(text="late")

        d.add_agent("bob", slow)
        d.add_agent("alice", _noop_agent)
        server, client = Bus(transport=t), Bus(transport=t, audit=sink)
        server.set_local_delivery(d)
        client.set_local_delivery(d)
        server.register_agent("bob")
        client.register_agent("alice")
        try:
            async with server, client:
                await server.flush()
                await client.flush()
                with pytest.raises(symbi.errors.RequestTimeout):
                    await client.request(Note(text="q"), sender="alice", to="bob", timeout=0.5)
                hold.set()
                await settle(lambda: client.stats.late_replies == 1)
                subject, real = t.replies[0]
                assert sink.of("bus.rejected") == []
                await t.publish(subject, b"\x00garbage", timeout=1)
                await t.publish(subject, real, timeout=1)  # the same reply again
                await t.publish("symbi.reply.nosuchbus.1", real, timeout=1)
                assert client.stats.late_replies == 1
                reasons = [e["reason"] for e in sink.of("bus.rejected")]
                assert reasons == ["signature", "replay"]  # the foreign subject: not ours
                assert client.stats.rejected == 2
        finally:
            d.close()
            tg.cancel_scope.cancel()


async def test_a_replayed_topic_copy_is_rejected_and_audited() -> None:
    sink = ListSink()
    async with bus_with(audit=sink) as (bus, _d):
        got, envs = await hello_on_t_x(bus)
        await bus.transport.publish("symbi.topic.t.x", envs[0], timeout=1)
        assert [d["reason"] for d in sink.of("bus.rejected")] == ["replay"]
        assert bus.stats.rejected == 1
        await anyio.sleep(0.05)
        assert got == ["hello"]


# ------------------------------------------------------------- refused topic keys
class DenySubscribe:
    """A policy denying ``subscriber`` the ``subscribe`` action, allowing the rest."""

    def __init__(self, subscriber: str) -> None:
        self.subscriber = subscriber

    def enforce(self, req: Any) -> None:
        who = req.principal if isinstance(req.principal, str) else req.principal.id
        if who == self.subscriber and req.action == "subscribe":
            raise symbi.errors.PolicyDenied(f"{who} may not subscribe")


async def test_a_refused_topic_key_is_audited_and_not_asked_for_every_copy() -> None:
    t = InProcTransport()
    pub_sink, sub_sink = ListSink(), ListSink()
    async with anyio.create_task_group() as tg:
        d = MailboxDelivery()
        d.bind(tg)
        d.add_agent("alice", _noop_agent)
        d.add_agent("mallory", _noop_agent)
        pub = Bus(transport=t, audit=pub_sink, policy=DenySubscribe("mallory"))
        other = Bus(transport=t, audit=sub_sink)  # a permissive runtime
        pub.set_local_delivery(d)
        other.set_local_delivery(d)
        pub.register_agent("alice")
        other.register_agent("mallory")
        got: list[str] = []

        async def h(msg: Note, meta: SecureMessage) -> None:
            got.append(msg.text)

        try:
            async with pub, other:
                other.subscribe("t.x", h, subscriber="mallory")
                await other.flush()
                for i in range(3):
                    await pub.publish("t.x", Note(text=f"secret {i}"), sender="alice", timeout=1)
                await settle(lambda: other.stats.rejected == 3)
                refused = pub_sink.of("bus.topic_key_refused")
                assert len(refused) == 1  # asked once, not once per copy
                assert refused[0]["topic"] == "t.x" and refused[0]["requester"] == "mallory"
                assert [e["reason"] for e in sub_sink.of("bus.rejected")] == ["decrypt"] * 3
                assert got == []
        finally:
            d.close()
            tg.cancel_scope.cancel()


async def test_a_captured_topic_copy_is_a_replay_for_a_subscription_made_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from symbi.bus import bus as bus_module

    monkeypatch.setattr(bus_module, "_SUB_SKEW_S", 0.05, raising=False)  # keep the test short
    t = InProcTransport()
    sink = ListSink()
    captured: list[bytes] = []
    async with anyio.create_task_group() as tg:
        d = MailboxDelivery()
        d.bind(tg)
        bus = Bus(transport=t, audit=sink)
        bus.set_local_delivery(d)
        for a in ("alice", "bob", "carol"):
            bus.register_agent(a)
            d.add_agent(a, _noop_agent)
        bus.add_wiretap(captured.append)
        got: dict[str, list[str]] = {"bob": [], "carol": []}

        def on(who: str) -> Any:
            async def h(msg: Note, meta: SecureMessage) -> None:
                got[who].append(msg.text)

            return h

        try:
            async with bus:
                bus.subscribe("t.x", on("bob"), subscriber="bob")
                await bus.flush()
                await bus.publish("t.x", Note(text="once"), sender="alice", timeout=1)
                await settle(lambda: got["bob"] == ["once"])
                env = captured[-1]
                await anyio.sleep(0.2)  # past the skew allowance
                bus.subscribe("t.x", on("carol"), subscriber="carol")  # a new subscriber
                await bus.flush()
                rejected = bus.stats.rejected
                await t.publish("symbi.topic.t.x", env, timeout=1)  # the captured copy again
                await settle(lambda: bus.stats.rejected == rejected + 2)  # bob and carol
                assert got == {"bob": ["once"], "carol": []}
                replays = [e for e in sink.of("bus.rejected") if e["reason"] == "replay"]
                assert len(replays) == 2 and {e["message_id"] for e in replays} == {env[6:22].hex()}
                await bus.publish("t.x", Note(text="fresh"), sender="alice", timeout=1)
                await settle(lambda: got["carol"] == ["fresh"])
                assert got["bob"] == ["once", "fresh"]
        finally:
            d.close()
            tg.cancel_scope.cancel()
