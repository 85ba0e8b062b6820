//! The durable append-only audit store.
//!
//! A store lives in a directory (or in memory, for tests and ephemeral runtimes):
//!
//! ```text
//! audit.key / audit.pub               the Ed25519 key pair (see keys.rs)
//! 00000000000000000000.seg ...        segment files of framed event records (see segment.rs)
//! checkpoints.log                     framed, signed Merkle tree heads
//! ```
//!
//! **Group commit.** [`Store::append_batch`] takes many events at once: it numbers, chains
//! and signs them (signing spread over the cores), writes them with one `write` and makes
//! them durable with one `fdatasync` before it returns. The Python facade runs one batcher
//! task that drains every append queued while the previous batch was syncing and hands the
//! lot to one `append_batch` call with the GIL released. We batch on the Python side rather
//! than with a Rust writer thread because the waiters are anyio tasks: resolving them from
//! the event loop that owns them needs no cross-thread wake-ups, works the same on asyncio
//! and trio, and the batch boundary falls naturally at "everything queued while the disk
//! was busy", which is what group commit wants.
//!
//! **Recovery.** On open, a torn tail (an unfinished frame at the end of the last segment or
//! the checkpoint file, see [`segment`]) is moved into `<file>.torn` (never deleted) and cut
//! off, and reported in [`OpenReport`]. Damage anywhere else is never repaired: it is
//! counted in the report and [`verify`] names it. The store refuses to open for appending
//! (an integrity error) when appending would reuse the sequence numbers of events that may
//! have been acknowledged: a complete but damaged last record, fewer events than a signed
//! checkpoint covers, or a missing checkpoint file.
//!
//! **Checkpoints.** Every `checkpoint_every` events (and on close) the store signs the
//! RFC 6962 Merkle tree head over all chain hashes so far. Checkpoint body:
//! `"symbi.audit.checkpoint.v1\0" || size u64 BE || root (32) || timestamp_ns i64 BE ||
//! key_id len u16 BE || key_id || signature (64)`; the signature covers everything before it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::signing::SigningKey;

use super::chain::{self, Hash, GENESIS, HASH_SIZE};
use super::event::{self, Fields, Record};
use super::merkle::{self, Compact};
use super::segment::{self, Frame};
use super::{keys, AuditError, IntegrityKind};

pub const CHECKPOINT_FILE: &str = "checkpoints.log";
pub const CHECKPOINT_DOMAIN: &[u8] = b"symbi.audit.checkpoint.v1\0";

#[derive(Debug, Clone)]
pub struct Options {
    /// Roll to a new segment file once the current one would pass this many bytes.
    pub segment_bytes: u64,
    /// Cut a signed checkpoint every this many events (0: only on close and on demand).
    pub checkpoint_every: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            checkpoint_every: 1024,
        }
    }
}

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub agent_id: String,
    pub event_type: String,
    pub details: Vec<u8>,
    pub timestamp_ns: i64,
}

/// One stored event with everything Python needs to show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub event_id: [u8; 16],
    pub timestamp_ns: i64,
    pub key_id: String,
    pub agent_id: String,
    pub event_type: String,
    pub details: Vec<u8>,
    pub prev: Hash,
    pub chain: Hash,
    pub sig: [u8; 64],
}

impl StoredEvent {
    fn from_record(r: &Record<'_>, prev: Hash) -> Self {
        let f = &r.fields;
        StoredEvent {
            seq: f.seq,
            event_id: f.event_id,
            timestamp_ns: f.timestamp_ns,
            key_id: f.key_id.to_owned(),
            agent_id: f.agent_id.to_owned(),
            event_type: f.event_type.to_owned(),
            details: f.details.to_vec(),
            prev,
            chain: r.chain,
            sig: r.sig,
        }
    }
}

/// A signed Merkle tree head over the first `size` chain hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub size: u64,
    pub root: Hash,
    pub timestamp_ns: i64,
    pub key_id: String,
    pub sig: [u8; 64],
}

impl Checkpoint {
    pub fn signed_bytes(size: u64, root: &Hash, timestamp_ns: i64, key_id: &str) -> Vec<u8> {
        let mut b = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 50 + key_id.len());
        b.extend_from_slice(CHECKPOINT_DOMAIN);
        b.extend_from_slice(&size.to_be_bytes());
        b.extend_from_slice(root);
        b.extend_from_slice(&timestamp_ns.to_be_bytes());
        b.extend_from_slice(&(key_id.len() as u16).to_be_bytes());
        b.extend_from_slice(key_id.as_bytes());
        b
    }

    fn new(sk: &SigningKey, key_id: &str, size: u64, root: Hash) -> Self {
        let ts = now_ns();
        let sig = keys::sign(sk, &Self::signed_bytes(size, &root, ts, key_id));
        Checkpoint {
            size,
            root,
            timestamp_ns: ts,
            key_id: key_id.to_owned(),
            sig,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        let mut b = Self::signed_bytes(self.size, &self.root, self.timestamp_ns, &self.key_id);
        b.extend_from_slice(&self.sig);
        b
    }

    pub fn parse(body: &[u8]) -> Option<Self> {
        let n = body.len().checked_sub(64)?;
        let (signed, sig) = body.split_at(n);
        let rest = signed.strip_prefix(CHECKPOINT_DOMAIN)?;
        if rest.len() < 50 {
            return None;
        }
        let size = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let root: Hash = rest[8..40].try_into().ok()?;
        let timestamp_ns = i64::from_be_bytes(rest[40..48].try_into().ok()?);
        let klen = u16::from_be_bytes(rest[48..50].try_into().ok()?) as usize;
        if rest.len() != 50 + klen {
            return None;
        }
        let key_id = std::str::from_utf8(&rest[50..]).ok()?.to_owned();
        Some(Checkpoint {
            size,
            root,
            timestamp_ns,
            key_id,
            sig: sig.try_into().ok()?,
        })
    }

    pub fn verify_signature(&self, vk: &VerifyingKey) -> bool {
        self.key_id == keys::key_id(vk)
            && vk
                .verify(
                    &Self::signed_bytes(self.size, &self.root, self.timestamp_ns, &self.key_id),
                    &Signature::from_bytes(&self.sig),
                )
                .is_ok()
    }
}

/// What opening a store found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub events: u64,
    pub checkpoints: usize,
    /// Bytes cut off a torn tail, the file they were cut from, and the `<file>.torn`
    /// quarantine file they were moved to (appended, so earlier cuts stay there too).
    pub truncated_bytes: u64,
    pub truncated_file: Option<String>,
    pub quarantine_file: Option<String>,
    /// Damaged regions that were left alone (verification will name them).
    pub damaged_regions: usize,
}

/// Everything verification established about an intact trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub head: Hash,
    pub segments: usize,
    pub checkpoints: usize,
    pub key_id: String,
}

/// Which events a query returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub agent: Option<String>,
    pub event_type: Option<String>,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub after_seq: Option<u64>,
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, f: &Fields<'_>) -> bool {
        self.agent.as_deref().is_none_or(|a| a == f.agent_id)
            && self.event_type.as_deref().is_none_or(|t| t == f.event_type)
            && self.since_ns.is_none_or(|s| f.timestamp_ns >= s)
            && self.until_ns.is_none_or(|u| f.timestamp_ns < u)
            && self.after_seq.is_none_or(|a| f.seq > a)
    }
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

