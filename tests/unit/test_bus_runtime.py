"""The runtime's messaging goes through the secure bus: every rt.send / rt.request /
rt.publish and every ctx.send between agents is policy-checked, sealed (Ed25519-signed by
its sender, AES-256-GCM-encrypted for its recipient) and opened before it reaches a
mailbox. A tapping transport (the real in-process transport, recording what crosses it)
shows that only ciphertext travels."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import symbi
from symbi.bus import InProcTransport, SecureMessage
from symbi.errors import (
    DeliveryError,
    PolicyDenied,
    RateLimited,
    RequestTimeout,
    SignatureError,
)

pytestmark = pytest.mark.anyio


class Ask(symbi.Message):
    text: str


class Note(symbi.Message):
    text: str
    secret: str = ""


class Echo(symbi.Agent):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str | None]] = []

    @symbi.handler
    async def on_ask(self, msg: Ask, ctx: symbi.Context) -> Ask:
        if msg.text == "slow":
            await anyio.sleep(0.5)
        return Ask(text=msg.text.upper())

    @symbi.handler
    async def on_note(self, msg: Note, ctx: symbi.Context) -> None:
        self.seen.append((msg.text, ctx.sender))


class Relay(symbi.Agent):
    """Forwards each Ask to the agent named in it, as itself."""

    @symbi.handler
    async def on_ask(self, msg: Ask, ctx: symbi.Context) -> Ask:
        target, _, text = msg.text.partition(":")
        reply = await ctx.request(target, Ask(text=text), timeout=2)
        await ctx.send(Note(text=f"relayed {text}", secret="s3cr3t-relay"), to=target)
        assert isinstance(reply, Ask)
        return reply


class Tap(InProcTransport):
    """The in-process transport, keeping a copy of every frame that crosses it."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[str, bytes]] = []

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        self.frames.append((subject, data))
        return await super().request(subject, data, timeout=timeout)

    async def publish(self, subject: str, data: bytes, *, timeout: float) -> None:
        self.frames.append((subject, data))
        await super().publish(subject, data, timeout=timeout)


async def test_agents_talk_through_sealed_envelopes_only() -> None:
    tap = Tap()
    async with symbi.Runtime(transport=tap) as rt:
        sealed: list[bytes] = []
        rt.bus.add_wiretap(sealed.append)
        echo = await rt.spawn(Echo, name="echo")
        relay = await rt.spawn(Relay, name="relay")
        # by name or by id, from the runtime, then agent to agent inside a handler
        assert await rt.request("relay", Ask(text="echo:hi"), timeout=5) == Ask(text="HI")
        mid = await rt.send(Note(text="direct", secret="s3cr3t-direct"), to=echo.id, timeout=5)
        assert len(mid) == 32
        with anyio.fail_after(5):
            while len(rt._host._rec(echo.id).agent.seen) < 2:  # type: ignore[attr-defined]
                await anyio.sleep(0.01)
        seen = rt._host._rec(echo.id).agent.seen  # type: ignore[attr-defined]
        assert ("relayed hi", relay.id) in seen and ("direct", None) in seen

        # 2 requests, 2 replies, 2 notes: every one sealed, none in the clear. Requests
        # and notes cross the transport as those very envelopes; replies to a requester
        # in this process are opened in place.
        envs = [SecureMessage.from_wire(e) for e in sealed]
        assert len(envs) == 6
        crossed = [d for subject, d in tap.frames if subject.startswith("symbi.agent.")]
        assert len(crossed) == 4 and set(crossed) <= set(sealed)
        for env in envs:
            assert b"s3cr3t" not in env.wire and b"hi" not in env.encrypted_payload.lower()
            assert len(env.signature) == 64 and len(env.nonce) == 12
        senders = {e.sender for e in envs}
        assert {relay.id, echo.id, rt.bus.runtime_id} <= senders
        # the relay's note is signed with the relay's own key and opens only for echo
        note = next(e for e in envs if e.sender == relay.id and e.recipient == echo.id)
        assert rt.bus.stats.sent == 4 and rt.bus.stats.rejected == 0
        with pytest.raises(symbi.errors.DecryptError):
            await rt.bus.open(note, recipient=relay.id)
        assert rt.bus.stats.rejected == 1  # and audited


