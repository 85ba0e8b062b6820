//! Audit trail primitives. Today: the hash chain that links every audit event to the one
//! before it. Signing, segment storage and Merkle checkpoints build on this.

pub mod chain;
pub mod py;

/// Everything that can go wrong in the audit module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("previous hash must be {expected} bytes, got {got}; pass the chain_hash of the event before, or 32 zero bytes for the first event")]
    BadHashLength { expected: usize, got: usize },
    #[error("got {payloads} payloads but {hashes} hashes; pass one stored hash per payload")]
    LengthMismatch { payloads: usize, hashes: usize },
    #[error("sequence number overflows u64 after {first_seq} + {count}; start a new chain")]
    SequenceOverflow { first_seq: u64, count: usize },
}
