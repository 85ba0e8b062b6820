//! The audit hash chain.
//!
//! `link(prev, seq, payload) = SHA-256(DOMAIN || prev || seq as u64 big-endian || payload)`.
//! Hashing the sequence number in means a missing or reordered event breaks the chain even
//! when the payloads themselves are intact. The domain tag keeps these hashes from ever
//! colliding with hashes symbi computes for another purpose.

use sha2::{Digest, Sha256};

use super::AuditError;

pub const HASH_SIZE: usize = 32;
pub const DOMAIN: &[u8] = b"symbi.audit.chain.v1\0";
/// The `prev` of the first event in a chain.
pub const GENESIS: [u8; HASH_SIZE] = [0u8; HASH_SIZE];

pub type Hash = [u8; HASH_SIZE];

pub fn link(prev: &Hash, seq: u64, payload: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(payload);
    h.finalize().into()
}

pub fn to_hash(bytes: &[u8]) -> Result<Hash, AuditError> {
    bytes.try_into().map_err(|_| AuditError::BadHashLength {
        expected: HASH_SIZE,
        got: bytes.len(),
    })
}

fn check_seq(first_seq: u64, count: usize) -> Result<(), AuditError> {
    first_seq
        .checked_add(count as u64)
        .map(|_| ())
        .ok_or(AuditError::SequenceOverflow { first_seq, count })
}

/// The chain hashes of `payloads`, numbered from `first_seq`, continuing from `prev`.
pub fn hashes<P: AsRef<[u8]>>(
    prev: &Hash,
    first_seq: u64,
    payloads: &[P],
) -> Result<Vec<Hash>, AuditError> {
    check_seq(first_seq, payloads.len())?;
    let mut out = Vec::with_capacity(payloads.len());
    let mut cur = *prev;
    for (i, p) in payloads.iter().enumerate() {
        cur = link(&cur, first_seq + i as u64, p.as_ref());
        out.push(cur);
    }
    Ok(out)
}

/// Index of the first payload whose stored hash does not match the recomputed chain, or
/// `None` when all match. Everything after the first bad link is suspect, so we stop there.
pub fn first_mismatch<P: AsRef<[u8]>, H: AsRef<[u8]>>(
    prev: &Hash,
    first_seq: u64,
    payloads: &[P],
    stored: &[H],
) -> Result<Option<usize>, AuditError> {
    if payloads.len() != stored.len() {
        return Err(AuditError::LengthMismatch {
            payloads: payloads.len(),
            hashes: stored.len(),
        });
    }
    check_seq(first_seq, payloads.len())?;
    let mut cur = *prev;
    for (i, (p, s)) in payloads.iter().zip(stored).enumerate() {
        cur = link(&cur, first_seq + i as u64, p.as_ref());
        if cur.as_slice() != s.as_ref() {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Vec<u8>> {
        (0..50u8).map(|i| vec![i; i as usize]).collect()
    }

    #[test]
    fn link_matches_manual_sha256() {
        let mut manual = Sha256::new();
        manual.update(b"symbi.audit.chain.v1\0");
        manual.update([7u8; 32]);
        manual.update(5u64.to_be_bytes());
        manual.update(b"event");
        let want: Hash = manual.finalize().into();
        assert_eq!(link(&[7u8; 32], 5, b"event"), want);
    }

    #[test]
    fn intact_chain_verifies() {
        let p = sample();
        let h = hashes(&GENESIS, 0, &p).unwrap();
        assert_eq!(first_mismatch(&GENESIS, 0, &p, &h).unwrap(), None);
    }

    #[test]
    fn tampered_payload_is_found_at_its_index() {
        let mut p = sample();
        let h = hashes(&GENESIS, 0, &p).unwrap();
        p[17][0] ^= 1;
        assert_eq!(first_mismatch(&GENESIS, 0, &p, &h).unwrap(), Some(17));
    }

    #[test]
    fn reordering_breaks_the_chain() {
        let mut p = sample();
        let h = hashes(&GENESIS, 0, &p).unwrap();
        p.swap(3, 4);
        assert_eq!(first_mismatch(&GENESIS, 0, &p, &h).unwrap(), Some(3));
    }

    #[test]
    fn dropped_event_breaks_the_chain() {
        let p = sample();
        let h = hashes(&GENESIS, 0, &p).unwrap();
        let mut p2 = p.clone();
        let mut h2 = h.clone();
        p2.remove(10);
        h2.remove(10);
        assert_eq!(first_mismatch(&GENESIS, 0, &p2, &h2).unwrap(), Some(10));
    }

    #[test]
    fn continuing_a_chain_equals_hashing_it_whole() {
        let p = sample();
        let whole = hashes(&GENESIS, 0, &p).unwrap();
        let head = hashes(&GENESIS, 0, &p[..20]).unwrap();
        let tail = hashes(head.last().unwrap(), 20, &p[20..]).unwrap();
        assert_eq!([head, tail].concat(), whole);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert_eq!(
            to_hash(b"short"),
            Err(AuditError::BadHashLength {
                expected: 32,
                got: 5
            })
        );
        assert!(matches!(
            first_mismatch(&GENESIS, 0, &sample(), &[[0u8; 32]]),
            Err(AuditError::LengthMismatch { .. })
        ));
        assert!(matches!(
            hashes(&GENESIS, u64::MAX, &sample()),
            Err(AuditError::SequenceOverflow { .. })
        ));
    }
}