async def test_tampered_envelope_is_rejected_raised_and_audited(tmp_path: Any) -> None:
    class Flip(InProcTransport):
        armed = False

        async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
            if self.armed and subject.startswith("symbi.agent."):
                data = data[:-70] + bytes([data[-70] ^ 1]) + data[-69:]
            return await super().request(subject, data, timeout=timeout)

    flip = Flip()
    cfg = symbi.Config.from_dict({"security": {"audit_storage": str(tmp_path / "audit")}})
    async with symbi.Runtime(cfg, transport=flip) as rt:
        echo = await rt.spawn(Echo, name="echo")
        flip.armed = True
        with pytest.raises((SignatureError, symbi.errors.DecryptError)):
            await rt.send(Note(text="x"), to=echo.id, timeout=2)
        flip.armed = False
        assert rt._host._rec(echo.id).agent.seen == []  # type: ignore[attr-defined]
        assert rt.bus.stats.rejected == 1
        assert rt.audit is not None
        await rt.audit.flush(timeout=5)
        rejected = rt.audit.query(type="bus.rejected")
        assert len(rejected) == 1 and rejected[0].agent_id == echo.id


async def test_data_flow_policy_denies_labelled_messages_per_recipient() -> None:
    async with symbi.Runtime() as rt:
        rt.policy.register(
            """
            policy no_pii_out {
                deny: [send] if "pii" in context.data_labels && resource.attrs.name == "vendor"
            }
            """
        )
        vendor = await rt.spawn(Echo, name="vendor")
        clerk = await rt.spawn(Echo, name="clerk")
        with pytest.raises(PolicyDenied) as ei:
            await rt.send(Note(text="ssn"), to="vendor", labels=["pii"], timeout=2)
        assert "no_pii_out" in str(ei.value.decision)
        await rt.send(Note(text="ssn"), to="clerk", labels=["pii"], timeout=2)
        await rt.send(Note(text="hello"), to="vendor", timeout=2)
        vendor_seen = rt._host._rec(vendor.id).agent.seen  # type: ignore[attr-defined]
        clerk_seen = rt._host._rec(clerk.id).agent.seen  # type: ignore[attr-defined]
        with anyio.fail_after(5):
            while not (clerk_seen and vendor_seen):
                await anyio.sleep(0.01)
        # the unlabelled note reached the vendor; the denied one never did
        assert vendor_seen == [("hello", None)]
        assert clerk_seen == [("ssn", None)]
        assert rt.bus.stats.policy_denied == 1


async def test_publish_reaches_agent_and_runtime_subscribers() -> None:
    async with symbi.Runtime() as rt:
        a = await rt.spawn(Echo, name="orders", topics=["orders.>"])
        b = await rt.spawn(Echo, name="eu-only")
        rt.subscribe("orders.*.eu", "eu-only")
        got: list[tuple[Note, SecureMessage]] = []

        async def audit_feed(msg: Note, meta: SecureMessage) -> None:
            got.append((msg, meta))

        rt.subscribe("orders.created.*", audit_feed)
        await rt.publish("orders.created.eu", Note(text="o1"), sender="orders", timeout=2)
        await rt.publish("orders.deleted.us", Note(text="o2"), timeout=2)
        with anyio.fail_after(5):
            while not (
                len(rt._host._rec(a.id).agent.seen) == 2  # type: ignore[attr-defined]
                and rt._host._rec(b.id).agent.seen  # type: ignore[attr-defined]
                and got
            ):
                await anyio.sleep(0.01)
        assert sorted(t for t, _ in rt._host._rec(a.id).agent.seen) == ["o1", "o2"]  # type: ignore[attr-defined]
        assert rt._host._rec(b.id).agent.seen == [("o1", a.id)]  # type: ignore[attr-defined]
        ((msg, meta),) = got
        assert msg == Note(text="o1") and meta.sender == a.id and meta.kind == "topic"
        assert b"o1" not in meta.wire


