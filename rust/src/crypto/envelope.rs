//! The envelope wire format. All integers are big-endian.
//!
//! ```text
//! header (also the AEAD associated data):
//!   "SYM1" | version u8 (=1) | kind u8 (0 direct, 1 topic) | id [16] | timestamp_ns u64
//!   | sender_len u8 | sender | recipient_len u16 | recipient (agent id or topic)
//!   | sender_key_id [8] | recipient_key_id [8] (topic: group key id) | nonce [12]
//!   | content_type_len u8 | content_type
//! body:      ciphertext_len u32 | ciphertext (with the 16-byte GCM tag)
//! signature: flags u8 (bit 0: batch) | ed25519 signature [64]
//!            [batch: leaf index u32 | batch size u32 | path_len u8 | path [32 * path_len]]
//! ```

use sha2::{Digest, Sha256};

use super::merkle::{Hash, Tree};
use super::{CryptoError, Result};

pub const MAGIC: &[u8; 4] = b"SYM1";
pub const VERSION: u8 = 1;
pub const KIND_DIRECT: u8 = 0;
pub const KIND_TOPIC: u8 = 1;
pub const FLAG_BATCH: u8 = 1;
pub const TAG_LEN: usize = 16;
/// Largest plaintext a single envelope carries (16 MiB); larger payloads must be chunked.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// An envelope header. Its strings borrow the bytes it was parsed from (or the caller's
/// arguments when sealing), so neither direction allocates per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub kind: u8,
    pub id: [u8; 16],
    pub timestamp_ns: u64,
    pub sender: &'a str,
    pub recipient: &'a str,
    pub sender_key: [u8; 8],
    pub recipient_key: [u8; 8],
    pub nonce: [u8; 12],
    pub content_type: &'a str,
}

/// A batch envelope's place in its signed Merkle tree; the path borrows the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchProof<'a> {
    pub index: u32,
    pub size: u32,
    /// Sibling hashes bottom-up, 32 bytes each.
    pub path: &'a [u8],
}

impl BatchProof<'_> {
    /// Number of sibling hashes in the path.
    pub fn len(&self) -> usize {
        self.path.len() / 32
    }

    pub fn is_empty(&self) -> bool {
        self.path.is_empty()
    }

    /// The `i`-th sibling hash, if the path has one.
    pub fn node(&self, i: usize) -> Option<&Hash> {
        self.path
            .get(i * 32..i * 32 + 32)
            .map(|s| s.try_into().expect("32 bytes"))
    }
}

/// A parsed envelope borrowing the bytes it came from.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub header: Header<'a>,
    /// Exactly the bytes the AEAD authenticates and the leaf hash covers.
    pub header_bytes: &'a [u8],
    pub ciphertext: &'a [u8],
    pub signature: [u8; 64],
    pub batch: Option<BatchProof<'a>>,
}

pub fn id_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn invalid(what: &'static str, detail: String) -> CryptoError {
    CryptoError::Invalid { what, detail }
}

/// Append the header bytes for `h` to `out`.
pub fn write_header(h: &Header<'_>, out: &mut Vec<u8>) -> Result<()> {
    if h.sender.len() > u8::MAX as usize {
        return Err(invalid(
            "sender",
            format!("at most 255 bytes, got {}", h.sender.len()),
        ));
    }
    if h.recipient.len() > u16::MAX as usize {
        return Err(invalid(
            "recipient",
            format!("at most 65535 bytes, got {}", h.recipient.len()),
        ));
    }
    if h.content_type.len() > u8::MAX as usize {
        return Err(invalid(
            "content_type",
            format!("at most 255 bytes, got {}", h.content_type.len()),
        ));
    }
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(h.kind);
    out.extend_from_slice(&h.id);
    out.extend_from_slice(&h.timestamp_ns.to_be_bytes());
    out.push(h.sender.len() as u8);
    out.extend_from_slice(h.sender.as_bytes());
    out.extend_from_slice(&(h.recipient.len() as u16).to_be_bytes());
    out.extend_from_slice(h.recipient.as_bytes());
    out.extend_from_slice(&h.sender_key);
    out.extend_from_slice(&h.recipient_key);
    out.extend_from_slice(&h.nonce);
    out.push(h.content_type.len() as u8);
    out.extend_from_slice(h.content_type.as_bytes());
    Ok(())
}

