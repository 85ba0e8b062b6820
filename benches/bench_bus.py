"""The secure bus: plain in-process delivery, the secured pipeline (sign, encrypt,
verify, decrypt), crypto overhead per message, and end-to-end latency.

Peers run in the same process on the same messages:

- plain delivery: symbi's ``InProcTransport.publish`` to one subscriber against an
  ``asyncio.Queue`` producer/consumer pair (both hand over bytes; no crypto on either).
- secured pipeline: symbi's batch path (``seal_batch`` — one Ed25519 signature over a
  Merkle root per batch — then ``open_batch``: verify the root once, check replay,
  AES-256-GCM decrypt, all in Rust with the GIL released) against the same pipeline in a
  Python loop per message: PyNaCl (libsodium) Ed25519 sign + verify and ``cryptography``
  (OpenSSL) AES-256-GCM, under a pair key from X25519 + HKDF-SHA256 derived once per pair
  (as symbi caches it). msgspec encodes/decodes the messages on both sides. Outputs are
  checked equal before timing.
- crypto overhead per message: the idle path (one single-signed envelope sealed and
  opened) against the peer's per-message sign/encrypt/verify/decrypt.
- latency: ``bus.send`` (acked once in the mailbox) and ``bus.request`` (reply
  received) one at a time through a full Bus with its InProcTransport; p50/p99 in µs.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Optional

import anyio
import msgspec
import numpy as np
import pytest

import symbi
from conftest import size
from symbi._core import BusKeyRing
from symbi.bus import Bus, InProcTransport, MailboxDelivery
from symbi.bus.transport import Incoming

N_PLAIN = size(100_000, 20_000)
N_SECURE = size(50_000, 10_000)
N_LAT = size(5_000, 1_000)
BATCH = 1024


class Event(symbi.Message):
    kind: str
    seq: int
    body: str


def events(n: int) -> list[Event]:
    return [Event(kind="metric", seq=i, body=f"cpu=0.42 host=web-{i % 17}") for i in range(n)]


def _value_row(benchmark: Any, tag: Any, value: float, **info: Any) -> None:
    tag(value=value, **info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


# ----------------------------------------------------------------- plain in-process
PLAIN = {
    "metric": "plain in-process messages/s (bytes to one subscriber, no crypto)",
    "unit": "msgs/s",
    "items": N_PLAIN,
    "seed_target": "-",
    "goal": ">= 2x asyncio.Queue",
}


def plain_symbi(payloads: list[bytes]) -> int:
    async def main() -> int:
        t = InProcTransport()
        await t.connect(timeout=1)
        got: list[bytes] = []

        async def h(inc: Incoming) -> None:
            got.append(inc.data)

        await t.subscribe("symbi.agent.bob", h, timeout=1)
        pub = t.publish
        for p in payloads:
            await pub("symbi.agent.bob", p, timeout=5)
        return len(got)

    return asyncio.run(main())


def plain_queue(payloads: list[bytes]) -> int:
    async def main() -> int:
        q: asyncio.Queue[Optional[bytes]] = asyncio.Queue(maxsize=1024)
        got: list[bytes] = []

        async def consumer() -> None:
            while True:
                item = await q.get()
                if item is None:
                    return
                got.append(item)

        c = asyncio.create_task(consumer())
        for p in payloads:
            await q.put(p)
        await q.put(None)
        await c
        return len(got)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def plain_payloads() -> list[bytes]:
    return [msgspec.msgpack.encode(e) for e in events(N_PLAIN)]


def test_plain_symbi(benchmark, tag, plain_payloads):
    assert plain_symbi(plain_payloads) == plain_queue(plain_payloads) == N_PLAIN
    tag(role="symbi", **PLAIN)
    benchmark.pedantic(plain_symbi, args=(plain_payloads,), rounds=3)


def test_plain_peer_queue(benchmark, tag, plain_payloads):
    tag(role="peer", peer="asyncio.Queue(1024) producer/consumer", **PLAIN)
    benchmark.pedantic(plain_queue, args=(plain_payloads,), rounds=3)


# ---------------------------------------------------------------- secured pipeline
SECURE = {
    "metric": "secured messages/s (signed, encrypted, verified, decrypted)",
    "unit": "msgs/s",
    "items": N_SECURE,
    "seed_target": "100k msgs/s",
    "goal": ">= 100k/s and >= 10x the peer",
}
CT = "bench_bus.Event"
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Event)


def symbi_rings() -> tuple[BusKeyRing, BusKeyRing]:
    a, b = BusKeyRing(), BusKeyRing()
    b.add_peer("alice", a.create_identity("alice"))
    a.add_peer("bob", b.create_identity("bob"))
    return a, b


def symbi_pipeline(msgs: list[Event], rings: tuple[BusKeyRing, BusKeyRing]) -> list[Event]:
    a, b = rings
    out: list[Event] = []
    for i in range(0, len(msgs), BATCH):
        chunk = msgs[i : i + BATCH]
        envs = a.seal_batch("alice", [("bob", CT, _enc.encode(m), False) for m in chunk])
        for r in b.open_batch("bob", envs):
            assert not isinstance(r, BaseException)
            out.append(_dec.decode(r[6]))
    return out


class PeerPipeline:
    """The same pipeline per message in Python: PyNaCl Ed25519 + cryptography AES-GCM."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        from nacl.signing import SigningKey

        self.sign_key = SigningKey.generate()
        self.verify_key = self.sign_key.verify_key
        a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        shared_a = a.exchange(b.public_key())
        shared_b = b.exchange(a.public_key())
        assert shared_a == shared_b

        def kdf(shared: bytes) -> bytes:
            return HKDF(hashes.SHA256(), 32, b"symbi.bus.v1", b"pair").derive(shared)

        self.tx = AESGCM(kdf(shared_a))
        self.rx = AESGCM(kdf(shared_b))
        self.seen: set[bytes] = set()

    def run(self, msgs: list[Event]) -> list[Event]:
        out = []
        urandom = os.urandom
        for m in msgs:
            header = b"SYM1" + urandom(16) + time.time_ns().to_bytes(8, "big") + b"alice|bob"
            nonce = urandom(12)
            ct = self.tx.encrypt(nonce, _enc.encode(m), header)
            signed = self.sign_key.sign(header + nonce + ct)
            # receiver
            body = self.verify_key.verify(signed)
            hl = len(header)  # the receiver parses the same fixed layout
            h, n, c = body[:hl], body[hl : hl + 12], body[hl + 12 :]
            mid = h[4:20]
            if mid in self.seen:
                raise ValueError("replay")
            self.seen.add(mid)
            out.append(_dec.decode(self.rx.decrypt(n, c, h)))
        return out


