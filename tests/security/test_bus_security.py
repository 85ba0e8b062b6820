"""Bus security: tampering, replays, wrong recipients, and proof that the wire never
carries plaintext. Every rejection raises a typed error and is audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Optional

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import symbi
from symbi.bus import Bus, InProcTransport, MailboxDelivery, SecureMessage
from symbi.errors import DecryptError, DeliveryError, ReplayError, SignatureError, SymbiError

SECRET = "TOP-SECRET-launch-codes-0451"


class Note(symbi.Message):
    text: str
    blob: bytes = b""


class ListSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        self.events.append((event_type, agent_id, details))

    def rejected(self) -> list[str]:
        return [d["reason"] for t, _a, d in self.events if t == "bus.rejected"]


class Recording(InProcTransport):
    """Keeps every byte string that crosses the transport."""

    def __init__(self) -> None:
        super().__init__()
        self.wire: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes, *, timeout: float) -> None:
        self.wire.append((subject, data))
        await super().publish(subject, data, timeout=timeout)

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        self.wire.append((subject, data))
        return await super().request(subject, data, timeout=timeout)


class Tampering(InProcTransport):
    """Flips one byte of every direct envelope in transit."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    async def request(self, subject: str, data: bytes, *, timeout: float) -> bytes:
        if subject.startswith("symbi.agent.") and data:
            b = bytearray(data)
            b[self.at % len(b)] ^= 0x01
            data = bytes(b)
        return await super().request(subject, data, timeout=timeout)


@asynccontextmanager
async def world(
    transport: InProcTransport, sink: ListSink, **kw: Any
) -> AsyncIterator[tuple[Bus, dict[str, list[Any]]]]:
    inbox: dict[str, list[Any]] = {"alice": [], "bob": [], "carol": []}
    async with anyio.create_task_group() as tg:
        d = MailboxDelivery()
        d.bind(tg)
        bus = Bus(transport=transport, audit=sink, **kw)
        bus.set_local_delivery(d)
        for a in inbox:
            bus.register_agent(a)

            async def fn(msg: Any, sender: Optional[str], a: str = a) -> Any:
                inbox[a].append(msg)
                return Note(text="reply " + SECRET)

            d.add_agent(a, fn)
        try:
            async with bus:
                yield bus, inbox
        finally:
            d.close()
            tg.cancel_scope.cancel()


pytestmark_anyio = pytest.mark.anyio


@pytestmark_anyio
async def test_plaintext_never_crosses_the_wire() -> None:
    t = Recording()
    sink = ListSink()
    async with world(t, sink) as (bus, inbox):
        blob = SECRET.encode() * 3
        await bus.send(Note(text=SECRET, blob=blob), sender="alice", to="bob", timeout=1)
        reply = await bus.request(Note(text=SECRET), sender="alice", to="bob", timeout=1)
        assert reply == Note(text="reply " + SECRET)
        got: list[Any] = []

        async def h(msg: Any, meta: SecureMessage) -> None:
            got.append(msg)

        bus.subscribe("ops.*", h, subscriber="carol")
        await bus.publish("ops.launch", Note(text=SECRET), sender="alice", timeout=1)
        with anyio.fail_after(2):
            while not got:
                await anyio.sleep(0.005)
        assert inbox["bob"][0] == Note(text=SECRET, blob=blob)
    envelopes = [d for s, d in t.wire if not s.startswith("symbi.keys.")]
    assert len(envelopes) >= 4  # send, request, reply, publish
    encoded = msgspec.msgpack.encode(Note(text=SECRET))
    for data in envelopes:
        assert SECRET.encode() not in data
        assert SECRET[:12].encode() not in data
        assert encoded not in data
        meta = SecureMessage.from_wire(data)
        assert len(meta.signature) == 64 and len(meta.nonce) == 12
        assert SECRET.encode() not in meta.encrypted_payload


@pytestmark_anyio
@pytest.mark.parametrize(
    ("at", "error", "reason"),
    [
        (0, SignatureError, "signature"),  # magic: malformed
        (10, SignatureError, "signature"),  # id
        (40, DecryptError, "decrypt"),  # inside "bob": addressed to someone else
        (90, SignatureError, "signature"),  # content type
        (-70, SignatureError, "signature"),  # ciphertext
        (-3, SignatureError, "signature"),  # signature
    ],
)
async def test_tampered_envelope_in_transit_is_rejected_and_audited(
    at: int, error: type[SymbiError], reason: str
) -> None:
    sink = ListSink()
    async with world(Tampering(at), sink) as (bus, inbox):
        with pytest.raises(error):
            await bus.send(Note(text="x"), sender="alice", to="bob", timeout=1)
        assert inbox["bob"] == []
        assert sink.rejected() == [reason] and bus.stats.rejected == 1


async def _capture(**kw: Any) -> tuple[Bus, ListSink, bytes]:
    """A bus (stopped) and one envelope alice sent bob, already accepted by bob."""
    t = Recording()
    sink = ListSink()
    async with world(t, sink, **kw) as (bus, _inbox):
        await bus.send(Note(text="hello"), sender="alice", to="bob", timeout=1)
    env = next(d for s, d in t.wire if s.startswith("symbi.agent."))
    return bus, sink, env


@pytestmark_anyio
async def test_replay_is_rejected() -> None:
    bus, sink, env = await _capture()
    with pytest.raises(ReplayError) as ei:
        await bus.open(env, recipient="bob")
    assert ei.value.message_id == SecureMessage.from_wire(env).id
    assert sink.rejected()[-1] == "replay"


