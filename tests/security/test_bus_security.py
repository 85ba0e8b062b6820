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
from symbi.errors import DecryptError, ReplayError, SignatureError, SymbiError

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
@pytest.mark.parametrize("at", [0, 10, 40, 90, -70, -3])
async def test_tampered_envelope_in_transit_is_rejected_and_audited(at: int) -> None:
    sink = ListSink()
    async with world(Tampering(at), sink) as (bus, inbox):
        with pytest.raises((SignatureError, DecryptError, ReplayError)):
            await bus.send(Note(text="x"), sender="alice", to="bob", timeout=1)
        assert inbox["bob"] == []
        assert sink.rejected() and bus.stats.rejected >= 1


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


# A module-level capture for hypothesis (a fresh bus per example would be slow).
_STATE: dict[str, Any] = {}


def _state() -> tuple[Bus, ListSink, bytes]:
    if not _STATE:
        _STATE["v"] = anyio.run(_capture)
    return _STATE["v"]  # type: ignore[no-any-return]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flipping_any_byte_is_rejected(data: st.DataObject) -> None:
    bus, sink, env = _state()
    i = data.draw(st.integers(0, len(env) - 1), label="byte")
    mask = data.draw(st.integers(1, 255), label="xor")
    bad = bytearray(env)
    bad[i] ^= mask
    before = len(sink.rejected())

    async def attempt() -> None:
        with pytest.raises((SignatureError, DecryptError, ReplayError)):
            await bus.open(bytes(bad), recipient="bob")

    anyio.run(attempt)
    assert len(sink.rejected()) == before + 1


@settings(max_examples=100, deadline=None)
@given(junk=st.binary(max_size=400))
def test_garbage_is_rejected_cleanly(junk: bytes) -> None:
    bus, _sink, _env = _state()

    async def attempt() -> None:
        with pytest.raises(SymbiError):
            await bus.open(junk, recipient="bob")

    anyio.run(attempt)
    with pytest.raises(SignatureError):
        SecureMessage.from_wire(b"SYM1" + junk[:3])


async def _capture_batch() -> tuple[Bus, ListSink, list[bytes]]:
    """Envelopes of one batch signature (concurrent sends), all accepted by bob."""
    t = Recording()
    sink = ListSink()
    async with world(t, sink) as (bus, _inbox), anyio.create_task_group() as tg:
        for i in range(9):
            tg.start_soon(
                lambda i=i: bus.send(Note(text=str(i)), sender="alice", to="bob", timeout=2)
            )
    envs = [d for s, d in t.wire if s.startswith("symbi.agent.")]
    assert all(SecureMessage.from_wire(e).batch is not None for e in envs)
    return bus, sink, envs


_BATCH: dict[str, Any] = {}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flipping_any_byte_of_a_batch_signed_envelope_is_rejected(data: st.DataObject) -> None:
    if not _BATCH:
        _BATCH["v"] = anyio.run(_capture_batch)
    bus, sink, envs = _BATCH["v"]
    env = data.draw(st.sampled_from(envs), label="envelope")
    i = data.draw(st.integers(0, len(env) - 1), label="byte")
    bad = bytearray(env)
    bad[i] ^= data.draw(st.integers(1, 255), label="xor")
    before = len(sink.rejected())

    async def attempt() -> None:
        with pytest.raises((SignatureError, DecryptError, ReplayError)):
            await bus.open(bytes(bad), recipient="bob")

    anyio.run(attempt)
    assert len(sink.rejected()) == before + 1
