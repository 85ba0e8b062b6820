"""Tamper-evident audit trail: signed, hash-chained events in a durable append-only store,
with signed Merkle checkpoints, inclusion proofs and compliance reports.

- :class:`AuditLog` is the runtime component (``rt.audit``).
- :func:`verify_dir` / :func:`query_dir` read a store directory without opening it for
  writing (for the CLI and auditors).
- :mod:`symbi.audit.reports` renders HIPAA, GDPR, SOX and custom compliance reports.

Verification raises :class:`~symbi.errors.AuditIntegrityError`. Its ``sequence`` is the
first bad event (the lowest sequence number with a problem) and its ``kind`` says what is
wrong:

- ``signature``: the event's Ed25519 signature does not verify, or another key signed it
  (with the wrong ``audit.pub`` every event fails, so this names event 0).
- ``link``: the event's chain hash does not match it and the event before, or the events
  differ from what a signed checkpoint covers (named at the checkpoint's last event).
- ``missing``: the event is absent (deleted, or cut off the end under a checkpoint).
- ``order``: an event appears out of order or twice.
- ``corrupt``: damaged bytes on disk (bad CRC, unparseable record, or a torn tail when
  torn tails are not allowed).
- ``inclusion``: an inclusion proof does not lead to the checkpoint's root.
- ``checkpoint``: the checkpoint file is damaged or missing, or holds a checkpoint with a
  bad signature, while every event verifies. It names no event: ``sequence`` is None.

Opening a store for appending (:class:`AuditLog`) refuses with ``missing``, ``corrupt``
or ``checkpoint`` when appending could reuse the sequence numbers of events that may have
been acknowledged: fewer events than a signed checkpoint covers, a complete but damaged
last record, or a missing checkpoint file. Restore the files from a backup and check them
with ``symbi audit verify DIR``. Only an unfinished last record (a crash mid-write) is cut
on open, and its bytes are moved into ``<segment>.torn``.
"""

from __future__ import annotations

from .chain import GENESIS, HASH_SIZE, chain_hashes, chain_link, verify_chain
from .events import AuditEvent, Checkpoint, InclusionProof, OpenReport, VerifyReport
from .log import (
    AuditLog,
    AuditSink,
    AuditStream,
    TimeLike,
    query_dir,
    verify_dir,
    verify_inclusion,
)

__all__ = [
    "GENESIS",
    "HASH_SIZE",
    "AuditEvent",
    "AuditLog",
    "AuditSink",
    "AuditStream",
    "Checkpoint",
    "InclusionProof",
    "OpenReport",
    "TimeLike",
    "VerifyReport",
    "chain_hashes",
    "chain_link",
    "query_dir",
    "verify_chain",
    "verify_dir",
    "verify_inclusion",
]