async def test_topic_copy_an_agent_cannot_take_is_dead_lettered() -> None:
    async with symbi.Runtime() as rt:
        a = await rt.spawn(Echo, name="echo", topics=["alerts"])

        class Unknown(symbi.Message):
            n: int

        await rt.publish("alerts", Unknown(n=1), timeout=2)
        with anyio.fail_after(5):
            while not rt.dead_letters:
                await anyio.sleep(0.01)
        (dl,) = rt.dead_letters
        assert dl.recipient == a.id and dl.message == Unknown(n=1) and "alerts" in dl.reason


async def test_subscription_refused_by_policy_fails_the_spawn() -> None:
    async with symbi.Runtime() as rt:
        rt.policy.register('policy no_secrets { deny: [subscribe] if resource == "secrets.>" }')
        with pytest.raises(PolicyDenied):
            await rt.spawn(Echo, name="snoop", topics=["secrets.>"])
        assert rt.agents() == []
        await rt.spawn(Echo, name="snoop", topics=["public.>"])  # the name is free again


async def test_request_timeout_late_reply_and_terminated_recipient() -> None:
    async with symbi.Runtime() as rt:
        a = await rt.spawn(Echo, name="echo")
        with pytest.raises(RequestTimeout):
            await rt.request(a.id, Ask(text="slow"), timeout=0.1)
        with anyio.fail_after(3):  # the late reply arrives, is dropped and counted
            while rt.status().late_replies < 1:
                await anyio.sleep(0.01)
        assert rt.status().request_timeouts == 1
        await rt.terminate(a.id)
        with pytest.raises(DeliveryError):
            await rt.send(Ask(text="late"), to=a.id, timeout=0.5)
        assert rt.dead_letters[-1].recipient == a.id
        assert rt.health().components["bus"].status == "ok"


async def test_rate_limit_from_config_fails_fast() -> None:
    cfg = symbi.Config.from_dict({"bus": {"rate_limit": 5, "rate_limit_mode": "fail"}})
    async with symbi.Runtime(cfg) as rt:
        a = await rt.spawn(Echo, name="echo")

        for _ in range(5):  # 5 msgs/s with a burst of 5: these pass at once
            await rt.send(Note(text="n"), to=a.id, timeout=2)
        with pytest.raises(RateLimited) as ei:
            await rt.send(Note(text="n"), to=a.id, timeout=2)
        assert ei.value.retry_after > 0 and ei.value.agent_id == rt.bus.runtime_id


class Boom(symbi.Message):
    text: str


class Picky(Echo):
    @symbi.handler
    async def on_boom(self, msg: Boom, ctx: symbi.Context) -> None:
        raise ValueError(f"cannot take {msg.text}")


async def test_request_many_answers_in_order_through_sealed_batches() -> None:
    async with symbi.Runtime() as rt:
        sealed: list[bytes] = []
        rt.bus.add_wiretap(sealed.append)
        a = await rt.spawn(Echo, name="a")
        await rt.spawn(Echo, name="b")
        texts = [f"secret-{i}" for i in range(300)]
        to = ["a" if i % 3 else "b" for i in range(300)]  # names and ids both resolve
        to[0] = a.id
        got = await rt.request_many(to, [Ask(text=t) for t in texts], timeout=10)
        assert got == [Ask(text=t.upper()) for t in texts]
        # 300 requests and 300 replies, each its own envelope, none in the clear; the
        # requests share one batch signature, each carrying its proof.
        envs = [SecureMessage.from_wire(e) for e in sealed]
        assert len(envs) == 600
        assert all(b"secret" not in e.wire and b"SECRET" not in e.wire for e in envs)
        requests = [e for e in envs if e.sender == rt.bus.runtime_id]
        assert len(requests) == 300 and len({e.id for e in envs}) == 600
        assert len({e.signature for e in requests}) == 1
        assert rt.bus.stats.requests == 300 and rt.bus.stats.sent == 300
        assert rt.status().tasks_completed == 300