// ----------------------------------------------------------------------------- sources

/// A read-only view of a trail's records: what verification and queries walk.
#[derive(Debug, Clone)]
pub enum Source {
    Memory(Vec<Arc<[u8]>>),
    /// Segment files and how many bytes of each to read.
    Dir(Vec<(PathBuf, u64)>),
}

/// One item of a walk over a source.
pub enum Item<'a> {
    Body(&'a [u8]),
    /// A region of a segment holding no good record.
    Bad {
        file: &'a Path,
        offset: usize,
        torn_tail: bool,
    },
    /// The end of a segment: bodies borrowed from it are released after this.
    EndSegment,
}

fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>, AuditError> {
    let mut buf = fs::read(path).map_err(|e| AuditError::io("read", path, e))?;
    buf.truncate(len as usize);
    Ok(buf)
}

impl Source {
    /// Call `f` on each item in log order until it returns `false`.
    pub fn walk(&self, mut f: impl FnMut(Item<'_>) -> bool) -> Result<(), AuditError> {
        match self {
            Source::Memory(bodies) => {
                for b in bodies {
                    if !f(Item::Body(b)) {
                        break;
                    }
                }
                f(Item::EndSegment);
            }
            Source::Dir(segs) => {
                let last = segs.len().saturating_sub(1);
                for (i, (path, len)) in segs.iter().enumerate() {
                    let buf = read_prefix(path, *len)?;
                    let scan = segment::scan(&buf, event::DOMAIN);
                    let tail = if i == last {
                        scan.torn_tail(&buf)
                    } else {
                        None
                    };
                    let mut items: Vec<(usize, Option<&Frame>)> = scan
                        .frames
                        .iter()
                        .map(|fr| (fr.offset, Some(fr)))
                        .chain(scan.bad.iter().map(|r| (r.start, None)))
                        .collect();
                    items.sort_by_key(|(o, _)| *o);
                    let mut go = true;
                    for (off, fr) in items {
                        let item = match fr {
                            Some(fr) => Item::Body(&buf[fr.body.clone()]),
                            None => Item::Bad {
                                file: path,
                                offset: off,
                                torn_tail: tail == Some(off),
                            },
                        };
                        if !f(item) {
                            go = false;
                            break;
                        }
                    }
                    if !go || !f(Item::EndSegment) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn segments(&self) -> usize {
        match self {
            Source::Memory(_) => 1,
            Source::Dir(s) => s.len(),
        }
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| AuditError::io("list", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| AuditError::io("list", dir, e))?;
        if let Some(first) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_segment_name)
        {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A source over every segment in `dir`, read to its current end.
pub fn dir_source(dir: &Path) -> Result<Source, AuditError> {
    let mut segs = Vec::new();
    for (_, p) in list_segments(dir)? {
        let len = fs::metadata(&p)
            .map_err(|e| AuditError::io("stat", &p, e))?
            .len();
        segs.push((p, len));
    }
    Ok(Source::Dir(segs))
}

/// The checkpoint file as read: its good checkpoints and what is wrong with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointLog {
    /// Checkpoints of the good frames, in file order (signatures not yet checked).
    pub checkpoints: Vec<Checkpoint>,
    /// The file does not exist.
    pub missing: bool,
    /// Byte offset of the first damaged region (a bad frame, or one that does not parse).
    pub damaged_at: Option<usize>,
    /// Start of a torn tail (an unfinished write at the end), if any.
    pub torn_at: Option<usize>,
    /// Number of damaged regions, the torn tail not counted.
    pub damaged_regions: usize,
}

impl CheckpointLog {
    pub fn parse(buf: &[u8]) -> Self {
        let scan = segment::scan(buf, CHECKPOINT_DOMAIN);
        let torn_at = scan.torn_tail(buf);
        let mut out = CheckpointLog {
            torn_at,
            damaged_regions: scan.bad.len() - usize::from(torn_at.is_some()),
            damaged_at: scan.bad.first().map(|r| r.start),
            ..CheckpointLog::default()
        };
        for fr in &scan.frames {
            match Checkpoint::parse(&buf[fr.body.clone()]) {
                Some(c) => out.checkpoints.push(c),
                None => {
                    out.damaged_regions += 1;
                    out.damaged_at = Some(out.damaged_at.map_or(fr.offset, |b| b.min(fr.offset)));
                }
            }
        }
        out
    }

    /// What is wrong with the file itself, for a trail of `events` events (a torn tail is
    /// accepted when `allow_torn_tail`).
    fn damage(&self, events: u64, allow_torn_tail: bool) -> Option<String> {
        if self.missing && events > 0 {
            return Some(format!(
                "{CHECKPOINT_FILE} is missing but the trail holds {events} events, so events \
                 cut off its end cannot be detected"
            ));
        }
        let at = self.damaged_at?;
        if allow_torn_tail && self.torn_at == Some(at) {
            return None;
        }
        let what = if self.torn_at == Some(at) {
            "a torn tail"
        } else {
            "damaged bytes"
        };
        Some(format!(
            "{what} at byte {at} of {CHECKPOINT_FILE} (bad length, CRC or layout); a \
             checkpoint there may be lost, so events cut off the trail's end may go unnoticed"
        ))
    }
}

/// The checkpoint file of `dir`.
pub fn read_checkpoints(dir: &Path) -> Result<CheckpointLog, AuditError> {
    let path = dir.join(CHECKPOINT_FILE);
    match fs::read(&path) {
        Ok(b) => Ok(CheckpointLog::parse(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CheckpointLog {
            missing: true,
            ..CheckpointLog::default()
        }),
        Err(e) => Err(AuditError::io("read", &path, e)),
    }
}

// ------------------------------------------------------------------------ verification

/// Walk `source` and check everything: framing, sequence order, the hash chain, every
/// signature (batch-verified per segment) and every checkpoint. The first problem, by
/// sequence number, is returned as [`AuditError::Integrity`]. Problems of the checkpoint
/// file itself (damage, a checkpoint with a bad signature) name no event: they are
/// reported, with kind `checkpoint`, only when every event is intact.
pub fn verify(
    source: &Source,
    vk: &VerifyingKey,
    ck_log: &CheckpointLog,
    allow_torn_tail: bool,
) -> Result<VerifyReport, AuditError> {
    let kid = keys::key_id(vk);
    let checkpoints = &ck_log.checkpoints;
    // Only checkpoints this key signed say anything about the events; the others are
    // reported as checkpoint damage (after any bad event, which a wrong key also fails).
    let (good, forged): (Vec<&Checkpoint>, Vec<&Checkpoint>) =
        checkpoints.iter().partition(|c| c.verify_signature(vk));
    let mut cks = good;
    cks.sort_by_key(|c| c.size);
    let mut ck_i = 0;
    while ck_i < cks.len() && cks[ck_i].size == 0 {
        ck_i += 1;
    }

    let mut expected: u64 = 0;
    let mut prev: Hash = GENESIS;
    let mut compact = Compact::default();
    // (seq, error) of the first structural problem.
    let mut found: Option<(u64, AuditError)> = None;
    // Signed messages and signatures of the current segment, with their sequence numbers.
    let mut msgs: Vec<(u64, Vec<u8>, [u8; 64])> = Vec::new();
    let mut sig_error: Option<(u64, AuditError)> = None;
    let mut position: usize = 0;
    let mut lookahead_from: Option<(usize, u64, u64)> = None;

    let flush = |msgs: &mut Vec<(u64, Vec<u8>, [u8; 64])>,
                 sig_error: &mut Option<(u64, AuditError)>| {
        if sig_error.is_some() || msgs.is_empty() {
            msgs.clear();
            return;
        }
        let m: Vec<&[u8]> = msgs.iter().map(|(_, b, _)| b.as_slice()).collect();
        let s: Vec<[u8; 64]> = msgs.iter().map(|(_, _, s)| *s).collect();
        if let Some(i) = keys::first_bad_signature(vk, &m, &s) {
            let seq = msgs[i].0;
            *sig_error = Some((
                seq,
                AuditError::integrity(
                    seq,
                    IntegrityKind::Signature,
                    "the event's Ed25519 signature does not verify",
                ),
            ));
        }
        msgs.clear();
    };

    source.walk(|item| {
            if matches!(item, Item::EndSegment) {
                flush(&mut msgs, &mut sig_error);
                return sig_error.is_none();
            }
            position += 1;
            let body = match item {
                Item::EndSegment => return true,
                Item::Bad { torn_tail: true, .. } if allow_torn_tail => return false,
                Item::Bad { file, offset, torn_tail } => {
                    let what = if torn_tail { "a torn tail" } else { "damaged bytes" };
                    found = Some((
                        expected,
                        AuditError::integrity(
                            expected,
                            IntegrityKind::Corrupt,
                            format!("{what} at byte {offset} of {} (bad length or CRC)", file.display()),
                        ),
                    ));
                    return false;
                }
                Item::Body(b) => b,
            };
            let Some(rec) = Record::parse(body) else {
                found = Some((
                    expected,
                    AuditError::integrity(expected, IntegrityKind::Corrupt, "a record with a good CRC does not parse"),
                ));
                return false;
            };
            let seq = rec.fields.seq;
            if seq != expected {
                if seq < expected {
                    found = Some((
                        expected,
                        AuditError::integrity(
                            expected,
                            IntegrityKind::Order,
                            format!("found event {seq} where event {expected} belongs (duplicated or moved back)"),
                        ),
                    ));
                } else {
                    lookahead_from = Some((position, expected, seq));
                }
                return false;
            }
            if rec.fields.key_id != kid {
                found = Some((
                    seq,
                    AuditError::integrity(
                        seq,
                        IntegrityKind::Signature,
                        format!("signed by key {}, but the trail's key is {kid}", rec.fields.key_id),
                    ),
                ));
                return false;
            }
            if chain::link(&prev, seq, rec.canonical()) != rec.chain {
                found = Some((
                    seq,
                    AuditError::integrity(seq, IntegrityKind::Link, "the chain hash does not match this event and the one before it"),
                ));
                return false;
            }
            msgs.push((seq, rec.signed_message().to_vec(), rec.sig));
            prev = rec.chain;
            compact.push(&rec.chain);
            expected += 1;
            while ck_i < cks.len() && cks[ck_i].size == expected {
                if compact.root() != cks[ck_i].root {
                    found = Some((
                        expected - 1,
                        AuditError::integrity(
                            expected - 1,
                            IntegrityKind::Link,
                            format!("the Merkle root over the first {expected} events differs from the signed checkpoint"),
                        ),
                    ));
                    return false;
                }
                ck_i += 1;
            }
            true
    })?;
    flush(&mut msgs, &mut sig_error);

    if let Some((pos, exp, got)) = lookahead_from {
        // Is the expected event further on (reordered) or nowhere (missing)?
        let mut i = 0usize;
        let mut later = false;
        source.walk(|item| {
            if matches!(item, Item::EndSegment) {
                return true;
            }
            i += 1;
            if i > pos {
                if let Item::Body(b) = item {
                    if event::peek_seq(b) == Some(exp) {
                        later = true;
                        return false;
                    }
                }
            }
            true
        })?;
        let (kind, what) = if later {
            (
                IntegrityKind::Order,
                "appears later in the trail (reordered)",
            )
        } else {
            (IntegrityKind::Missing, "is absent")
        };
        found = Some((
            exp,
            AuditError::integrity(
                exp,
                kind,
                format!("event {exp} {what}; found event {got} in its place"),
            ),
        ));
    }
    if found.is_none() && ck_i < cks.len() {
        let c = cks[ck_i];
        found = Some((
            expected,
            AuditError::integrity(
                expected,
                IntegrityKind::Missing,
                format!(
                    "a signed checkpoint covers {} events but the trail ends after {expected}",
                    c.size
                ),
            ),
        ));
    }
    let first = match (found, sig_error) {
        (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    if let Some((_, e)) = first {
        return Err(e);
    }
    if let Some(d) = ck_log.damage(expected, allow_torn_tail) {
        return Err(AuditError::checkpoint(d));
    }
    if let Some(c) = forged.first() {
        return Err(AuditError::checkpoint(format!(
            "the checkpoint over {} events does not carry a valid signature by key {kid} \
             (it names key {}): it was forged, damaged or signed by another key",
            c.size, c.key_id
        )));
    }
    Ok(VerifyReport {
        events: expected,
        head: prev,
        segments: source.segments(),
        checkpoints: checkpoints.len(),
        key_id: kid,
    })
}

/// Events of `source` that pass `filter`, in log order. Damaged regions are skipped.
pub fn query(source: &Source, filter: &Filter) -> Result<Vec<StoredEvent>, AuditError> {
    let mut out = Vec::new();
    let mut prev = GENESIS;
    let limit = filter.limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Ok(out);
    }
    source.walk(|item| {
        if let Item::Body(b) = item {
            if let Some(rec) = Record::parse(b) {
                if filter.matches(&rec.fields) {
                    out.push(StoredEvent::from_record(&rec, prev));
                    if out.len() >= limit {
                        return false;
                    }
                }
                prev = rec.chain;
            }
        }
        true
    })?;
    Ok(out)
}

// --------------------------------------------------------------------- the write pipeline

/// Where the next batch continues the trail: its first sequence number, the chain head and
/// the Merkle state it builds on, plus the signing key.
///
/// **Pipelining.** [`Tail::prepare`] (number, chain, sign: the CPU work) runs apart from
/// [`Store::commit`] (one write, one `fdatasync`: the disk wait), so the next batch can be
/// signed while the previous one syncs. A tail runs ahead of the durable trail while
/// prepared batches are in flight; they must be committed in the order they were prepared.
/// The Python bindings keep one tail behind its own lock and hand over from that lock to
/// the store's (hand-over-hand), which fixes the commit order to the prepare order.
#[derive(Clone)]
pub struct Tail {
    next_seq: u64,
    head: Hash,
    compact: Compact,
    signer: SigningKey,
    key_id: String,
    checkpoint_every: u64,
}

/// A batch numbered, chained and signed, not yet written.
pub struct Prepared {
    first_seq: u64,
    /// The chain head before the batch.
    prev: Hash,
    bodies: Vec<Vec<u8>>,
    /// The chain head and Merkle state after the batch.
    head: Hash,
    compact: Compact,
    /// Checkpoints the batch completes.
    checkpoints: Vec<Checkpoint>,
}

/// What a durable batch produced per event (the rest the caller already has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEvent {
    pub id: [u8; 16],
    pub chain: Hash,
    pub sig: [u8; 64],
}

/// A durable batch: events `first_seq..first_seq + events.len()`, the first chained to
/// `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub first_seq: u64,
    pub prev: Hash,
    pub key_id: String,
    pub events: Vec<CommittedEvent>,
}

impl Committed {
    /// The stored events, given the items the batch was prepared from.
    pub fn stored(&self, items: &[NewEvent]) -> Vec<StoredEvent> {
        let mut prev = self.prev;
        self.events
            .iter()
            .zip(items)
            .enumerate()
            .map(|(i, (e, it))| {
                let out = StoredEvent {
                    seq: self.first_seq + i as u64,
                    event_id: e.id,
                    timestamp_ns: it.timestamp_ns,
                    key_id: self.key_id.clone(),
                    agent_id: it.agent_id.clone(),
                    event_type: it.event_type.clone(),
                    details: it.details.clone(),
                    prev,
                    chain: e.chain,
                    sig: e.sig,
                };
                prev = e.chain;
                out
            })
            .collect()
    }
}

impl Tail {
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Number, chain and sign `items` (signing spread over the cores). The tail moves past
    /// the batch only when this succeeds.
    pub fn prepare(&mut self, items: &[NewEvent]) -> Result<Prepared, AuditError> {
        for it in items {
            event::validate(&it.agent_id, &it.event_type, &it.details)?;
        }
        let first_seq = self.next_seq;
        let prev = self.head;
        if items.is_empty() {
            return Ok(Prepared {
                first_seq,
                prev,
                bodies: Vec::new(),
                head: prev,
                compact: self.compact.clone(),
                checkpoints: Vec::new(),
            });
        }
        first_seq
            .checked_add(items.len() as u64)
            .ok_or(AuditError::SequenceOverflow {
                first_seq,
                count: items.len(),
            })?;
        let mut ids = vec![0u8; 16 * items.len()];
        getrandom::fill(&mut ids).map_err(|e| AuditError::Io {
            op: "random",
            path: "the OS random source".into(),
            detail: e.to_string(),
        })?;
        // Canonical bytes and chain hashes, in order.
        let mut bodies: Vec<Vec<u8>> = Vec::with_capacity(items.len());
        let mut head = prev;
        for (i, it) in items.iter().enumerate() {
            let mut id: [u8; 16] = ids[16 * i..16 * i + 16].try_into().expect("16 bytes");
            id[6] = (id[6] & 0x0f) | 0x40; // uuid version 4
            id[8] = (id[8] & 0x3f) | 0x80; // RFC 4122 variant
            let f = Fields {
                seq: first_seq + i as u64,
                event_id: id,
                timestamp_ns: it.timestamp_ns,
                key_id: &self.key_id,
                agent_id: &it.agent_id,
                event_type: &it.event_type,
                details: &it.details,
            };
            let mut body = Vec::with_capacity(event::encoded_len(&f) + event::TRAILER);
            event::encode_into(&f, &mut body);
            head = chain::link(&head, f.seq, &body);
            body.extend_from_slice(&head);
            bodies.push(body);
        }
        let msgs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
        let sigs = keys::sign_many(&self.signer, &msgs);
        for (b, s) in bodies.iter_mut().zip(&sigs) {
            b.extend_from_slice(s);
        }
        // Checkpoints that this batch completes.
        let mut compact = self.compact.clone();
        let mut checkpoints = Vec::new();
        for b in &bodies {
            let rec_chain: Hash = b[b.len() - event::TRAILER..b.len() - 64]
                .try_into()
                .expect("32 bytes");
            compact.push(&rec_chain);
            let every = self.checkpoint_every;
            if every > 0 && compact.size() % every == 0 {
                checkpoints.push(Checkpoint::new(
                    &self.signer,
                    &self.key_id,
                    compact.size(),
                    compact.root(),
                ));
            }
        }
        self.next_seq = first_seq + items.len() as u64;
        self.head = head;
        self.compact = compact.clone();
        Ok(Prepared {
            first_seq,
            prev,
            bodies,
            head,
            compact,
            checkpoints,
        })
    }
}

// ------------------------------------------------------------------------------ store

struct Active {
    file: File,
    path: PathBuf,
    len: u64,
}

enum Backing {
    Memory {
        bodies: Vec<Arc<[u8]>>,
    },
    Dir {
        dir: PathBuf,
        /// Closed segments and their lengths.
        sealed: Vec<(PathBuf, u64)>,
        active: Active,
        checkpoints: File,
    },
}

pub struct Store {
    backing: Backing,
    opts: Options,
    signer: SigningKey,
    vk: VerifyingKey,
    key_id: String,
    next_seq: u64,
    head: Hash,
    leaves: Vec<Hash>,
    compact: Compact,
    checkpoints: Vec<Checkpoint>,
    /// Where the checkpoint file was damaged when the store was opened (verify reports it).
    ck_damaged_at: Option<usize>,
    report: OpenReport,
    failed: Option<String>,
    closed: bool,
}

fn open_append(path: &Path, create_new: bool) -> Result<File, AuditError> {
    let mut o = OpenOptions::new();
    o.append(true);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    o.open(path).map_err(|e| AuditError::io("open", path, e))
}

fn truncate(path: &Path, at: u64) -> Result<(), AuditError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| AuditError::io("open", path, e))?;
    f.set_len(at)
        .map_err(|e| AuditError::io("truncate", path, e))?;
    f.sync_all().map_err(|e| AuditError::io("fsync", path, e))
}

/// Append `tail` (bytes about to be cut off `path`) to `<path>.torn`, durably: a torn tail
/// is almost surely an unacknowledged write, but the bytes are kept for an investigation.
fn quarantine(dir: &Path, path: &Path, tail: &[u8]) -> Result<PathBuf, AuditError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".torn");
    let q = PathBuf::from(name);
    let mut f = open_append(&q, false)?;
    f.write_all(tail)
        .map_err(|e| AuditError::io("write", &q, e))?;
    f.sync_all().map_err(|e| AuditError::io("fsync", &q, e))?;
    keys::sync_dir(dir)?;
    Ok(q)
}

impl Store {
    pub fn in_memory(opts: Options) -> Self {
        let signer = keys::generate();
        Self::with(
            Backing::Memory { bodies: Vec::new() },
            opts,
            signer,
            OpenReport::default(),
        )
    }

    fn with(backing: Backing, opts: Options, signer: SigningKey, report: OpenReport) -> Self {
        let vk = signer.verifying_key();
        Store {
            backing,
            opts,
            key_id: keys::key_id(&vk),
            signer,
            vk,
            next_seq: 0,
            head: GENESIS,
            leaves: Vec::new(),
            compact: Compact::default(),
            checkpoints: Vec::new(),
            ck_damaged_at: None,
            report,
            failed: None,
            closed: false,
        }
    }

    /// Open (creating if needed) the store in `dir`, moving a torn tail aside.
    ///
    /// Refuses (an integrity error, nothing changed on disk) when appending would reuse the
    /// sequence numbers of events that may have been acknowledged: see the module docs.
    pub fn open(dir: &Path, opts: Options) -> Result<Self, AuditError> {
        fs::create_dir_all(dir).map_err(|e| AuditError::io("create directory", dir, e))?;
        let signer = keys::load_or_create(dir)?;
        let vk = signer.verifying_key();
        let mut report = OpenReport::default();
        let segs = list_segments(dir)?;
        let mut leaves = Vec::new();
        let mut next_seq = 0u64;
        let mut head = GENESIS;
        let mut sealed = Vec::new();
        let mut last_len = 0u64;
        // (file, its bytes, where its torn tail starts): cut only once every check passed.
        let mut cuts: Vec<(PathBuf, Vec<u8>, usize)> = Vec::new();
        for (i, (_, path)) in segs.iter().enumerate() {
            let buf = fs::read(path).map_err(|e| AuditError::io("read", path, e))?;
            let scan = segment::scan(&buf, event::DOMAIN);
            let is_last = i + 1 == segs.len();
            let tail = scan.torn_tail(&buf).filter(|_| is_last);
            report.damaged_regions += scan.bad.len() - usize::from(tail.is_some());
            let mut last_parsed = false;
            for fr in &scan.frames {
                last_parsed = match Record::parse(&buf[fr.body.clone()]) {
                    Some(rec) => {
                        leaves.push(rec.chain);
                        next_seq = rec.fields.seq.saturating_add(1);
                        head = rec.chain;
                        true
                    }
                    None => {
                        report.damaged_regions += 1;
                        false
                    }
                };
            }
            if is_last {
                // The last record is complete but damaged: it may be an acknowledged event,
                // and the next append would take its sequence number.
                let bad_end = scan.bad_tail(&buf).filter(|_| tail.is_none()).or_else(|| {
                    scan.frames
                        .last()
                        .filter(|_| !last_parsed)
                        .map(|f| f.offset)
                });
                if let Some(at) = bad_end {
                    return Err(AuditError::integrity(
                        next_seq,
                        IntegrityKind::Corrupt,
                        format!(
                            "the last record of {} (from byte {at}) is complete but damaged \
                             (bad CRC or layout): not an unfinished write but maybe an \
                             acknowledged event, so the store will neither cut it nor append \
                             after it",
                            path.display()
                        ),
                    ));
                }
                last_len = match tail {
                    Some(at) => at as u64,
                    None => buf.len() as u64,
                };
                if let Some(at) = tail {
                    cuts.push((path.clone(), buf, at));
                }
            } else {
                sealed.push((path.clone(), buf.len() as u64));
            }
        }
        // The last segment is named by the first event written to it, and every event
        // before that was durable when it was created: fewer means events are missing.
        if let Some((first, path)) = segs.last().filter(|(first, _)| *first > next_seq) {
            return Err(AuditError::integrity(
                next_seq,
                IntegrityKind::Missing,
                format!(
                    "{} starts at event {first} but only {next_seq} events can be read \
                     before it, so the store will not append (that would reuse their \
                     sequence numbers)",
                    path.display()
                ),
            ));
        }
        report.segments = segs.len().max(1);
        report.events = leaves.len() as u64;

        let ck_path = dir.join(CHECKPOINT_FILE);
        let ck_buf = match fs::read(&ck_path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(AuditError::io("read", &ck_path, e)),
        };
        if ck_buf.is_none() && next_seq > 0 {
            // Opening creates the file (and syncs the directory) before the first append.
            return Err(AuditError::checkpoint(format!(
                "{} is missing but the trail holds {next_seq} events, so events cut off its \
                 end cannot be detected and appending could reuse their numbers (if the file \
                 never existed, an empty one accepts the trail as it is)",
                ck_path.display()
            )));
        }
        let ck_created = ck_buf.is_none();
        let ck = ck_buf
            .as_deref()
            .map(CheckpointLog::parse)
            .unwrap_or_default();
        // A signed checkpoint covers more events than can be read: they were acknowledged
        // (a checkpoint is only written after its events are durable) and are now missing.
        // Appending would number new events over them and fork the trail.
        if let Some(c) = ck
            .checkpoints
            .iter()
            .filter(|c| c.size > next_seq && c.verify_signature(&vk))
            .max_by_key(|c| c.size)
        {
            let last = segs.last().map_or_else(
                || dir.display().to_string(),
                |(_, p)| p.display().to_string(),
            );
            return Err(AuditError::integrity(
                next_seq,
                IntegrityKind::Missing,
                format!(
                    "a signed checkpoint covers {} events but only {next_seq} can be read \
                     (the trail ends early in {last}), so the store will not append (that \
                     would reuse their sequence numbers)",
                    c.size
                ),
            ));
        }
        report.checkpoints = ck.checkpoints.len();
        report.damaged_regions += ck.damaged_regions;
        if let (Some(buf), Some(at)) = (ck_buf, ck.torn_at) {
            cuts.push((ck_path.clone(), buf, at));
        }

        // Every check passed: move torn tails aside.
        for (path, buf, at) in &cuts {
            let q = quarantine(dir, path, &buf[*at..])?;
            truncate(path, *at as u64)?;
            report.truncated_bytes += (buf.len() - at) as u64;
            report
                .truncated_file
                .get_or_insert_with(|| path.display().to_string());
            report
                .quarantine_file
                .get_or_insert_with(|| q.display().to_string());
        }

        let (active_path, created) = match segs.last() {
            Some((_, p)) => (p.clone(), false),
            None => (dir.join(segment::segment_name(0)), true),
        };
        let file = open_append(&active_path, created)?;
        let ck_file = open_append(&ck_path, false)?;
        if created || ck_created {
            keys::sync_dir(dir)?;
        }

        let mut store = Self::with(
            Backing::Dir {
                dir: dir.to_path_buf(),
                sealed,
                active: Active {
                    file,
                    path: active_path,
                    len: last_len,
                },
                checkpoints: ck_file,
            },
            opts,
            signer,
            report,
        );
        for l in &leaves {
            store.compact.push(l);
        }
        store.leaves = leaves;
        store.next_seq = next_seq;
        store.head = head;
        store.checkpoints = ck.checkpoints;
        store.ck_damaged_at = ck.damaged_at.filter(|&at| ck.torn_at != Some(at));
        Ok(store)
    }

    /// The checkpoints and the checkpoint file's damage, as [`verify`] takes them.
    pub fn checkpoint_log(&self) -> CheckpointLog {
        CheckpointLog {
            checkpoints: self.checkpoints.clone(),
            damaged_at: self.ck_damaged_at,
            ..CheckpointLog::default()
        }
    }

    pub fn report(&self) -> &OpenReport {
        &self.report
    }
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.vk
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    pub fn head(&self) -> Hash {
        self.head
    }
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }
    pub fn dir(&self) -> Option<&Path> {
        match &self.backing {
            Backing::Dir { dir, .. } => Some(dir),
            Backing::Memory { .. } => None,
        }
    }
    pub fn is_closed(&self) -> bool {
        self.closed
    }
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn check_open(&self) -> Result<(), AuditError> {
        if self.closed {
            return Err(AuditError::Closed {
                detail: String::new(),
            });
        }
        if let Some(f) = &self.failed {
            return Err(AuditError::Closed {
                detail: format!(" after a write failure ({f}); reopening repairs the tail"),
            });
        }
        Ok(())
    }

    /// A consistent read-only view of the records appended so far.
    pub fn source(&self) -> Source {
        match &self.backing {
            Backing::Memory { bodies } => Source::Memory(bodies.clone()),
            Backing::Dir { sealed, active, .. } => {
                let mut s = sealed.clone();
                s.push((active.path.clone(), active.len));
                Source::Dir(s)
            }
        }
    }

    /// Number, chain, sign and durably store `items`; returns them as stored. Either the
    /// whole batch is acknowledged or the call fails (and the store refuses further
    /// appends until reopened, which cuts any partial write off the tail).
    pub fn append_batch(&mut self, items: &[NewEvent]) -> Result<Vec<StoredEvent>, AuditError> {
        let mut tail = self.tail()?;
        let prepared = tail.prepare(items)?;
        let done = self.commit(prepared)?;
        Ok(done.stored(items))
    }

    /// Where the next batch continues the trail (see [`Tail`]).
    pub fn tail(&self) -> Result<Tail, AuditError> {
        self.check_open()?;
        Ok(Tail {
            next_seq: self.next_seq,
            head: self.head,
            compact: self.compact.clone(),
            signer: self.signer.clone(),
            key_id: self.key_id.clone(),
            checkpoint_every: self.opts.checkpoint_every,
        })
    }

    /// Write a [`Prepared`] batch with one `write` and one `fdatasync`, then make it part of
    /// the trail. Batches must be committed in the order they were prepared from one
    /// [`Tail`]; one that does not continue the durable trail is refused unwritten. A write
    /// failure fails the store (it refuses appends until reopened).
    pub fn commit(&mut self, p: Prepared) -> Result<Committed, AuditError> {
        self.check_open()?;
        if p.first_seq != self.next_seq || p.prev != self.head {
            return Err(AuditError::BadInput {
                field: "batch",
                detail: format!(
                    "a batch prepared from event {} does not continue the trail at event {}; \
                     prepare it again",
                    p.first_seq, self.next_seq
                ),
            });
        }
        if p.bodies.is_empty() {
            return Ok(Committed {
                first_seq: p.first_seq,
                prev: p.prev,
                key_id: self.key_id.clone(),
                events: Vec::new(),
            });
        }
        if let Err(e) = self.write(&p.bodies, &p.checkpoints) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        // Durable: commit the in-memory state.
        let mut events = Vec::with_capacity(p.bodies.len());
        for b in p.bodies {
            let n = b.len();
            let chain: Hash = b[n - event::TRAILER..n - 64].try_into().expect("32 bytes");
            let sig: [u8; 64] = b[n - 64..].try_into().expect("64 bytes");
            let id: [u8; 16] = b[event::ID_OFFSET..event::ID_OFFSET + 16]
                .try_into()
                .expect("16 bytes");
            events.push(CommittedEvent { id, chain, sig });
            self.leaves.push(chain);
            if let Backing::Memory { bodies } = &mut self.backing {
                bodies.push(Arc::from(b.into_boxed_slice()));
            }
        }
        self.next_seq = p.first_seq + events.len() as u64;
        self.head = p.head;
        self.compact = p.compact;
        self.checkpoints.extend(p.checkpoints);
        Ok(Committed {
            first_seq: p.first_seq,
            prev: p.prev,
            key_id: self.key_id.clone(),
            events,
        })
    }

    fn write(&mut self, bodies: &[Vec<u8>], cks: &[Checkpoint]) -> Result<(), AuditError> {
        let Backing::Dir {
            dir,
            sealed,
            active,
            checkpoints,
        } = &mut self.backing
        else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(bodies.iter().map(|b| b.len() + segment::HEADER).sum());
        let flush = |active: &mut Active, buf: &mut Vec<u8>| -> Result<(), AuditError> {
            if buf.is_empty() {
                return Ok(());
            }
            active
                .file
                .write_all(buf)
                .map_err(|e| AuditError::io("write", &active.path, e))?;
            active
                .file
                .sync_data()
                .map_err(|e| AuditError::io("fdatasync", &active.path, e))?;
            active.len += buf.len() as u64;
            buf.clear();
            Ok(())
        };
        for (i, b) in bodies.iter().enumerate() {
            let frame = (b.len() + segment::HEADER) as u64;
            let used = active.len + buf.len() as u64;
            if used > 0 && used + frame > self.opts.segment_bytes {
                flush(active, &mut buf)?;
                let path = dir.join(segment::segment_name(self.next_seq + i as u64));
                let file = open_append(&path, true)?;
                keys::sync_dir(dir)?;
                let old = std::mem::replace(active, Active { file, path, len: 0 });
                sealed.push((old.path, old.len));
            }
            segment::frame_into(b, &mut buf);
        }
        flush(active, &mut buf)?;
        if !cks.is_empty() {
            let path = dir.join(CHECKPOINT_FILE);
            let mut cbuf = Vec::new();
            for c in cks {
                segment::frame_into(&c.body(), &mut cbuf);
            }
            checkpoints
                .write_all(&cbuf)
                .map_err(|e| AuditError::io("write", &path, e))?;
            checkpoints
                .sync_data()
                .map_err(|e| AuditError::io("fdatasync", &path, e))?;
        }
        Ok(())
    }

    /// Sign and store a checkpoint over everything appended so far (unless the last one
    /// already covers it) and return it.
    pub fn checkpoint_now(&mut self) -> Result<Checkpoint, AuditError> {
        self.check_open()?;
        if let Some(c) = self.checkpoints.iter().max_by_key(|c| c.size) {
            if c.size == self.next_seq {
                return Ok(c.clone());
            }
        }
        let c = Checkpoint::new(
            &self.signer,
            &self.key_id,
            self.compact.size(),
            self.compact.root(),
        );
        if let Err(e) = self.write(&[], std::slice::from_ref(&c)) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.checkpoints.push(c.clone());
        Ok(c)
    }

    /// An inclusion proof of event `seq` against the latest checkpoint covering it (cutting
    /// a new checkpoint if none does yet).
    pub fn prove(&mut self, seq: u64) -> Result<(Checkpoint, Vec<Hash>, Hash), AuditError> {
        if seq >= self.next_seq {
            return Err(AuditError::BadInput {
                field: "sequence",
                detail: format!(
                    "event {seq} does not exist; the trail holds events 0..{}",
                    self.next_seq
                ),
            });
        }
        if self.leaves.len() as u64 != self.next_seq {
            return Err(AuditError::integrity(
                self.leaves.len() as u64,
                IntegrityKind::Corrupt,
                "the trail is damaged, so no proof can be built; run verify",
            ));
        }
        let ck = match self
            .checkpoints
            .iter()
            .filter(|c| c.size > seq)
            .max_by_key(|c| c.size)
        {
            Some(c) => c.clone(),
            None => self.checkpoint_now()?,
        };
        let leaves = &self.leaves[..ck.size as usize];
        let path = merkle::inclusion_path(seq as usize, leaves);
        Ok((ck, path, leaves[seq as usize]))
    }

    /// Write a final checkpoint (so that cutting events off the end is detected) and stop.
    pub fn close(&mut self) -> Result<(), AuditError> {
        if self.closed {
            return Ok(());
        }
        let res = if self.failed.is_none() && self.next_seq > 0 {
            self.checkpoint_now().map(|_| ())
        } else {
            Ok(())
        };
        self.closed = true;
        res
    }
}

/// The canonical bytes of a stored event (for inclusion proofs).
pub fn canonical_of(e: &StoredEvent) -> Vec<u8> {
    event::encode(&Fields {
        seq: e.seq,
        event_id: e.event_id,
        timestamp_ns: e.timestamp_ns,
        key_id: &e.key_id,
        agent_id: &e.agent_id,
        event_type: &e.event_type,
        details: &e.details,
    })
}

pub const _ASSERT_HASH: usize = HASH_SIZE;

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "symbi-store-{}",
            u64::from_be_bytes(keys::random_bytes())
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn ev(i: usize) -> NewEvent {
        NewEvent {
            agent_id: format!("agent-{}", i % 3),
            event_type: "test".into(),
            details: format!("{{\"i\":{i}}}").into_bytes(),
            timestamp_ns: i as i64,
        }
    }

