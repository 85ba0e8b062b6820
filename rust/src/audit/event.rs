//! The canonical byte encoding of an audit event, and the stored record around it.
//!
//! Canonical bytes, version 1 (all integers big-endian, strings UTF-8):
//!
//! ```text
//! "symbi.audit.event.v1\0"            21 bytes, domain tag
//! sequence                             u64
//! event_id                             16 bytes (the raw UUID)
//! timestamp                            i64, nanoseconds since the Unix epoch (UTC)
//! key_id     len u16 || bytes          hex id of the signing key (see keys::key_id)
//! agent_id   len u32 || bytes
//! event_type len u32 || bytes
//! details    len u32 || bytes          compact JSON, object keys sorted (written by Python)
//! ```
//!
//! Every field is length-prefixed and the layout is fixed, so one event has exactly one
//! encoding and two different events never share one. `details` is embedded verbatim: the
//! Python facade encodes it once (msgspec, sorted keys) and the bytes are what is signed, so
//! verification never has to re-canonicalise JSON.
//!
//! `chain_hash = chain::link(prev_hash, sequence, canonical)` and the signature is Ed25519
//! over `canonical || chain_hash`. A stored record body is exactly
//! `canonical || chain_hash (32) || signature (64)`, so the signed message is the body minus
//! its last 64 bytes. `prev_hash` is not stored: it is the chain hash of the record before
//! (or [`chain::GENESIS`](super::chain::GENESIS) for sequence 0).

use super::chain::{Hash, HASH_SIZE};
use super::AuditError;

pub const DOMAIN: &[u8] = b"symbi.audit.event.v1\0";
pub const SIG_SIZE: usize = 64;
/// Bytes after the canonical encoding in a record body.
pub const TRAILER: usize = HASH_SIZE + SIG_SIZE;
/// Offset of the sequence number in the canonical bytes (and so in a record body).
pub const SEQ_OFFSET: usize = DOMAIN.len();
/// Offset of the raw event id in the canonical bytes.
pub const ID_OFFSET: usize = SEQ_OFFSET + 8;
pub const MAX_ID_LEN: usize = 4096;
pub const MAX_DETAILS_LEN: usize = 16 << 20;

/// The signed fields of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    pub seq: u64,
    pub event_id: [u8; 16],
    pub timestamp_ns: i64,
    pub key_id: &'a str,
    pub agent_id: &'a str,
    pub event_type: &'a str,
    pub details: &'a [u8],
}

/// Check what a caller passes in before anything is signed.
pub fn validate(agent_id: &str, event_type: &str, details: &[u8]) -> Result<(), AuditError> {
    for (field, v) in [("agent_id", agent_id), ("event_type", event_type)] {
        if v.is_empty() || v.len() > MAX_ID_LEN {
            return Err(AuditError::BadInput {
                field,
                detail: format!(
                    "must be 1..={MAX_ID_LEN} bytes of UTF-8, got {} bytes",
                    v.len()
                ),
            });
        }
    }
    if details.len() > MAX_DETAILS_LEN {
        return Err(AuditError::BadInput {
            field: "details",
            detail: format!(
                "encoded details are {} bytes; the limit is {MAX_DETAILS_LEN}, store large data elsewhere and reference it",
                details.len()
            ),
        });
    }
    Ok(())
}

pub fn encoded_len(f: &Fields<'_>) -> usize {
    DOMAIN.len()
        + 8
        + 16
        + 8
        + 2
        + f.key_id.len()
        + 12
        + f.agent_id.len()
        + f.event_type.len()
        + f.details.len()
}

/// Append the canonical bytes of `f` to `out`.
pub fn encode_into(f: &Fields<'_>, out: &mut Vec<u8>) {
    out.reserve(encoded_len(f));
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(&f.seq.to_be_bytes());
    out.extend_from_slice(&f.event_id);
    out.extend_from_slice(&f.timestamp_ns.to_be_bytes());
    out.extend_from_slice(&(f.key_id.len() as u16).to_be_bytes());
    out.extend_from_slice(f.key_id.as_bytes());
    for s in [f.agent_id.as_bytes(), f.event_type.as_bytes(), f.details] {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }
}

