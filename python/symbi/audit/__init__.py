"""Tamper-evident audit trail: signed, hash-chained events in a durable append-only store,
with signed Merkle checkpoints, inclusion proofs and compliance reports.

- :class:`AuditLog` is the runtime component (``rt.audit``).
- :func:`verify_dir` / :func:`query_dir` read a store directory without opening it for
  writing (for the CLI and auditors).
- :mod:`symbi.audit.reports` renders HIPAA, GDPR, SOX and custom compliance reports.
"""

from __future__ import annotations

from .chain import GENESIS, HASH_SIZE, chain_hashes, chain_link, verify_chain
from .events import AuditEvent, Checkpoint, InclusionProof, OpenReport, VerifyReport
from .log import AuditLog, AuditSink, TimeLike, query_dir, verify_dir, verify_inclusion

__all__ = [
    "GENESIS",
    "HASH_SIZE",
    "AuditEvent",
    "AuditLog",
    "AuditSink",
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
