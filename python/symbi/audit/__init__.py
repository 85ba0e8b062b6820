"""Tamper-evident audit trail. Today: the hash chain that links each event to the one
before it, computed in Rust."""

from __future__ import annotations

from .chain import GENESIS, HASH_SIZE, chain_hashes, chain_link, verify_chain

__all__ = ["GENESIS", "HASH_SIZE", "chain_hashes", "chain_link", "verify_chain"]
