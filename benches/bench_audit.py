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
