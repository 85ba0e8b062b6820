//! Ed25519 keys for the audit trail: generation, the key files, signing and batch
//! verification.
//!
//! A store directory holds `audit.key` (the 32-byte secret seed, mode 0600, created
//! exclusively) and `audit.pub` (the 32-byte public key). Verification needs only
//! `audit.pub` (or a public key the caller pins). The key id written into every event is
//! the first 8 bytes of SHA-256(public key), in hex.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

pub use crate::signing::SigningKey;
use sha2::{Digest, Sha256};

use super::AuditError;

pub const SECRET_FILE: &str = "audit.key";
pub const PUBLIC_FILE: &str = "audit.pub";

/// Hex key id of a public key: the first 8 bytes of its SHA-256.
pub fn key_id(vk: &VerifyingKey) -> String {
    let d = Sha256::digest(vk.as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system random source failed");
    b
}

pub fn generate() -> SigningKey {
    SigningKey::generate()
}

fn key_err(path: &Path, detail: impl Into<String>) -> AuditError {
    AuditError::Key {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

pub fn parse_public(bytes: &[u8], path: &Path) -> Result<VerifyingKey, AuditError> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| {
        key_err(
            path,
            format!("a public key is 32 bytes, this one is {}", bytes.len()),
        )
    })?;
    VerifyingKey::from_bytes(&arr)
        .map_err(|e| key_err(path, format!("not a valid Ed25519 public key: {e}")))
}

pub fn load_public(dir: &Path) -> Result<VerifyingKey, AuditError> {
    let path = dir.join(PUBLIC_FILE);
    let bytes = fs::read(&path).map_err(|e| {
        key_err(
            &path,
            format!("cannot read the public key ({e}); verification needs the {PUBLIC_FILE} the store was written with"),
        )
    })?;
    parse_public(&bytes, &path)
}

/// Load the signing key of `dir`, or create one (and its public key) when there is none.
pub fn load_or_create(dir: &Path) -> Result<SigningKey, AuditError> {
    let sk_path = dir.join(SECRET_FILE);
    let pk_path = dir.join(PUBLIC_FILE);
    if sk_path.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(&sk_path).map_err(|e| AuditError::io("stat", &sk_path, e))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(key_err(
                    &sk_path,
                    format!(
                        "the secret key is readable by others (mode {mode:o}); run `chmod 600 {}`",
                        sk_path.display()
                    ),
                ));
            }
        }
        let bytes = fs::read(&sk_path).map_err(|e| AuditError::io("read", &sk_path, e))?;
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            key_err(
                &sk_path,
                format!(
                    "a secret key file holds 32 bytes, this one has {}",
                    bytes.len()
                ),
            )
        })?;
        let sk = SigningKey::from_seed(&seed);
        match fs::read(&pk_path) {
            Ok(pk) => {
                if pk.as_slice() != sk.verifying_key().as_bytes() {
                    return Err(key_err(
                        &pk_path,
                        "the public key does not belong to audit.key; restore the matching pair",
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_file(&pk_path, sk.verifying_key().as_bytes(), 0o644)?;
            }
            Err(e) => return Err(AuditError::io("read", &pk_path, e)),
        }
        return Ok(sk);
    }
    let mut seed = random_bytes::<32>();
    let sk = SigningKey::from_seed(&seed);
    let written = write_file(&sk_path, &seed, 0o600);
    seed.fill(0);
    written?;
    write_file(&pk_path, sk.verifying_key().as_bytes(), 0o644)?;
    sync_dir(dir)?;
    Ok(sk)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AuditError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(path)
        .map_err(|e| AuditError::io("create", path, e))?;
    f.write_all(bytes)
        .map_err(|e| AuditError::io("write", path, e))?;
    f.sync_all().map_err(|e| AuditError::io("fsync", path, e))
}

pub fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        let d = fs::File::open(dir).map_err(|e| AuditError::io("open", dir, e))?;
        d.sync_all().map_err(|e| AuditError::io("fsync", dir, e))?;
    }
    Ok(())
}

pub fn sign(sk: &SigningKey, msg: &[u8]) -> [u8; 64] {
    sk.sign(msg)
}

