//! Cryptography of the message bus: agent identities, sealed envelopes, batch signatures
//! and replay protection.
//!
//! # Design
//! * Every agent has an Ed25519 signing key and an X25519 key-agreement key, created and
//!   held inside the runtime (`KeyRing`); only public bundles leave it.
//! * A direct message is encrypted with AES-256-GCM under a key derived per
//!   (sender, recipient) pair: `HKDF-SHA256(ikm = X25519(sender, recipient),
//!   salt = "symbi.bus.v1", info = "pair" || sender key id || recipient key id)`. The
//!   direction is part of the info, so the two directions use different keys. A topic
//!   message is encrypted under the topic's random group key.
//! * Topic keys. A ring seals a topic under one key (its own, created on first publish,
//!   or the first one it learnt) and opens with any key it knows for that topic, looked up
//!   by the key id in the header (`add_topic_key`, `has_topic_key`). Across processes a
//!   subscriber that meets an unknown key id asks the publishing agent for it; the key
//!   travels sealed under the pair key (see `symbi.bus`).
//! * The AEAD's associated data is the whole envelope header, so header and ciphertext
//!   are bound together; the nonce is 96 random bits per message.
//! * Signatures. Each envelope has a leaf hash `H("symbi.bus.leaf.v1" || header ||
//!   ciphertext)`. Idle senders sign one leaf (`"single"`); under load `seal_batch` signs
//!   one Merkle root over the batch's leaves (`"batch"`) and each envelope carries its
//!   index and audit path. A receiver recomputes the root from the leaf and the path and
//!   verifies the one signature. It then remembers the batch's last verified proof (the
//!   nodes on its path), keyed by (signer key, signature): the next envelope of the batch
//!   climbs only until its path joins the remembered one (a hash or two for neighbours)
//!   and must then match the rest of it byte for byte, so every byte of every proof is
//!   still checked. One Ed25519 signature covers up to `MAX_BATCH` messages, which is what
//!   makes 100k signed messages/s reachable. `seal_batch` draws the batch's ids and nonces
//!   from the OS in one call.
//! * Ed25519: AWS-LC signs and ed25519-dalek verifies (`crate::signing` says why). The idle
//!   path is one signature and one verification per message, about 8 + 32 µs of the
//!   ~46 µs a seal and open cost on the 2-core CI machine; AES-GCM, the leaf hash, the
//!   replay check and the buffers are the rest.
//! * Replays: a receiver rejects envelopes outside the timestamp window and remembers
//!   the ids it has accepted until they leave the window (`ReplayGuard`).
//! * Buffers: the ring keeps a pool of byte buffers. An envelope is written into one in
//!   place (header, payload encrypted where it lies, then the signature and the proof
//!   read from the batch's `merkle::Tree`); an opened payload is decrypted into one;
//!   parsed headers borrow the envelope; the batch memo, tree and scratch lists are
//!   overwritten. Callers hand buffers back with `recycle`, so warm traffic allocates per
//!   batch, never per message.

pub mod envelope;
pub mod keyring;
pub mod merkle;
pub mod py;
pub mod replay;

/// Everything that can go wrong in the bus crypto.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error(
        "unknown agent {0:?} in the key ring; create its identity (or add it as a peer) first"
    )]
    UnknownAgent(String),
    #[error("agent {0:?} already has an identity; remove it first to rotate its keys")]
    DuplicateAgent(String),
    #[error("no group key for topic {0:?}; a publisher creates it, subscribers must be given it")]
    UnknownTopic(String),
    #[error("malformed envelope: {0}; it was truncated or is not a symbi envelope")]
    Malformed(String),
    #[error("signature check failed for message {id} from {sender:?}: {detail}")]
    Signature {
        id: String,
        sender: String,
        detail: String,
    },
    #[error(
        "message {id} could not be decrypted: authentication failed (tampered, or the wrong key)"
    )]
    Decrypt { id: String },
    #[error("message {id} is for {recipient:?}, not {opener:?}")]
    WrongRecipient {
        id: String,
        recipient: String,
        opener: String,
    },
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("key agreement with {0:?} produced a low-order point; its public key is invalid")]
    WeakKey(String),
}

pub type Result<T> = std::result::Result<T, CryptoError>;

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system random source failed");
    b
}