@pytestmark_anyio
async def test_stale_envelope_is_rejected_after_the_window() -> None:
    bus, sink, env = await _capture(replay_window_s=0.2)
    await anyio.sleep(0.3)
    with pytest.raises(ReplayError, match="replay window"):
        await bus.open(env, recipient="bob")
    assert sink.rejected()[-1] == "replay"


@pytestmark_anyio
async def test_wrong_recipient_is_rejected() -> None:
    bus, sink, env = await _capture()
    with pytest.raises(DecryptError, match=r"not .carol."):
        await bus.open(env, recipient="carol")
    assert sink.rejected()[-1] == "decrypt"


@pytestmark_anyio
async def test_a_direct_replay_through_the_transport_takes_no_effect() -> None:
    t = Recording()
    sink = ListSink()
    async with world(t, sink) as (bus, inbox):
        await bus.send(Note(text="pay 100"), sender="alice", to="bob", timeout=1)
        subject, env = next((s, d) for s, d in t.wire if s.startswith("symbi.agent."))
        assert await t.request(subject, env, timeout=1) == b"\x00"  # acked as a duplicate
        await anyio.sleep(0.05)
        assert inbox["bob"] == [Note(text="pay 100")]
        assert bus.stats.duplicates == 1


# Envelopes bob has never opened, for the byte-flipping properties: alice seals them for
# bob while bob's runtime is offline, so a flip can never pass as a replay of an accepted
# original. Each example takes a fresh one; refills are made in batches (a bus per example
# would be slow).
_POOLS: dict[bool, list[tuple[Bus, ListSink, bytes]]] = {True: [], False: []}


async def _seal_for_offline_bob(n: int, *, batch: bool) -> tuple[Bus, ListSink, list[bytes]]:
    """Bob's bus (never started: bob is offline) and ``n`` envelopes alice sealed for bob:
    concurrent sends share one batch signature, sequential ones are signed alone. The first
    is opened to show bob can open them (for a batch, later siblings are then checked
    against the verified proof); the rest bob has never seen."""
    t = InProcTransport()
    sink = ListSink()
    bob = Bus(transport=t, audit=sink)
    bob.register_agent("bob")
    alice = Bus(transport=t, retry_attempts=1)
    alice.register_agent("alice")
    alice.add_peer("bob", bob.bundle("bob"))
    bob.add_peer("alice", alice.bundle("alice"))
    envs: list[bytes] = []
    alice.add_wiretap(envs.append)

    async def one(i: int) -> None:
        with pytest.raises(DeliveryError):  # nobody answers for bob
            await alice.send(Note(text=f"{i:03d}"), sender="alice", to="bob", timeout=2)

    async with alice:
        if batch:
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
        else:
            for i in range(n):
                await one(i)
    # Equal lengths keep hypothesis's byte range the same across refills.
    assert len(envs) == n and len({len(e) for e in envs}) == 1
    assert all((SecureMessage.from_wire(e).batch is not None) == batch for e in envs)
    msg, meta = await bob.open(envs[0], recipient="bob")
    assert msg in [Note(text=f"{i:03d}") for i in range(n)] and meta.sender == "alice"
    assert sink.rejected() == []
    return bob, sink, envs[1:]


def _fresh_envelope(*, batch: bool) -> tuple[Bus, ListSink, bytes]:
    pool = _POOLS[batch]
    if not pool:
        # 16 fills a Merkle tree, so every batch proof (and envelope) has the same length.
        n = 16 if batch else 40
        bob, sink, envs = anyio.run(lambda: _seal_for_offline_bob(n, batch=batch))
        pool.extend((bob, sink, e) for e in envs)
    return pool.pop()


def _offline_bob() -> Bus:
    if not _POOLS[False]:
        _POOLS[False].append(_fresh_envelope(batch=False))
    return _POOLS[False][-1][0]


def _expected_rejection(env: bytes, i: int) -> tuple[type[SymbiError], ...]:
    """A flip in the recipient field (its length or name) may readdress the envelope,
    which is refused before the signature check (DecryptError); any other flip must fail
    the signature check or parsing (SignatureError)."""
    meta = SecureMessage.from_wire(env)
    # magic, version, kind, id, timestamp, sender length, sender (envelope.rs)
    start = 4 + 1 + 1 + 16 + 8 + 1 + len(meta.sender.encode())
    end = start + 2 + len(meta.recipient.encode())
    return (SignatureError, DecryptError) if start <= i < end else (SignatureError,)


def _flip_is_rejected(data: st.DataObject, *, batch: bool) -> None:
    bus, sink, env = _fresh_envelope(batch=batch)
    i = data.draw(st.integers(0, len(env) - 1), label="byte")
    bad = bytearray(env)
    bad[i] ^= data.draw(st.integers(1, 255), label="xor")
    before = len(sink.rejected())
    expected = _expected_rejection(env, i)

    async def attempt() -> None:
        with pytest.raises(expected) as ei:
            await bus.open(bytes(bad), recipient="bob")
        reason = "signature" if type(ei.value) is SignatureError else "decrypt"
        assert sink.rejected()[before:] == [reason]

    anyio.run(attempt)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flipping_any_byte_is_rejected(data: st.DataObject) -> None:
    _flip_is_rejected(data, batch=False)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flipping_any_byte_of_a_batch_signed_envelope_is_rejected(data: st.DataObject) -> None:
    _flip_is_rejected(data, batch=True)


@settings(max_examples=100, deadline=None)
@given(junk=st.binary(max_size=400))
def test_garbage_is_rejected_cleanly(junk: bytes) -> None:
    bus = _offline_bob()

    async def attempt() -> None:
        with pytest.raises(SymbiError):
            await bus.open(junk, recipient="bob")

    anyio.run(attempt)
    with pytest.raises(SignatureError):
        SecureMessage.from_wire(b"SYM1" + junk[:3])
