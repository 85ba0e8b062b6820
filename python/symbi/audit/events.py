"""The audit trail's data: events, checkpoints, inclusion proofs and verification reports.

``AuditEvent.timestamp`` is an **int of nanoseconds since the Unix epoch (UTC)**, taken when
the event was appended; ``AuditEvent.time`` gives it as float seconds. ``details`` is
stored as compact JSON with sorted keys, so it reads back as JSON types (tuples become
lists).

The canonical bytes that the chain hash and the signature cover are defined in Rust
(``rust/src/audit/event.rs``)::

    "symbi.audit.event.v1\\0" || sequence u64 || event_id (16 raw bytes) || timestamp i64
    || key_id (u16 len) || agent_id (u32 len) || event_type (u32 len) || details JSON (u32 len)

(big-endian integers, UTF-8 strings). ``chain_hash = SHA-256("symbi.audit.chain.v1\\0" ||
prev_hash || sequence || canonical)`` and ``signature = Ed25519(canonical || chain_hash)``.
"""

from __future__ import annotations

from typing import Any, Optional

import msgspec

__all__ = ["AuditEvent", "Checkpoint", "InclusionProof", "OpenReport", "VerifyReport"]

_decode_details = msgspec.json.Decoder(dict[str, Any]).decode
#: Nanoseconds per second. ``ns / _NS`` (int / int) is correctly rounded; ``ns / 1e9``
#: rounds twice (ns does not fit a float's 53 bits), and time filters must agree with it.
_NS = 10**9


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One signed, hash-chained audit event."""

    event_id: str
    #: Nanoseconds since the Unix epoch (UTC).
    timestamp: int
    agent_id: str
    event_type: str
    details: dict[str, Any]
    sequence: int
    prev_hash: bytes
    chain_hash: bytes
    signature: bytes
    #: Hex id of the signing key: the first 8 bytes of SHA-256(public key).
    key_id: str

    @property
    def time(self) -> float:
        """``timestamp`` as float seconds since the Unix epoch (correctly rounded).
        ``query(since=ev.time)`` includes ``ev``; for exact bounds pass
        ``ev.timestamp`` (int nanoseconds)."""
        return self.timestamp / _NS

    @classmethod
    def _from_core(
        cls, t: tuple[int, str, int, str, str, str, bytes, bytes, bytes, bytes]
    ) -> AuditEvent:
        seq, eid, ts, kid, agent, etype, details, prev, chain, sig = t
        return cls(
            event_id=eid,
            timestamp=ts,
            agent_id=agent,
            event_type=etype,
            details=_decode_details(details),
            sequence=seq,
            prev_hash=prev,
            chain_hash=chain,
            signature=sig,
            key_id=kid,
        )

    @classmethod
    def _from_batch(
        cls,
        result: tuple[int, bytes, str, list[str], list[bytes], list[bytes]],
        item: tuple[str, str, bytes, int],
        i: int,
    ) -> AuditEvent:
        """Event ``i`` of a group commit: ``result`` is what the store returned for the
        batch (first sequence, previous head, key id, event ids, chain hashes,
        signatures) and ``item`` what was handed in (agent, type, details JSON, time)."""
        first, prev, kid, ids, chains, sigs = result
        agent, etype, details, ts = item
        return cls(
            event_id=ids[i],
            timestamp=ts,
            agent_id=agent,
            event_type=etype,
            details=_decode_details(details),
            sequence=first + i,
            prev_hash=chains[i - 1] if i else prev,
            chain_hash=chains[i],
            signature=sigs[i],
            key_id=kid,
        )


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A signed RFC 6962 Merkle tree head over the chain hashes of the first ``size``
    events."""

    size: int
    root: bytes
    #: Nanoseconds since the Unix epoch when the checkpoint was signed.
    timestamp: int
    key_id: str
    signature: bytes

    @classmethod
    def _from_core(cls, t: tuple[int, bytes, int, str, bytes]) -> Checkpoint:
        size, root, ts, kid, sig = t
        return cls(size=size, root=root, timestamp=ts, key_id=kid, signature=sig)


class InclusionProof(msgspec.Struct, frozen=True, kw_only=True):
    """Proof that ``event`` is the ``sequence``-th event of a trail whose first
    ``tree_size`` events ``checkpoint`` signs. ``canonical`` holds the event's canonical
    bytes (what its chain hash and signature cover); ``path`` is the RFC 6962 audit path."""

    sequence: int
    tree_size: int
    path: list[bytes]
    event: AuditEvent
    canonical: bytes
    checkpoint: Checkpoint


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """What verification established about an intact trail."""

    events: int
    #: The chain hash of the last event (32 zero bytes for an empty trail).
    head: bytes
    segments: int
    checkpoints: int
    key_id: str
    path: Optional[str] = None

    @classmethod
    def _from_core(cls, d: dict[str, object], path: Optional[str]) -> VerifyReport:
        return msgspec.convert({**d, "path": path}, cls)


class OpenReport(msgspec.Struct, frozen=True, kw_only=True):
    """What opening a store found: a torn tail (an unfinished write) it cut off
    (``truncated_bytes`` from ``truncated_file``, moved into ``quarantine_file``, never
    deleted) and damaged regions it left for verification to name."""

    segments: int = 0
    events: int = 0
    checkpoints: int = 0
    truncated_bytes: int = 0
    truncated_file: Optional[str] = None
    quarantine_file: Optional[str] = None
    damaged_regions: int = 0