    fn batch(r: std::ops::Range<usize>) -> Vec<NewEvent> {
        r.map(ev).collect()
    }

    fn kind(e: AuditError) -> (u64, IntegrityKind) {
        match e {
            AuditError::Integrity {
                seq: Some(seq),
                kind,
                ..
            } => (seq, kind),
            other => panic!("not an integrity error: {other}"),
        }
    }

    #[test]
    fn memory_store_appends_verifies_and_queries() {
        let mut s = Store::in_memory(Options {
            checkpoint_every: 4,
            ..Options::default()
        });
        let out = s.append_batch(&batch(0..10)).unwrap();
        assert_eq!(
            out.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(out[1].prev, out[0].chain);
        assert_eq!(s.checkpoints().len(), 2);
        let rep = verify(&s.source(), s.verifying_key(), &s.checkpoint_log(), false).unwrap();
        assert_eq!(rep.events, 10);
        let q = query(
            &s.source(),
            &Filter {
                agent: Some("agent-1".into()),
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(q.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 4, 7]);
        assert_eq!(q[0].prev, out[0].chain);
    }

    #[test]
    fn pipelined_batches_commit_in_prepare_order_only() {
        let d = tmp();
        let opts = Options {
            segment_bytes: 4096,
            checkpoint_every: 5,
        };
        let mut s = Store::open(&d, opts.clone()).unwrap();
        let mut tail = s.tail().unwrap();
        let a = tail.prepare(&batch(0..7)).unwrap();
        let b = tail.prepare(&batch(7..20)).unwrap();
        let c = tail.prepare(&batch(20..21)).unwrap();
        assert_eq!(tail.next_seq(), 21);
        // Out of order: refused, nothing written, the store still works.
        let err = s.commit(b).unwrap_err();
        assert!(matches!(err, AuditError::BadInput { field: "batch", .. }));
        assert_eq!(s.next_seq(), 0);
        let ca = s.commit(a).unwrap();
        assert_eq!((ca.first_seq, ca.prev, ca.events.len()), (0, GENESIS, 7));
        // `c` was prepared on top of the refused `b`: refused as well.
        assert!(s.commit(c).is_err());
        let mut tail = s.tail().unwrap();
        let b = tail.prepare(&batch(7..20)).unwrap();
        let cb = s.commit(b).unwrap();
        assert_eq!(cb.first_seq, 7);
        assert_eq!(cb.prev, ca.events[6].chain);
        let stored = cb.stored(&batch(7..20));
        assert_eq!(stored[0].prev, ca.events[6].chain);
        assert_eq!(stored[1].prev, stored[0].chain);
        assert_eq!(stored[12].details, b"{\"i\":19}");
        s.close().unwrap();
        let cks = read_checkpoints(&d).unwrap();
        let vk = keys::load_public(&d).unwrap();
        let rep = verify(&dir_source(&d).unwrap(), &vk, &cks, false).unwrap();
        assert_eq!(rep.events, 20);
        assert_eq!(rep.head, cb.events[12].chain);
        assert_eq!(
            cks.checkpoints.iter().filter(|c| c.size % 5 == 0).count(),
            4
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dir_store_survives_reopen_and_rolls_segments() {
        let d = tmp();
        let opts = Options {
            segment_bytes: 2000,
            checkpoint_every: 7,
        };
        {
            let mut s = Store::open(&d, opts.clone()).unwrap();
            for k in 0..5 {
                s.append_batch(&batch(k * 10..k * 10 + 10)).unwrap();
            }
            s.close().unwrap();
        }
        let segs = list_segments(&d).unwrap();
        assert!(
            segs.len() > 2,
            "expected several segments, got {}",
            segs.len()
        );
        let mut s = Store::open(&d, opts).unwrap();
        assert_eq!(s.next_seq(), 50);
        s.append_batch(&batch(50..55)).unwrap();
        let cks = read_checkpoints(&d).unwrap();
        let vk = keys::load_public(&d).unwrap();
        let rep = verify(&dir_source(&d).unwrap(), &vk, &cks, false).unwrap();
        assert_eq!(rep.events, 55);
        // Inclusion proofs verify against the checkpoint.
        for seq in [0u64, 13, 49, 54] {
            let (ck, path, leaf) = s.prove(seq).unwrap();
            assert!(ck.verify_signature(&vk));
            assert!(merkle::verify_inclusion(
                seq, ck.size, &leaf, &path, &ck.root
            ));
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn torn_tail_is_cut_on_open() {
        let d = tmp();
        let opts = Options::default();
        {
            let mut s = Store::open(&d, opts.clone()).unwrap();
            s.append_batch(&batch(0..5)).unwrap();
        }
        let seg = d.join(segment::segment_name(0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let cks = read_checkpoints(&d).unwrap();
        let vk = keys::load_public(&d).unwrap();
        let err = verify(&dir_source(&d).unwrap(), &vk, &cks, false).unwrap_err();
        assert_eq!(kind(err), (5, IntegrityKind::Corrupt));
        assert!(verify(&dir_source(&d).unwrap(), &vk, &cks, true).is_ok());
        let mut s = Store::open(&d, opts).unwrap();
        assert_eq!(s.report().truncated_bytes, 6);
        s.append_batch(&batch(5..6)).unwrap();
        assert_eq!(
            verify(&s.source(), &vk, &s.checkpoint_log(), false)
                .unwrap()
                .events,
            6
        );
        fs::remove_dir_all(&d).unwrap();
    }

    /// Every file of `d` with its bytes (to show that a refused open changed nothing).
    fn snapshot(d: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn closed_store(n: usize) -> (PathBuf, Vec<usize>) {
        let d = tmp();
        let mut s = Store::open(&d, Options::default()).unwrap();
        s.append_batch(&batch(0..n)).unwrap();
        s.close().unwrap();
        let buf = fs::read(d.join(segment::segment_name(0))).unwrap();
        let offs = segment::scan(&buf, event::DOMAIN)
            .frames
            .iter()
            .map(|f| f.offset)
            .collect();
        (d, offs)
    }

    #[test]
    fn open_refuses_fewer_events_than_a_signed_checkpoint() {
        let (d, offs) = closed_store(6);
        let seg = d.join(segment::segment_name(0));
        let buf = fs::read(&seg).unwrap();
        // Cut mid-record 3: it looks like a torn write, but the checkpoint covers 6.
        fs::write(&seg, &buf[..offs[3] + 10]).unwrap();
        let before = snapshot(&d);
        let err = Store::open(&d, Options::default()).err().unwrap();
        assert!(err.to_string().contains("symbi audit verify"), "{err}");
        assert_eq!(kind(err), (3, IntegrityKind::Missing));
        assert_eq!(snapshot(&d), before);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_refuses_a_complete_damaged_last_record() {
        let d = tmp();
        {
            let mut s = Store::open(&d, Options::default()).unwrap();
            s.append_batch(&batch(0..4)).unwrap();
        } // no close: no checkpoint covers the events
        let seg = d.join(segment::segment_name(0));
        let mut buf = fs::read(&seg).unwrap();
        let n = buf.len();
        buf[n - 30] ^= 1;
        fs::write(&seg, &buf).unwrap();
        let before = snapshot(&d);
        let err = Store::open(&d, Options::default()).err().unwrap();
        assert_eq!(kind(err), (3, IntegrityKind::Corrupt));
        assert_eq!(snapshot(&d), before);
        let cks = read_checkpoints(&d).unwrap();
        let vk = keys::load_public(&d).unwrap();
        let err = verify(&dir_source(&d).unwrap(), &vk, &cks, true).unwrap_err();
        assert_eq!(kind(err), (3, IntegrityKind::Corrupt));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn torn_tails_are_moved_to_quarantine_files() {
        let d = tmp();
        {
            let mut s = Store::open(&d, Options::default()).unwrap();
            s.append_batch(&batch(0..3)).unwrap();
        }
        let seg = d.join(segment::segment_name(0));
        let zeros = [0u8; 512]; // blocks allocated but never written (power loss)
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(&zeros)
            .unwrap();
        let ck = d.join(CHECKPOINT_FILE);
        let partial = [40u8, 0, 0, 0, 1, 2, 3];
        fs::write(&ck, partial).unwrap();
        let mut s = Store::open(&d, Options::default()).unwrap();
        assert_eq!(s.report().truncated_bytes, 512 + 7);
        assert_eq!(
            fs::read(d.join(format!("{}.torn", segment::segment_name(0)))).unwrap(),
            zeros
        );
        assert_eq!(
            fs::read(d.join(format!("{CHECKPOINT_FILE}.torn"))).unwrap(),
            partial
        );
        assert_eq!(s.next_seq(), 3);
        s.append_batch(&batch(3..4)).unwrap();
        s.close().unwrap();
        let vk = keys::load_public(&d).unwrap();
        let cks = read_checkpoints(&d).unwrap();
        assert_eq!(
            verify(&dir_source(&d).unwrap(), &vk, &cks, false)
                .unwrap()
                .events,
            4
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_refuses_a_damaged_record_before_an_empty_last_segment() {
        let d = tmp();
        let opts = Options {
            segment_bytes: 4096,
            checkpoint_every: 0,
        };
        {
            let mut s = Store::open(&d, opts.clone()).unwrap();
            for k in 0..40 {
                s.append_batch(&batch(k..k + 1)).unwrap();
            }
        } // no close: no checkpoint
        let segs = list_segments(&d).unwrap();
        let (first, last) = segs.last().unwrap().clone();
        // The crash came right after rolling over: the new segment is empty, and the
        // record before it is complete but damaged.
        fs::write(&last, b"").unwrap();
        let (_, prev) = &segs[segs.len() - 2];
        let mut buf = fs::read(prev).unwrap();
        let n = buf.len();
        buf[n - 10] ^= 1;
        fs::write(prev, &buf).unwrap();
        let before = snapshot(&d);
        let err = Store::open(&d, opts).err().unwrap();
        assert_eq!(kind(err), (first - 1, IntegrityKind::Missing));
        assert_eq!(snapshot(&d), before);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn open_refuses_a_missing_checkpoint_file() {
        let (d, _) = closed_store(2);
        fs::remove_file(d.join(CHECKPOINT_FILE)).unwrap();
        let err = Store::open(&d, Options::default()).err().unwrap();
        assert!(matches!(
            err,
            AuditError::Integrity {
                seq: None,
                kind: IntegrityKind::Checkpoint,
                ..
            }
        ));
        assert!(!d.join(CHECKPOINT_FILE).exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn checkpoint_problems_name_no_event_unless_an_event_is_bad() {
        let (d, _) = closed_store(5);
        let vk = keys::load_public(&d).unwrap();
        let src = dir_source(&d).unwrap();
        let good = read_checkpoints(&d).unwrap();
        assert!(verify(&src, &vk, &good, false).is_ok());
        let is_ck = |e: AuditError| {
            matches!(
                e,
                AuditError::Integrity {
                    seq: None,
                    kind: IntegrityKind::Checkpoint,
                    ..
                }
            )
        };
        // A checkpoint with a bad signature: the events are fine.
        let mut forged = good.clone();
        forged.checkpoints[0].sig[0] ^= 1;
        assert!(is_ck(verify(&src, &vk, &forged, false).unwrap_err()));
        // A damaged checkpoint file.
        let damaged = CheckpointLog {
            damaged_at: Some(0),
            ..good.clone()
        };
        assert!(is_ck(verify(&src, &vk, &damaged, false).unwrap_err()));
        // Another key: every event fails, and event 0 is named (not the checkpoint).
        let other = keys::generate().verifying_key();
        let err = verify(&src, &other, &good, false).unwrap_err();
        assert_eq!(kind(err), (0, IntegrityKind::Signature));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn tampering_is_named() {
        let mut s = Store::in_memory(Options::default());
        s.append_batch(&batch(0..20)).unwrap();
        let vk = *s.verifying_key();
        let Source::Memory(bodies) = s.source() else {
            unreachable!()
        };
        let check = |b: Vec<Arc<[u8]>>| {
            kind(verify(&Source::Memory(b), &vk, &CheckpointLog::default(), false).unwrap_err())
        };
        // A bad signature.
        let mut b = bodies.clone();
        let mut x = b[7].to_vec();
        let n = x.len();
        x[n - 1] ^= 1;
        b[7] = x.into();
        assert_eq!(check(b), (7, IntegrityKind::Signature));
        // A changed detail breaks the link.
        let mut b = bodies.clone();
        let mut x = b[3].to_vec();
        let n = x.len();
        x[n - event::TRAILER - 2] ^= 1;
        b[3] = x.into();
        assert_eq!(check(b), (3, IntegrityKind::Link));
        // Deleted, reordered, duplicated.
        let mut b = bodies.clone();
        b.remove(5);
        assert_eq!(check(b), (5, IntegrityKind::Missing));
        let mut b = bodies.clone();
        b.swap(4, 9);
        assert_eq!(check(b), (4, IntegrityKind::Order));
        let mut b = bodies.clone();
        b.insert(12, bodies[2].clone());
        assert_eq!(check(b), (12, IntegrityKind::Order));
        // Cutting the tail is caught by the final checkpoint.
        s.close().unwrap();
        let cks = s.checkpoint_log();
        let mut b = bodies.clone();
        b.pop();
        assert_eq!(
            kind(verify(&Source::Memory(b), &vk, &cks, false).unwrap_err()),
            (19, IntegrityKind::Missing)
        );
    }
}