/// Sign many messages, spread over the available cores when the batch is large.
pub fn sign_many(sk: &SigningKey, msgs: &[&[u8]]) -> Vec<[u8; 64]> {
    // A signature costs ~15 us and a scoped thread ~20 us to start: split from 64 events,
    // so the group commits of many concurrent appenders (a few hundred events) use every core.
    let threads = worker_count(msgs.len(), 32);
    if threads <= 1 {
        return msgs.iter().map(|m| sign(sk, m)).collect();
    }
    let chunk = msgs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = msgs
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(|m| sign(sk, m)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signing thread panicked"))
            .collect()
    })
}

fn worker_count(items: usize, min_per_thread: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(items / min_per_thread).max(1)
}

fn verify_chunk(vk: &VerifyingKey, msgs: &[&[u8]], sigs: &[[u8; 64]]) -> Option<usize> {
    let parsed: Vec<Signature> = sigs.iter().map(Signature::from_bytes).collect();
    let keys = vec![*vk; msgs.len()];
    if ed25519_dalek::verify_batch(msgs, &parsed, &keys).is_ok() {
        return None;
    }
    // The batch failed: find the first bad signature one by one.
    msgs.iter()
        .zip(&parsed)
        .position(|(m, s)| vk.verify(m, s).is_err())
        .or(Some(0))
}

/// Index of the first signature that does not verify, or `None` when all do. Batches of
/// signatures are checked with Ed25519 batch verification, in parallel over the cores.
pub fn first_bad_signature(vk: &VerifyingKey, msgs: &[&[u8]], sigs: &[[u8; 64]]) -> Option<usize> {
    assert_eq!(msgs.len(), sigs.len());
    const CHUNK: usize = 1024;
    let threads = worker_count(msgs.len(), 512);
    if threads <= 1 {
        return msgs
            .chunks(CHUNK)
            .zip(sigs.chunks(CHUNK))
            .enumerate()
            .find_map(|(i, (m, s))| verify_chunk(vk, m, s).map(|j| i * CHUNK + j));
    }
    let per = msgs.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let handles: Vec<_> =
            msgs.chunks(per)
                .zip(sigs.chunks(per))
                .map(|(m, s)| {
                    sc.spawn(move || {
                        m.chunks(CHUNK).zip(s.chunks(CHUNK)).enumerate().find_map(
                            |(i, (mc, sc))| verify_chunk(vk, mc, sc).map(|j| i * CHUNK + j),
                        )
                    })
                })
                .collect();
        handles.into_iter().enumerate().find_map(|(t, h)| {
            h.join()
                .expect("verify thread panicked")
                .map(|j| t * per + j)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_batch_verify() {
        let sk = generate();
        let vk = sk.verifying_key();
        let owned: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_be_bytes().repeat(10)).collect();
        let msgs: Vec<&[u8]> = owned.iter().map(|m| m.as_slice()).collect();
        let mut sigs = sign_many(&sk, &msgs);
        assert_eq!(first_bad_signature(&vk, &msgs, &sigs), None);
        sigs[2100][5] ^= 1;
        sigs[2500][5] ^= 1;
        assert_eq!(first_bad_signature(&vk, &msgs, &sigs), Some(2100));
    }

    #[test]
    fn other_key_fails() {
        let sk = generate();
        let other = generate().verifying_key();
        let m: &[u8] = b"hello";
        let s = sign_many(&sk, &[m]);
        assert_eq!(first_bad_signature(&other, &[m], &s), Some(0));
    }

    #[test]
    fn key_files_round_trip_with_private_perms() {
        let dir =
            std::env::temp_dir().join(format!("symbi-keys-{}", u64::from_be_bytes(random_bytes())));
        fs::create_dir_all(&dir).unwrap();
        let a = load_or_create(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        // The same secret: the same public key and (deterministic) the same signatures.
        assert_eq!(a.verifying_key(), b.verifying_key());
        assert_eq!(a.sign(b"m"), b.sign(b"m"));
        assert_eq!(load_public(&dir).unwrap(), a.verifying_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600);
            fs::set_permissions(dir.join(SECRET_FILE), fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(load_or_create(&dir), Err(AuditError::Key { .. })));
        }
        assert_eq!(key_id(&a.verifying_key()).len(), 16);
        fs::remove_dir_all(&dir).unwrap();
    }
}