async def test_request_many_reports_each_failure_in_place() -> None:
    async with symbi.Runtime() as rt:
        await rt.spawn(Picky, name="clerk")
        vendor = await rt.spawn(Echo, name="vendor")
        rt.policy.register(f'policy no_vendor {{ deny: [send] if resource == "{vendor.id}" }}')
        msgs: list[symbi.Message] = [
            Ask(text="ok"),
            Boom(text="x"),
            Ask(text="to vendor"),
            Ask(text="nobody"),
            Note(text="no reply"),
            Ask(text="slow"),  # last: mail to clerk queued behind it would time out too
        ]
        to = ["clerk", "clerk", "vendor", "nobody", "clerk", "clerk"]
        out = await rt.request_many(to, msgs, timeout=0.3, return_exceptions=True)
        assert out[0] == Ask(text="OK")
        assert isinstance(out[1], ValueError) and "cannot take x" in str(out[1])
        assert isinstance(out[2], PolicyDenied)
        assert isinstance(out[3], DeliveryError) and out[3].reason == "unknown recipient"
        assert out[4] is None  # a handler that returns nothing answers None
        assert isinstance(out[5], RequestTimeout)
        assert [d.recipient for d in rt.dead_letters] == ["nobody"]
        assert rt.bus.stats.policy_denied == 1 and rt.bus.stats.request_timeouts == 1
        # Without return_exceptions the first failure is raised once all have settled.
        with pytest.raises(ValueError, match="cannot take y"):
            await rt.request_many("clerk", [Ask(text="a"), Boom(text="y")], timeout=2)


async def test_request_many_refuses_bad_arguments() -> None:
    async with symbi.Runtime() as rt:
        await rt.spawn(Echo, name="a")
        bad: list[tuple[Any, Any]] = [
            ("a", Ask(text="not a list")),
            ("a", [Ask(text="x"), "not a message"]),
            (["a"], [Ask(text="1"), Ask(text="2")]),  # lengths differ
            ([None], [Ask(text="1")]),
            (42, [Ask(text="1")]),
        ]
        for to, msgs in bad:
            with pytest.raises(symbi.errors.InvalidArgument):
                await rt.request_many(to, msgs, timeout=1)
        with pytest.raises(symbi.errors.InvalidArgument):
            await rt.request_many("a", [Ask(text="x")], timeout=-1)
        assert await rt.request_many("a", [], timeout=1) == []


@pytest.mark.parametrize("full_mailbox", ["wait", "fail"])
async def test_request_many_larger_than_the_mailbox(full_mailbox: str) -> None:
    """A batch bigger than the recipient's mailbox waits for room, or (``fail``) the
    overflow is refused with DeliveryError and dead-lettered; nothing is lost."""
    cfg = symbi.Config().replace(
        runtime=symbi.RuntimeConfig(message_buffer_size=16, full_mailbox=full_mailbox)
    )
    async with symbi.Runtime(cfg) as rt:
        await rt.spawn(Echo, name="echo")
        msgs = [Ask(text=f"m{i}") for i in range(300)]
        out = await rt.request_many("echo", msgs, timeout=10, return_exceptions=True)
        answered = [x for x in out if isinstance(x, Ask)]
        refused = [x for x in out if isinstance(x, DeliveryError)]
        assert len(answered) + len(refused) == 300
        assert [a.text for a in answered] == sorted(
            (a.text for a in answered), key=lambda t: int(t[1:])
        )
        if full_mailbox == "wait":
            assert not refused and not rt.dead_letters
        else:
            assert 16 <= len(answered) < 300
            assert all(e.reason == "mailbox full" for e in refused)
            assert len(rt.dead_letters) == len(refused)


