from __future__ import annotations

import hashlib
import struct

import pytest

from symbi.audit import GENESIS, HASH_SIZE, chain_hashes, chain_link, verify_chain
from symbi.errors import AuditIntegrityError


def reference(prev: bytes, seq: int, payload: bytes) -> bytes:
    return hashlib.sha256(
        b"symbi.audit.chain.v1\0" + prev + struct.pack(">Q", seq) + payload
    ).digest()


def test_link_is_the_documented_construction():
    assert HASH_SIZE == 32
    assert chain_link(GENESIS, 3, b"x") == reference(GENESIS, 3, b"x")


def test_batch_equals_links_one_by_one():
    payloads = [bytes([i]) * i for i in range(40)]
    hashes = chain_hashes(GENESIS, 10, payloads)
    prev = GENESIS
    for i, (p, h) in enumerate(zip(payloads, hashes)):
        prev = chain_link(prev, 10 + i, p)
        assert h == prev


def test_empty_batch():
    assert chain_hashes(GENESIS, 0, []) == []
    verify_chain(GENESIS, 0, [], [])


@pytest.mark.parametrize("bad", [0, 5, 39])
def test_tamper_is_reported_at_its_sequence(bad):
    payloads = [f"event {i}".encode() for i in range(40)]
    hashes = chain_hashes(GENESIS, 100, payloads)
    payloads[bad] = b"forged"
    with pytest.raises(AuditIntegrityError) as ei:
        verify_chain(GENESIS, 100, payloads, hashes)
    assert ei.value.sequence == 100 + bad
    assert ei.value.kind == "link"


def test_wrong_starting_point_fails_at_the_first_event():
    payloads = [b"a", b"b"]
    hashes = chain_hashes(GENESIS, 0, payloads)
    with pytest.raises(AuditIntegrityError) as ei:
        verify_chain(b"\x01" * 32, 0, payloads, hashes)
    assert ei.value.sequence == 0
