"""Audit chain hashing: symbi's Rust batch against the same chain built with hashlib.

Both compute SHA-256(tag || prev || seq || payload) per event; the outputs are compared
before timing, so the two sides provably do the same work.
"""

from __future__ import annotations

import hashlib
import random
import struct

import pytest

from conftest import size
from symbi.audit import GENESIS, chain_hashes

N = size(20_000, 2_000)
TAG = b"symbi.audit.chain.v1\0"
ROW = {
    "metric": "audit chain hashing (256-byte events)",
    "unit": "events/s",
    "items": N,
    "seed_target": "every event hash-chained",
    "goal": ">= 1M events/s per core",
}


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    rng = random.Random(7)
    return [rng.randbytes(256) for _ in range(N)]


def hashlib_chain(prev: bytes, first_seq: int, payloads: list[bytes]) -> list[bytes]:
    out = []
    pack = struct.Struct(">Q").pack
    for i, p in enumerate(payloads):
        prev = hashlib.sha256(TAG + prev + pack(first_seq + i) + p).digest()
        out.append(prev)
    return out


def test_chain_symbi(benchmark, tag, payloads):
    assert chain_hashes(GENESIS, 0, payloads) == hashlib_chain(GENESIS, 0, payloads)
    tag(role="symbi", **ROW)
    benchmark(chain_hashes, GENESIS, 0, payloads)


def test_chain_peer_hashlib(benchmark, tag, payloads):
    tag(role="peer", peer="hashlib (OpenSSL) loop", **ROW)
    benchmark(hashlib_chain, GENESIS, 0, payloads)


# --------------------------------------------------------------------------------------
# Durable appends with group commit, and signature verification.

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import anyio  # noqa: E402

from symbi.audit import AuditLog, verify_dir  # noqa: E402

APPENDS = size(20_000, 4_000)
APPENDERS = 200
PEER_APPENDS = size(2_000, 300)
APPEND_ROW = {
    "metric": "audit appends/s, durable with group commit",
    "unit": "appends/s",
    "seed_target": "append acknowledged only when durable",
    "goal": ">= 50k/s",
}
VERIFY_N = size(20_000, 4_000)
VERIFY_ROW = {
    "metric": "verified events/s",
    "unit": "events/s",
    "items": VERIFY_N,
    "seed_target": "recompute chain + verify every Ed25519 signature",
    "goal": ">= 5x PyNaCl",
}
DETAILS = {"action": "read", "resource": "db.patients", "rows": 12, "ok": True}


async def _append_concurrently(path: Path, total: int, appenders: int) -> int:
    async with AuditLog(path) as log:
        per = total // appenders

        async def worker(w: int) -> None:
            for i in range(per):
                await log.append(f"agent-{w}", "data.read", {**DETAILS, "i": i})

        async with anyio.create_task_group() as tg:
            for w in range(appenders):
                tg.start_soon(worker, w)
        return log.next_sequence


@pytest.fixture
def scratch():
    d = tempfile.mkdtemp(prefix="symbi-bench-audit-", dir=os.environ.get("SYMBI_BENCH_TMP"))
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_append_symbi(benchmark, tag, scratch):
    n = (APPENDS // APPENDERS) * APPENDERS
    counter = iter(range(1_000_000))

    def setup():
        return (scratch / f"r{next(counter)}", n, APPENDERS), {}

    # Correctness outside the timed part: every append landed and the trail verifies.
    probe = scratch / "probe"
    assert anyio.run(_append_concurrently, probe, 2_000, 50) == 2_000
    assert verify_dir(probe).events == 2_000
    tag(role="symbi", items=n, **APPEND_ROW)
    benchmark.pedantic(
        lambda p, k, a: anyio.run(_append_concurrently, p, k, a), setup=setup, rounds=3
    )


def test_append_peer_fsync_each(benchmark, tag, scratch):
    """The peer: a plain Python file writer, one write + fdatasync per append (no group
    commit), the same JSON-ish record size and no signing at all."""
    import json
    import time

    counter = iter(range(1_000_000))

    def setup():
        return (scratch / f"peer{next(counter)}.log",), {}

    def run(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for i in range(PEER_APPENDS):
                rec = json.dumps(
                    {
                        "agent": "agent-1",
                        "type": "data.read",
                        "ts": time.time_ns(),
                        **DETAILS,
                        "i": i,
                    }
                ).encode()
                os.write(fd, len(rec).to_bytes(4, "little") + rec)
                os.fdatasync(fd)
        finally:
            os.close(fd)

    tag(
        role="peer",
        peer="Python file writer, fdatasync per append (no group commit)",
        items=PEER_APPENDS,
        **APPEND_ROW,
    )
    benchmark.pedantic(run, setup=setup, rounds=3)


@pytest.fixture(scope="module")
def signed_trail():
    d = Path(tempfile.mkdtemp(prefix="symbi-bench-verify-"))
    trail = d / "trail"

    async def write() -> None:
        async with AuditLog(trail) as log:
            for start in range(0, VERIFY_N, 1000):
                for i in range(start, min(start + 1000, VERIFY_N)):
                    log.record("data.read", f"agent-{i % 7}", {**DETAILS, "i": i})
                await log.flush()

    anyio.run(write)
    # The signed messages (canonical bytes || chain hash) and signatures, for the peer.
    msgs, sigs = [], []
    for seg in sorted(trail.glob("*.seg")):
        buf, pos = seg.read_bytes(), 0
        while pos < len(buf):
            n = int.from_bytes(buf[pos : pos + 4], "little")
            body = buf[pos + 8 : pos + 8 + n]
            msgs.append(body[:-64])
            sigs.append(body[-64:])
            pos += 8 + n
    yield trail, (trail / "audit.pub").read_bytes(), msgs, sigs
    shutil.rmtree(d, ignore_errors=True)


def test_verify_symbi(benchmark, tag, signed_trail):
    trail, _, msgs, _ = signed_trail
    assert verify_dir(trail).events == VERIFY_N == len(msgs)
    tag(role="symbi", **VERIFY_ROW)
    benchmark(verify_dir, trail)


def test_verify_peer_pynacl(benchmark, tag, signed_trail):
    nacl_signing = pytest.importorskip("nacl.signing")
    _, pub, msgs, sigs = signed_trail
    vk = nacl_signing.VerifyKey(pub)

    def run() -> None:
        verify = vk.verify
        for m, s in zip(msgs, sigs):
            verify(m, s)

    run()  # all verify: the same answer as symbi
    tag(
        role="peer",
        peer="PyNaCl (libsodium) verify in a Python loop, signatures only",
        **VERIFY_ROW,
    )
    benchmark(run)