@pytest.fixture(scope="module")
def secure_msgs() -> list[Event]:
    return events(N_SECURE)


def test_secure_symbi(benchmark, tag, secure_msgs):
    pytest.importorskip("nacl")
    assert symbi_pipeline(secure_msgs, symbi_rings()) == PeerPipeline().run(secure_msgs)
    tag(role="symbi", **SECURE)
    benchmark.pedantic(symbi_pipeline, setup=lambda: ((secure_msgs, symbi_rings()), {}), rounds=3)


def test_secure_peer(benchmark, tag, secure_msgs):
    pytest.importorskip("nacl")
    pytest.importorskip("cryptography")
    tag(
        role="peer",
        peer="PyNaCl Ed25519 + cryptography AES-GCM per message (Python loop)",
        **SECURE,
    )
    benchmark.pedantic(lambda: PeerPipeline().run(secure_msgs), rounds=3)


# ------------------------------------------------------------ crypto overhead (idle)
OVERHEAD = {
    "metric": "crypto overhead per message, idle path (seal + open one envelope)",
    "unit": "us",
    "better": "lower",
    "seed_target": "< 1 ms",
    "goal": "< 50 us",
}
N_OVER = size(5_000, 2_000)


def overhead_symbi(msgs: list[Event]) -> float:
    a, b = symbi_rings()
    payloads = [_enc.encode(m) for m in msgs]
    t0 = time.perf_counter()
    for p in payloads:
        b.open("bob", a.seal("alice", "bob", CT, p))
    return (time.perf_counter() - t0) / len(msgs) * 1e6


def overhead_peer(msgs: list[Event]) -> float:
    peer = PeerPipeline()
    t0 = time.perf_counter()
    peer.run(msgs)
    # subtract nothing: the peer's loop also encodes/decodes (a few hundred ns)
    return (time.perf_counter() - t0) / len(msgs) * 1e6