/// The leaf hash a signature covers: header, ciphertext length and ciphertext.
pub fn leaf(header_bytes: &[u8], ciphertext: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(b"symbi.bus.leaf.v1");
    h.update(header_bytes);
    h.update((ciphertext.len() as u32).to_be_bytes());
    h.update(ciphertext);
    h.finalize().into()
}

/// Append the signature of a message signed on its own.
pub fn write_single_signature(sig: &[u8; 64], out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(sig);
}

/// Append a batch signature and leaf `index`'s audit path in `tree`.
pub fn write_batch_signature(sig: &[u8; 64], index: usize, tree: &Tree, out: &mut Vec<u8>) {
    out.push(FLAG_BATCH);
    out.extend_from_slice(sig);
    out.extend_from_slice(&(index as u32).to_be_bytes());
    out.extend_from_slice(&(tree.size() as u32).to_be_bytes());
    let at = out.len();
    out.push(0);
    let n = tree.write_path(index, out);
    out[at] = n as u8;
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                CryptoError::Malformed(format!("ends inside {what} (at byte {})", self.pos))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.arr(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.arr(what)?))
    }
    fn string(&mut self, n: usize, what: &str) -> Result<&'a str> {
        let b = self.take(n, what)?;
        std::str::from_utf8(b).map_err(|_| CryptoError::Malformed(format!("{what} is not UTF-8")))
    }
}

pub fn parse(buf: &[u8]) -> Result<Envelope<'_>> {
    let mut c = Cursor { buf, pos: 0 };
    if c.take(4, "magic")? != MAGIC {
        return Err(CryptoError::Malformed("bad magic bytes".into()));
    }
    let version = c.u8("version")?;
    if version != VERSION {
        return Err(CryptoError::Malformed(format!(
            "unsupported version {version}"
        )));
    }
    let kind = c.u8("kind")?;
    if kind != KIND_DIRECT && kind != KIND_TOPIC {
        return Err(CryptoError::Malformed(format!("unknown kind {kind}")));
    }
    let id = c.arr::<16>("id")?;
    let timestamp_ns = u64::from_be_bytes(c.arr("timestamp")?);
    let n = c.u8("sender length")? as usize;
    let sender = c.string(n, "sender")?;
    let n = c.u16("recipient length")? as usize;
    let recipient = c.string(n, "recipient")?;
    let sender_key = c.arr::<8>("sender key id")?;
    let recipient_key = c.arr::<8>("recipient key id")?;
    let nonce = c.arr::<12>("nonce")?;
    let n = c.u8("content type length")? as usize;
    let content_type = c.string(n, "content type")?;
    let header_bytes = &buf[..c.pos];
    let n = c.u32("ciphertext length")? as usize;
    if !(TAG_LEN..=MAX_PAYLOAD + TAG_LEN).contains(&n) {
        return Err(CryptoError::Malformed(format!(
            "ciphertext length {n} out of range"
        )));
    }
    let ciphertext = c.take(n, "ciphertext")?;
    let flags = c.u8("flags")?;
    if flags & !FLAG_BATCH != 0 {
        return Err(CryptoError::Malformed(format!("unknown flags {flags:#x}")));
    }
    let signature = c.arr::<64>("signature")?;
    let batch = if flags & FLAG_BATCH != 0 {
        let index = c.u32("batch index")?;
        let size = c.u32("batch size")?;
        let n = c.u8("path length")? as usize;
        let path = c.take(32 * n, "path")?;
        Some(BatchProof { index, size, path })
    } else {
        None
    };
    if c.pos != buf.len() {
        return Err(CryptoError::Malformed(format!(
            "{} trailing bytes after the signature",
            buf.len() - c.pos
        )));
    }
    Ok(Envelope {
        header: Header {
            kind,
            id,
            timestamp_ns,
            sender,
            recipient,
            sender_key,
            recipient_key,
            nonce,
            content_type,
        },
        header_bytes,
        ciphertext,
        signature,
        batch,
    })
}
