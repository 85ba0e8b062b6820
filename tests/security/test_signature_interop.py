"""symbi's Ed25519 signatures verify with an independent implementation (libsodium, through
PyNaCl), following only the documented formats: the bus envelope (rust/src/crypto/
envelope.rs) and the audit segment records. AWS-LC signs and ed25519-dalek verifies inside
symbi, so this is what shows a third party can check them too."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import anyio
import pytest

from symbi._core import BusKeyRing
from symbi.audit import AuditLog

nacl_signing = pytest.importorskip("nacl.signing")
nacl_exceptions = pytest.importorskip("nacl.exceptions")

SIG_SINGLE = b"symbi.bus.sig.single.v1"
SIG_BATCH = b"symbi.bus.sig.batch.v1"


def split_envelope(env: bytes) -> tuple[bytes, bytes, int, bytes, bytes]:
    """(header, ciphertext, flags, signature, rest) of an envelope, by its wire format."""
    pos = 4 + 1 + 1 + 16 + 8  # magic, version, kind, id, timestamp
    pos += 1 + env[pos]  # sender
    pos += 2 + int.from_bytes(env[pos : pos + 2], "big")  # recipient
    pos += 8 + 8 + 12  # key ids, nonce
    pos += 1 + env[pos]  # content type
    header = env[:pos]
    (ct_len,) = struct.unpack_from(">I", env, pos)
    ct = env[pos + 4 : pos + 4 + ct_len]
    pos += 4 + ct_len
    return header, ct, env[pos], env[pos + 1 : pos + 65], env[pos + 65 :]


def leaf(header: bytes, ct: bytes) -> bytes:
    return hashlib.sha256(b"symbi.bus.leaf.v1" + header + struct.pack(">I", len(ct)) + ct).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def ring() -> tuple[BusKeyRing, nacl_signing.VerifyKey]:
    r = BusKeyRing()
    bundle = r.create_identity("alice")
    r.create_identity("bob")
    # A bundle is the Ed25519 public key, then the X25519 one.
    return r, nacl_signing.VerifyKey(bundle[:32])


def test_single_signed_envelope_verifies_with_libsodium() -> None:
    r, vk = ring()
    for payload in (b"", b"x", bytes(range(256)) * 40):
        env = r.seal("alice", "bob", "application/msgpack", payload)
        header, ct, flags, sig, rest = split_envelope(env)
        assert flags == 0 and rest == b""
        vk.verify(SIG_SINGLE + leaf(header, ct), sig)
        # The signature covers the header and the ciphertext: flipping either breaks it.
        bad_header = header[:-1] + bytes([header[-1] ^ 1])
        with pytest.raises(nacl_exceptions.BadSignatureError):
            vk.verify(SIG_SINGLE + leaf(bad_header, ct), sig)
        bad_ct = bytes([ct[0] ^ 1]) + ct[1:]
        with pytest.raises(nacl_exceptions.BadSignatureError):
            vk.verify(SIG_SINGLE + leaf(header, bad_ct), sig)


def test_batch_root_signature_verifies_with_libsodium() -> None:
    r, vk = ring()
    envs = r.seal_batch("alice", [("bob", "t", b"m%d" % i, False) for i in range(4)])
    parts = [split_envelope(e) for e in envs]
    leaves = [leaf(h, ct) for h, ct, *_ in parts]
    root = node(node(leaves[0], leaves[1]), node(leaves[2], leaves[3]))
    sigs = {sig for _h, _ct, _f, sig, _r in parts}
    assert len(sigs) == 1  # one signature covers the batch
    for i, (_h, _ct, flags, sig, rest) in enumerate(parts):
        assert flags & 1
        index, size, path_len = struct.unpack_from(">IIB", rest)
        assert (index, size, path_len) == (i, 4, 2)
        path = [rest[9 + 32 * k : 9 + 32 * (k + 1)] for k in range(path_len)]
        sibling = leaves[i ^ 1]
        assert path[0] == sibling
        vk.verify(SIG_BATCH + root + struct.pack(">I", 4), sig)
    with pytest.raises(nacl_exceptions.BadSignatureError):
        vk.verify(SIG_BATCH + root + struct.pack(">I", 5), sigs.pop())


def test_audit_event_signatures_verify_with_libsodium(tmp_path: Path) -> None:
    trail = tmp_path / "trail"

    async def write() -> None:
        async with AuditLog(trail) as log:
            for i in range(50):
                await log.append(f"agent-{i % 3}", "data.read", {"i": i})

    anyio.run(write)
    vk = nacl_signing.VerifyKey((trail / "audit.pub").read_bytes())
    checked = 0
    for seg in sorted(trail.glob("*.seg")):
        buf, pos = seg.read_bytes(), 0
        while pos < len(buf):
            n = int.from_bytes(buf[pos : pos + 4], "little")
            body = buf[pos + 8 : pos + 8 + n]
            vk.verify(body[:-64], body[-64:])
            with pytest.raises(nacl_exceptions.BadSignatureError):
                vk.verify(bytes([body[0] ^ 1]) + body[1:-64], body[-64:])
            checked += 1
            pos += 8 + n
    assert checked == 50