def test_overhead_symbi(benchmark, tag):
    msgs = events(N_OVER)
    _value_row(
        benchmark, tag, min(overhead_symbi(msgs) for _ in range(3)), role="symbi", **OVERHEAD
    )


def test_overhead_peer(benchmark, tag):
    pytest.importorskip("nacl")
    msgs = events(N_OVER)
    _value_row(
        benchmark,
        tag,
        min(overhead_peer(msgs) for _ in range(3)),
        role="peer",
        peer="PyNaCl + cryptography, per message",
        **OVERHEAD,
    )


# ------------------------------------------------------------------------ latency
def latencies(kind: str) -> np.ndarray:
    async def main() -> np.ndarray:
        lat = np.empty(N_LAT)
        async with anyio.create_task_group() as tg:
            d = MailboxDelivery(mailbox_size=1024)
            d.bind(tg)
            bus = Bus()
            bus.set_local_delivery(d)
            bus.register_agent("alice")
            bus.register_agent("bob")

            async def echo(msg: Any, sender: Optional[str]) -> Any:
                return msg

            d.add_agent("bob", echo)
            async with bus:
                m = Event(kind="ping", seq=0, body="x" * 64)
                for i in range(N_LAT + 200):
                    t0 = time.perf_counter()
                    if kind == "direct":
                        await bus.send(m, sender="alice", to="bob", timeout=5)
                    else:
                        assert await bus.request(m, sender="alice", to="bob", timeout=5) == m
                    if i >= 200:  # warm-up
                        lat[i - 200] = (time.perf_counter() - t0) * 1e6
            d.close()
            tg.cancel_scope.cancel()
        return lat

    return anyio.run(main)


_LAT: dict[str, np.ndarray] = {}


@pytest.mark.parametrize("kind", ["direct", "request/response"])
@pytest.mark.parametrize("pct", [50, 99])
def test_latency_symbi(benchmark, tag, kind, pct):
    if kind not in _LAT:
        _LAT[kind] = latencies("direct" if kind == "direct" else "request")
    _value_row(
        benchmark,
        tag,
        float(np.percentile(_LAT[kind], pct)),
        role="symbi",
        metric=f"bus latency p{pct}, {kind} (signed, encrypted, in-process)",
        unit="us",
        better="lower",
        seed_target="< 10 ms",
        goal="p99 < 1 ms",
    )


# ------------------------------------------------------------- end to end (info row)
N_E2E = size(20_000, 4_000)
SENDERS = 200


def end_to_end() -> float:
    async def main() -> float:
        async with anyio.create_task_group() as tg:
            d = MailboxDelivery(mailbox_size=N_E2E)
            d.bind(tg)
            got: list[Any] = []
            all_in = anyio.Event()

            async def sink(msg: Any, sender: Optional[str]) -> None:
                got.append(msg)
                if len(got) == N_E2E:
                    all_in.set()

            d.add_agent("bob", sink)
            async with Bus() as bus:
                bus.set_local_delivery(d)
                bus.register_agent("alice")
                bus.register_agent("bob")
                m = Event(kind="metric", seq=1, body="cpu=0.42")

                async def worker(k: int) -> None:
                    for _ in range(k):
                        await bus.send(m, sender="alice", to="bob", timeout=30)

                t0 = time.perf_counter()
                async with anyio.create_task_group() as g:
                    for _ in range(SENDERS):
                        g.start_soon(worker, N_E2E // SENDERS)
                dt = time.perf_counter() - t0
                assert bus.stats.batched_messages > 0
            with anyio.fail_after(10):
                await all_in.wait()
            d.close()
            tg.cancel_scope.cancel()
        return N_E2E / dt

    return anyio.run(main)


def test_end_to_end_symbi(benchmark, tag):
    _value_row(
        benchmark,
        tag,
        max(end_to_end() for _ in range(2)),
        role="symbi",
        metric=f"bus sends/s end to end ({SENDERS} concurrent senders; sealed, acked, opened, "
        "in the mailbox)",
        unit="msgs/s",
        better="higher",
        seed_target="-",
        goal="informational",
    )
