//! The tamper-evident audit trail.
//!
//! - [`chain`]: the SHA-256 hash chain linking each event to the one before it.
//! - [`event`]: the canonical byte encoding of an event (what the chain and signatures cover).
//! - [`keys`]: the Ed25519 signer, its key files, and batch signature verification.
//! - [`segment`]: record framing (length + CRC32) and segment-file scanning.
//! - [`merkle`]: RFC 6962 Merkle tree heads and inclusion proofs over chain hashes.
//! - [`store`]: the durable append-only store (group commit, torn-tail repair, checkpoints,
//!   verification, queries).
//! - [`py`]: the Python bindings.
//!
//! All of them share the one error enum below.

pub mod chain;
pub mod event;
pub mod keys;
pub mod merkle;
pub mod py;
pub mod segment;
pub mod store;

/// What is wrong with the first bad event found by verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityKind {
    /// The Ed25519 signature does not verify (or was made by another key).
    Signature,
    /// The chain hash does not match the event and the event before it.
    Link,
    /// The event with this sequence number is absent.
    Missing,
    /// An event appears out of order, or twice.
    Order,
    /// The bytes on disk are damaged (bad CRC, truncated or unparseable record).
    Corrupt,
    /// An inclusion proof does not lead to the checkpoint's root.
    Inclusion,
    /// The checkpoint file is damaged, missing, or holds a checkpoint with a bad signature.
    /// It names no event: the events may all be intact, but a cut tail can no longer be
    /// detected.
    Checkpoint,
}

impl IntegrityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrityKind::Signature => "signature",
            IntegrityKind::Link => "link",
            IntegrityKind::Missing => "missing",
            IntegrityKind::Order => "order",
            IntegrityKind::Corrupt => "corrupt",
            IntegrityKind::Inclusion => "inclusion",
            IntegrityKind::Checkpoint => "checkpoint",
        }
    }
}

impl std::fmt::Display for IntegrityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in the audit module.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("previous hash must be {expected} bytes, got {got}; pass the chain_hash of the event before, or 32 zero bytes for the first event")]
    BadHashLength { expected: usize, got: usize },
    #[error("got {payloads} payloads but {hashes} hashes; pass one stored hash per payload")]
    LengthMismatch { payloads: usize, hashes: usize },
    #[error("sequence number overflows u64 after {first_seq} + {count}; start a new chain")]
    SequenceOverflow { first_seq: u64, count: usize },
    #[error("invalid audit {field}: {detail}")]
    BadInput { field: &'static str, detail: String },
    #[error("audit integrity failure {} ({kind}): {detail}; restore the trail from a verified copy (check it with `symbi audit verify DIR`) and investigate who changed it", at(seq))]
    Integrity {
        /// The first bad event; None for damage that names no event (kind `checkpoint`).
        seq: Option<u64>,
        kind: IntegrityKind,
        detail: String,
    },
    #[error("audit store {op} failed for {path}: {detail}")]
    Io {
        op: &'static str,
        path: String,
        detail: String,
    },
    #[error("audit key {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("the audit store is closed{detail}; open a new AuditLog")]
    Closed { detail: String },
}

impl AuditError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, e: std::io::Error) -> Self {
        AuditError::Io {
            op,
            path: path.display().to_string(),
            detail: e.to_string(),
        }
    }

    pub(crate) fn integrity(seq: u64, kind: IntegrityKind, detail: impl Into<String>) -> Self {
        AuditError::Integrity {
            seq: Some(seq),
            kind,
            detail: detail.into(),
        }
    }

    /// Damage to the checkpoint file: it names no event.
    pub(crate) fn checkpoint(detail: impl Into<String>) -> Self {
        AuditError::Integrity {
            seq: None,
            kind: IntegrityKind::Checkpoint,
            detail: detail.into(),
        }
    }
}

fn at(seq: &Option<u64>) -> String {
    match seq {
        Some(s) => format!("at sequence {s}"),
        None => format!("in {}", store::CHECKPOINT_FILE),
    }
}