async def test_request_many_across_chunks_keeps_order_and_refusals_in_place() -> None:
    """A batch larger than one sealing chunk (4096) still answers in order, and a
    message the agent has no handler for is refused in place and dead-lettered."""
    async with symbi.Runtime() as rt:
        await rt.spawn(Echo, name="a")
        await rt.spawn(Picky, name="b")
        n = 5000
        msgs: list[symbi.Message] = [Ask(text=f"m{i}") for i in range(n)]
        msgs[4500] = Boom(text="nobody handles this on a")
        to = ["a" if i % 2 else "b" for i in range(n)]
        to[4500] = "a"
        out = await rt.request_many(to, msgs, timeout=30, return_exceptions=True)
        assert isinstance(out[4500], DeliveryError) and out[4500].reason == "no handler"
        assert [d.recipient for d in rt.dead_letters] == [rt._host.resolve("a")]
        assert out[:4500] + out[4501:] == [Ask(text=f"M{i}") for i in range(n) if i != 4500]
        assert rt.bus.stats.requests == n and rt.status().tasks_completed == n - 1


async def test_request_many_sends_no_chunk_after_its_deadline() -> None:
    """Chunks after the batch's deadline are not sent: each of their messages raises
    RequestTimeout to the sender, and no agent handles them."""
    handled: list[int] = []

    class Slow(symbi.Agent):
        @symbi.handler
        async def on_ask(self, msg: Ask, ctx: symbi.Context) -> Ask:
            handled.append(int(msg.text))
            if msg.text == "0":  # holds up the first chunk past the deadline
                await anyio.sleep(0.5)
            return msg

    async with symbi.Runtime() as rt:
        await rt.spawn(Slow, name="slow")
        n = 4096 + 100  # one full chunk, then the rest
        out = await rt.request_many(
            "slow", [Ask(text=str(i)) for i in range(n)], timeout=0.2, return_exceptions=True
        )
        assert all(isinstance(x, RequestTimeout) for x in out[4096:])
        assert rt.bus.stats.request_timeouts == sum(isinstance(x, RequestTimeout) for x in out)
        with anyio.fail_after(10):  # let what was accepted be handled, late
            while rt.status().mailbox_depth or len(handled) < 2:
                await anyio.sleep(0.05)
        assert handled and max(handled) < 4096


class _Counted:
    """A transport subscription that tells its transport when it ends."""

    def __init__(self, inner: Any, live: set[str]) -> None:
        self._inner, self._live = inner, live

    @property
    def subject(self) -> str:
        return str(self._inner.subject)

    async def unsubscribe(self) -> None:
        self._live.discard(self.subject)
        await self._inner.unsubscribe()


class Listening(InProcTransport):
    """The in-process transport, keeping the set of subjects subscribed now."""

    def __init__(self) -> None:
        super().__init__()
        self.live: set[str] = set()

    async def subscribe(self, subject: str, handler: Any, *, timeout: float) -> Any:
        sub = await super().subscribe(subject, handler, timeout=timeout)
        self.live.add(subject)
        return _Counted(sub, self.live)


async def test_many_spawns_listen_soon_and_terminated_agents_stop_listening() -> None:
    """Agents spawned in a row are all subscribed in the background soon after, with no
    send forcing it; a terminated agent's subscriptions are dropped in the background."""
    t = Listening()
    async with symbi.Runtime(transport=t) as rt:
        ids = [(await rt.spawn(Echo, name=f"e{i}")).id for i in range(300)]
        with anyio.fail_after(5):
            while not all(f"symbi.agent.{a}" in t.live for a in ids):
                await anyio.sleep(0.01)
        assert all(f"symbi.keys.{a}" in t.live for a in ids)
        for a in ids[:100]:
            await rt.terminate(a)
        with anyio.fail_after(5):
            while any(f"symbi.agent.{a}" in t.live for a in ids[:100]):
                await anyio.sleep(0.01)
        assert not any(f"symbi.keys.{a}" in t.live for a in ids[:100])
        assert all(f"symbi.agent.{a}" in t.live for a in ids[100:])
        got = await rt.request(ids[150], Ask(text="still here"), timeout=2)
        assert got == Ask(text="STILL HERE")
