"""The audit hash chain: ``h[n] = SHA-256(tag || h[n-1] || n || payload[n])``.

Because each hash covers the one before it and its own sequence number, changing,
dropping or reordering any event changes every hash after it. The work runs in Rust with
the GIL released, one batch per call.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import _core
from ..errors import AuditIntegrityError, InvalidArgument

__all__ = ["GENESIS", "HASH_SIZE", "chain_hashes", "chain_link", "verify_chain"]

HASH_SIZE: int = _core.CHAIN_HASH_SIZE
#: The ``prev`` hash of the first event of a chain.
GENESIS: bytes = bytes(HASH_SIZE)


def _check_seq(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise InvalidArgument(
            f"{name} must be an int in [0, 2**64), got {value!r}",
            argument=name,
            expected="int in [0, 2**64)",
            got=value,
        )


def _check_bytes_seq(name: str, items: Sequence[bytes]) -> list[bytes]:
    if isinstance(items, (bytes, str)):
        raise InvalidArgument(
            f"{name} must be a sequence of bytes objects, not a single {type(items).__name__}",
            argument=name,
            expected="sequence of bytes",
            got=type(items).__name__,
        )
    out = list(items)
    for i, x in enumerate(out):
        if not isinstance(x, bytes):
            raise InvalidArgument(
                f"{name}[{i}] must be bytes, got {type(x).__name__}; encode it first",
                argument=f"{name}[{i}]",
                expected="bytes",
                got=type(x).__name__,
            )
    return out


def chain_link(prev: bytes, seq: int, payload: bytes) -> bytes:
    """The chain hash of event ``seq`` with canonical bytes ``payload``."""
    _check_seq("seq", seq)
    if not isinstance(payload, bytes):
        raise InvalidArgument(
            "payload must be bytes",
            argument="payload",
            expected="bytes",
            got=type(payload).__name__,
        )
    return _core.chain_link(bytes(prev), seq, payload)


def chain_hashes(prev: bytes, first_seq: int, payloads: Sequence[bytes]) -> list[bytes]:
    """Chain hashes of ``payloads``, numbered from ``first_seq``, continuing from ``prev``."""
    _check_seq("first_seq", first_seq)
    return _core.chain_hashes(bytes(prev), first_seq, _check_bytes_seq("payloads", payloads))


def verify_chain(
    prev: bytes, first_seq: int, payloads: Sequence[bytes], hashes: Sequence[bytes]
) -> None:
    """Recompute the chain; raise :class:`AuditIntegrityError` at the first bad link."""
    _check_seq("first_seq", first_seq)
    bad = _core.verify_chain(
        bytes(prev),
        first_seq,
        _check_bytes_seq("payloads", payloads),
        _check_bytes_seq("hashes", hashes),
    )
    if bad is not None:
        seq = first_seq + bad
        raise AuditIntegrityError(
            f"audit chain broken at sequence {seq}: the event or one before it was altered, "
            "dropped or reordered; restore the trail from a verified copy",
            sequence=seq,
            kind="link",
        )