pub fn encode(f: &Fields<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    encode_into(f, &mut v);
    v
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u16(&mut self) -> Option<usize> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize)
    }
    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
    fn str(&mut self, n: usize) -> Option<&'a str> {
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// Parse canonical bytes; `None` when they are not exactly one well-formed encoding.
pub fn decode(buf: &[u8]) -> Option<Fields<'_>> {
    let mut r = Reader { buf, pos: 0 };
    if r.take(DOMAIN.len())? != DOMAIN {
        return None;
    }
    let seq = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let event_id: [u8; 16] = r.take(16)?.try_into().ok()?;
    let timestamp_ns = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let n = r.u16()?;
    let key_id = r.str(n)?;
    let n = r.u32()?;
    let agent_id = r.str(n)?;
    let n = r.u32()?;
    let event_type = r.str(n)?;
    let n = r.u32()?;
    let details = r.take(n)?;
    if r.pos != buf.len() {
        return None;
    }
    Some(Fields {
        seq,
        event_id,
        timestamp_ns,
        key_id,
        agent_id,
        event_type,
        details,
    })
}

/// A parsed record body: `canonical || chain_hash || signature`.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub body: &'a [u8],
    pub fields: Fields<'a>,
    pub chain: Hash,
    pub sig: [u8; SIG_SIZE],
}

impl<'a> Record<'a> {
    pub fn parse(body: &'a [u8]) -> Option<Record<'a>> {
        let n = body.len().checked_sub(TRAILER)?;
        let fields = decode(&body[..n])?;
        let chain: Hash = body[n..n + HASH_SIZE].try_into().ok()?;
        let sig: [u8; SIG_SIZE] = body[n + HASH_SIZE..].try_into().ok()?;
        Some(Record {
            body,
            fields,
            chain,
            sig,
        })
    }
    pub fn canonical(&self) -> &'a [u8] {
        &self.body[..self.body.len() - TRAILER]
    }
    /// The bytes the signature covers: `canonical || chain_hash`.
    pub fn signed_message(&self) -> &'a [u8] {
        &self.body[..self.body.len() - SIG_SIZE]
    }
}

/// The sequence number of a record body without a full parse (for look-ahead scans).
pub fn peek_seq(body: &[u8]) -> Option<u64> {
    if body.len() < SEQ_OFFSET + 8 || &body[..DOMAIN.len()] != DOMAIN {
        return None;
    }
    Some(u64::from_be_bytes(
        body[SEQ_OFFSET..SEQ_OFFSET + 8].try_into().ok()?,
    ))
}

/// The hyphenated lowercase text form of a UUID.
pub fn uuid_str(id: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fields<'static> {
        Fields {
            seq: 42,
            event_id: [7; 16],
            timestamp_ns: 1_700_000_000_123_456_789,
            key_id: "0123456789abcdef",
            agent_id: "agent-1",
            event_type: "policy.deny",
            details: br#"{"a":1,"b":"x"}"#,
        }
    }

    #[test]
    fn round_trips() {
        let f = sample();
        let b = encode(&f);
        assert_eq!(b.len(), encoded_len(&f));
        assert_eq!(decode(&b), Some(f));
        assert_eq!(peek_seq(&b), Some(42));
    }

    #[test]
    fn layout_is_fixed() {
        let b = encode(&sample());
        assert!(b.starts_with(b"symbi.audit.event.v1\0"));
        assert_eq!(&b[21..29], &42u64.to_be_bytes());
        assert_eq!(&b[29..45], &[7u8; 16]);
    }

    #[test]
    fn trailing_or_truncated_bytes_are_rejected() {
        let mut b = encode(&sample());
        b.push(0);
        assert_eq!(decode(&b), None);
        b.truncate(b.len() - 2);
        assert_eq!(decode(&b), None);
    }

    #[test]
    fn different_fields_give_different_bytes() {
        let a = sample();
        let mut b = sample();
        b.agent_id = "agent-1p";
        b.event_type = "olicy.deny";
        assert_ne!(encode(&a), encode(&b));
    }

    #[test]
    fn uuid_text() {
        let id = [0x12u8; 16];
        assert_eq!(uuid_str(&id), "12121212-1212-1212-1212-121212121212");
    }

    #[test]
    fn validation() {
        assert!(validate("a", "t", b"{}").is_ok());
        assert!(validate("", "t", b"{}").is_err());
        assert!(validate("a", "", b"{}").is_err());
    }
}
