//! Ed25519 signing keys, shared by the bus (`crypto`) and the audit trail (`audit`).
//!
//! Signing runs in AWS-LC, whose Ed25519 is s2n-bignum's formally verified curve25519
//! code (ADX/BMI2 scalar arithmetic on x86_64, no AVX-512): about 8 µs a signature on the
//! 2-core CI machine against ed25519-dalek's 15 µs. That is the difference between the
//! bus's idle path (one sign and one verify per message) meeting its 50 µs budget or not,
//! and audit appends spend most of their CPU signing.
//!
//! Verification stays with ed25519-dalek: its single verify is as fast as AWS-LC's with the
//! public key already decompressed, and it has batch verification, which AWS-LC lacks.
//! Both sides implement RFC 8032's deterministic Ed25519, so a key gives the same public
//! key and the same signature bytes in either library (a test pins that).
//!
//! The 32-byte seed is not kept here: AWS-LC holds the expanded key in its own allocation
//! and cleanses it when the last clone is dropped.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use ed25519_dalek::VerifyingKey;

/// An Ed25519 signing key and its public half. Cloning shares the one AWS-LC key.
#[derive(Clone)]
pub struct SigningKey {
    pair: Ed25519KeyPair,
    verifying: VerifyingKey,
}

impl SigningKey {
    /// The key of a 32-byte RFC 8032 secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        // Infallible for a 32-byte seed: AWS-LC only rejects seeds of the wrong length.
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .expect("AWS-LC accepts every 32-byte Ed25519 seed");
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("an Ed25519 public key is 32 bytes");
        // A point AWS-LC derived from a seed always decompresses.
        let verifying = VerifyingKey::from_bytes(&public)
            .expect("a public key derived from a seed is a valid point");
        Self { pair, verifying }
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = crate::crypto::random::<32>();
        let key = Self::from_seed(&seed);
        seed.fill(0);
        key
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.verifying
    }

    /// The 64-byte signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.pair
            .sign(msg)
            .as_ref()
            .try_into()
            .expect("an Ed25519 signature is 64 bytes")
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: the public key identifies the key in logs and test failures.
        f.debug_struct("SigningKey")
            .field("public", &self.verifying)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Signer, Verifier};

    #[test]
    fn same_keys_and_signatures_as_dalek() {
        for i in 0..64u8 {
            let seed = [i.wrapping_mul(37).wrapping_add(1); 32];
            let ours = SigningKey::from_seed(&seed);
            let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
            assert_eq!(ours.verifying_key(), dalek.verifying_key());
            let msg = vec![i; i as usize * 3];
            let sig = ours.sign(&msg);
            assert_eq!(sig, dalek.sign(&msg).to_bytes());
            assert!(ours
                .verifying_key()
                .verify_strict(&msg, &Signature::from_bytes(&sig))
                .is_ok());
        }
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let seed: [u8; 32] =
            hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .try_into()
                .unwrap();
        let key = SigningKey::from_seed(&seed);
        assert_eq!(
            key.verifying_key().as_bytes().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        assert_eq!(
            key.sign(b"").to_vec(),
            hex(concat!(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
                "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            ))
        );
    }

    #[test]
    fn generated_keys_differ_and_verify() {
        let a = SigningKey::generate();
        let b = SigningKey::generate();
        assert_ne!(a.verifying_key(), b.verifying_key());
        let sig = Signature::from_bytes(&a.sign(b"m"));
        assert!(a.verifying_key().verify(b"m", &sig).is_ok());
        assert!(b.verifying_key().verify(b"m", &sig).is_err());
        assert!(!format!("{a:?}").is_empty());
    }
}
