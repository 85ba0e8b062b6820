//! Python bindings for the audit trail. Every call that hashes, signs, verifies or touches
//! the disk runs with the GIL released; the store's lock is only ever taken inside
//! `py.detach`, so a thread waiting for it never holds the GIL.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::chain::{self, Hash};
use super::store::{
    self, Checkpoint, Committed, Filter, NewEvent, Options, Store, StoredEvent, Tail,
};
use super::{event, keys, merkle, AuditError};

fn slices<'a>(items: &'a [Bound<'_, PyBytes>]) -> Vec<&'a [u8]> {
    items.iter().map(|b| b.as_bytes()).collect()
}

/// Chain hash of one event: SHA-256 over the domain tag, `prev`, `seq` and `payload`.
#[pyfunction]
pub fn chain_link<'py>(
    py: Python<'py>,
    prev: &[u8],
    seq: u64,
    payload: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let prev = chain::to_hash(prev)?;
    Ok(PyBytes::new(py, &chain::link(&prev, seq, payload)))
}

/// Chain hashes of a batch of payloads numbered from `first_seq`, continuing from `prev`.
#[pyfunction]
pub fn chain_hashes<'py>(
    py: Python<'py>,
    prev: &[u8],
    first_seq: u64,
    payloads: Vec<Bound<'py, PyBytes>>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let prev = chain::to_hash(prev)?;
    let views = slices(&payloads);
    let out = py.detach(|| chain::hashes(&prev, first_seq, &views))?;
    Ok(out.iter().map(|h| PyBytes::new(py, h)).collect())
}

/// Index of the first payload whose stored hash is wrong, or None when the chain is intact.
#[pyfunction]
pub fn verify_chain<'py>(
    py: Python<'py>,
    prev: &[u8],
    first_seq: u64,
    payloads: Vec<Bound<'py, PyBytes>>,
    hashes: Vec<Bound<'py, PyBytes>>,
) -> PyResult<Option<usize>> {
    let prev = chain::to_hash(prev)?;
    let p = slices(&payloads);
    let h = slices(&hashes);
    Ok(py.detach(|| chain::first_mismatch(&prev, first_seq, &p, &h))?)
}

// ----------------------------------------------------------------------------- store

type EventTuple<'py> = (
    u64,
    String,
    i64,
    String,
    String,
    String,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
);
type CheckpointTuple<'py> = (u64, Bound<'py, PyBytes>, i64, String, Bound<'py, PyBytes>);

fn event_tuple<'py>(py: Python<'py>, e: &StoredEvent) -> EventTuple<'py> {
    (
        e.seq,
        event::uuid_str(&e.event_id),
        e.timestamp_ns,
        e.key_id.clone(),
        e.agent_id.clone(),
        e.event_type.clone(),
        PyBytes::new(py, &e.details),
        PyBytes::new(py, &e.prev),
        PyBytes::new(py, &e.chain),
        PyBytes::new(py, &e.sig),
    )
}

fn checkpoint_tuple<'py>(py: Python<'py>, c: &Checkpoint) -> CheckpointTuple<'py> {
    (
        c.size,
        PyBytes::new(py, &c.root),
        c.timestamp_ns,
        c.key_id.clone(),
        PyBytes::new(py, &c.sig),
    )
}

fn report_dict<'py>(py: Python<'py>, r: &store::VerifyReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("events", r.events)?;
    d.set_item("head", PyBytes::new(py, &r.head))?;
    d.set_item("segments", r.segments)?;
    d.set_item("checkpoints", r.checkpoints)?;
    d.set_item("key_id", &r.key_id)?;
    Ok(d)
}

fn bad(field: &'static str, detail: impl Into<String>) -> AuditError {
    AuditError::BadInput {
        field,
        detail: detail.into(),
    }
}

fn public_key(bytes: &[u8]) -> Result<ed25519_dalek::VerifyingKey, AuditError> {
    keys::parse_public(bytes, std::path::Path::new("public_key")).map_err(|e| match e {
        AuditError::Key { detail, .. } => bad("public_key", detail),
        other => other,
    })
}

fn hash_arg(field: &'static str, b: &[u8]) -> Result<Hash, AuditError> {
    b.try_into()
        .map_err(|_| bad(field, format!("must be 32 bytes, got {}", b.len())))
}

/// What `commit_batch` returns: `(first_seq, prev_hash, key_id, event_ids, chain_hashes,
/// signatures)`; event `i` is number `first_seq + i` and chains to `chain_hashes[i - 1]`
/// (`prev_hash` for the first).
type CommittedTuple<'py> = (
    u64,
    Bound<'py, PyBytes>,
    String,
    Vec<String>,
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyBytes>>,
);

/// The durable audit store (or an in-memory one when `path` is None).
///
/// Appends are pipelined: a batch is prepared (numbered, chained, signed) under the `tail`
/// lock, then the `inner` (store) lock is taken *before* the tail lock is released, and the
/// batch is written and fdatasync'd under it. So the next batch can be signed while this one
/// syncs, and batches reach the disk in the order they were numbered. Lock order is always
/// tail, then inner.
#[pyclass(module = "symbi._core", frozen)]
pub struct AuditStore {
    inner: Mutex<Store>,
    /// Where the next batch continues the chain; None until the first append, and again
    /// after a failed commit (it is then re-read from the store).
    tail: Mutex<Option<Tail>>,
    path: Option<String>,
}

impl AuditStore {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tail(&self) -> MutexGuard<'_, Option<Tail>> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prepare and commit one batch through the pipeline (call with the GIL released).
    fn pipeline(&self, items: &[NewEvent]) -> Result<Committed, AuditError> {
        let mut tail = self.lock_tail();
        let t = match tail.as_mut() {
            Some(t) => t,
            None => tail.insert(self.lock().tail()?),
        };
        let prepared = t.prepare(items)?;
        let mut store = self.lock();
        drop(tail);
        let res = store.commit(prepared);
        drop(store);
        if res.is_err() {
            // Batches prepared after this one no longer continue the durable trail: their
            // commits are refused unwritten, and the next append re-reads the tail.
            *self.lock_tail() = None;
        }
        res
    }
}

fn new_events<'py>(items: Vec<(String, String, Bound<'py, PyBytes>, i64)>) -> Vec<NewEvent> {
    items
        .into_iter()
        .map(|(agent_id, event_type, details, timestamp_ns)| NewEvent {
            agent_id,
            event_type,
            details: details.as_bytes().to_vec(),
            timestamp_ns,
        })
        .collect()
}

#[pymethods]
impl AuditStore {
    #[new]
    #[pyo3(signature = (path=None, *, segment_bytes=67_108_864, checkpoint_every=1024))]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        segment_bytes: u64,
        checkpoint_every: u64,
    ) -> PyResult<Self> {
        if segment_bytes < 4096 {
            return Err(bad("segment_bytes", "must be at least 4096 bytes").into());
        }
        let opts = Options {
            segment_bytes,
            checkpoint_every,
        };
        let store = match &path {
            Some(p) => py.detach(|| Store::open(p, opts))?,
            None => Store::in_memory(opts),
        };
        Ok(AuditStore {
            inner: Mutex::new(store),
            tail: Mutex::new(None),
            path: path.map(|p| p.display().to_string()),
        })
    }

    /// Append `(agent_id, event_type, details_json, timestamp_ns)` items as one durable
    /// group commit; returns the stored events.
    fn append_batch<'py>(
        &self,
        py: Python<'py>,
        items: Vec<(String, String, Bound<'py, PyBytes>, i64)>,
    ) -> PyResult<Vec<EventTuple<'py>>> {
        let items = new_events(items);
        let out = py.detach(|| self.pipeline(&items).map(|c| c.stored(&items)))?;
        Ok(out.iter().map(|e| event_tuple(py, e)).collect())
    }

    /// Append `(agent_id, event_type, details_json, timestamp_ns)` items as one durable
    /// group commit and return only what the caller does not have yet:
    /// `(first_seq, prev_hash, key_id, event_ids, chain_hashes, signatures)`. Safe to call
    /// from several threads at once: the next batch is signed while this one syncs.
    fn commit_batch<'py>(
        &self,
        py: Python<'py>,
        items: Vec<(String, String, Bound<'py, PyBytes>, i64)>,
    ) -> PyResult<CommittedTuple<'py>> {
        let items = new_events(items);
        let c = py.detach(|| self.pipeline(&items))?;
        Ok((
            c.first_seq,
            PyBytes::new(py, &c.prev),
            c.key_id.clone(),
            c.events.iter().map(|e| event::uuid_str(&e.id)).collect(),
            c.events
                .iter()
                .map(|e| PyBytes::new(py, &e.chain))
                .collect(),
            c.events.iter().map(|e| PyBytes::new(py, &e.sig)).collect(),
        ))
    }

    #[pyo3(signature = (*, agent=None, event_type=None, since_ns=None, until_ns=None, after_seq=None, limit=None))]
    #[allow(clippy::too_many_arguments)]
    fn query<'py>(
        &self,
        py: Python<'py>,
        agent: Option<String>,
        event_type: Option<String>,
        since_ns: Option<i64>,
        until_ns: Option<i64>,
        after_seq: Option<u64>,
        limit: Option<usize>,
    ) -> PyResult<Vec<EventTuple<'py>>> {
        let f = Filter {
            agent,
            event_type,
            since_ns,
            until_ns,
            after_seq,
            limit,
        };
        let out = py.detach(|| {
            let src = self.lock().source();
            store::query(&src, &f)
        })?;
        Ok(out.iter().map(|e| event_tuple(py, e)).collect())
    }

    /// Verify everything appended so far; raises AuditIntegrityError at the first bad event.
    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = py.detach(|| {
            let (src, vk, cks) = {
                let s = self.lock();
                (s.source(), *s.verifying_key(), s.checkpoint_log())
            };
            store::verify(&src, &vk, &cks, false)
        })?;
        report_dict(py, &r)
    }

    fn checkpoints<'py>(&self, py: Python<'py>) -> Vec<CheckpointTuple<'py>> {
        let cks = py.detach(|| self.lock().checkpoints().to_vec());
        cks.iter().map(|c| checkpoint_tuple(py, c)).collect()
    }

    /// Sign and store a checkpoint over everything so far.
    fn checkpoint<'py>(&self, py: Python<'py>) -> PyResult<CheckpointTuple<'py>> {
        let c = py.detach(|| self.lock().checkpoint_now())?;
        Ok(checkpoint_tuple(py, &c))
    }

    /// `(checkpoint, path, event, canonical_bytes)` proving event `seq` is in the trail.
    #[allow(clippy::type_complexity)]
    fn prove<'py>(
        &self,
        py: Python<'py>,
        seq: u64,
    ) -> PyResult<(
        CheckpointTuple<'py>,
        Vec<Bound<'py, PyBytes>>,
        EventTuple<'py>,
        Bound<'py, PyBytes>,
    )> {
        let (ck, path, ev) = py.detach(|| -> Result<_, AuditError> {
            let (ck, path, _leaf, src) = {
                let mut s = self.lock();
                let (ck, path, leaf) = s.prove(seq)?;
                (ck, path, leaf, s.source())
            };
            let f = Filter {
                after_seq: seq.checked_sub(1),
                limit: Some(1),
                ..Filter::default()
            };
            let ev = store::query(&src, &f)?
                .into_iter()
                .next()
                .filter(|e| e.seq == seq)
                .ok_or_else(|| bad("sequence", format!("event {seq} could not be read")))?;
            Ok((ck, path, ev))
        })?;
        let canonical = store::canonical_of(&ev);
        Ok((
            checkpoint_tuple(py, &ck),
            path.iter().map(|h| PyBytes::new(py, h)).collect(),
            event_tuple(py, &ev),
            PyBytes::new(py, &canonical),
        ))
    }

    /// Write a final checkpoint and refuse further appends.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.lock().close())?)
    }

    #[getter]
    fn path(&self) -> Option<String> {
        self.path.clone()
    }
    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let vk = py.detach(|| *self.lock().verifying_key());
        PyBytes::new(py, vk.as_bytes())
    }
    #[getter]
    fn key_id(&self, py: Python<'_>) -> String {
        py.detach(|| self.lock().key_id().to_owned())
    }
    #[getter]
    fn next_seq(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.lock().next_seq())
    }
    #[getter]
    fn head<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let h = py.detach(|| self.lock().head());
        PyBytes::new(py, &h)
    }
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.lock().is_closed())
    }
    #[getter]
    fn failure(&self, py: Python<'_>) -> Option<String> {
        py.detach(|| self.lock().failure().map(str::to_owned))
    }
    /// What opening the store found: segments, events, checkpoints, truncated_bytes,
    /// truncated_file, quarantine_file, damaged_regions.
    #[getter]
    fn open_report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = py.detach(|| self.lock().report().clone());
        let d = PyDict::new(py);
        d.set_item("segments", r.segments)?;
        d.set_item("events", r.events)?;
        d.set_item("checkpoints", r.checkpoints)?;
        d.set_item("truncated_bytes", r.truncated_bytes)?;
        d.set_item("truncated_file", r.truncated_file)?;
        d.set_item("quarantine_file", r.quarantine_file)?;
        d.set_item("damaged_regions", r.damaged_regions)?;
        Ok(d)
    }
}

/// Verify the store in `path` read-only, with its `audit.pub` or a pinned `public_key`.
#[pyfunction]
#[pyo3(signature = (path, *, public_key=None, allow_torn_tail=false))]
pub fn audit_verify_dir<'py>(
    py: Python<'py>,
    path: PathBuf,
    public_key: Option<Vec<u8>>,
    allow_torn_tail: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let r = py.detach(|| -> Result<_, AuditError> {
        if !path.is_dir() {
            return Err(AuditError::Io {
                op: "open",
                path: path.display().to_string(),
                detail: "not a directory; pass the audit store directory (security.audit_storage)"
                    .into(),
            });
        }
        let vk = match &public_key {
            Some(b) => self::public_key(b)?,
            None => keys::load_public(&path)?,
        };
        let cks = store::read_checkpoints(&path)?;
        store::verify(&store::dir_source(&path)?, &vk, &cks, allow_torn_tail)
    })?;
    report_dict(py, &r)
}

/// Events stored in `path` that pass the filters, read-only.
#[pyfunction]
#[pyo3(signature = (path, *, agent=None, event_type=None, since_ns=None, until_ns=None, after_seq=None, limit=None))]
#[allow(clippy::too_many_arguments)]
pub fn audit_query_dir<'py>(
    py: Python<'py>,
    path: PathBuf,
    agent: Option<String>,
    event_type: Option<String>,
    since_ns: Option<i64>,
    until_ns: Option<i64>,
    after_seq: Option<u64>,
    limit: Option<usize>,
) -> PyResult<Vec<EventTuple<'py>>> {
    let f = Filter {
        agent,
        event_type,
        since_ns,
        until_ns,
        after_seq,
        limit,
    };
    let out = py.detach(|| -> Result<_, AuditError> {
        if !path.is_dir() {
            return Err(AuditError::Io {
                op: "open",
                path: path.display().to_string(),
                detail: "not a directory; pass the audit store directory".into(),
            });
        }
        store::query(&store::dir_source(&path)?, &f)
    })?;
    Ok(out.iter().map(|e| event_tuple(py, e)).collect())
}

/// Does the checkpoint `(size, root, timestamp_ns, key_id, signature)` carry a valid
/// signature by `public_key`?
#[pyfunction]
pub fn audit_verify_checkpoint(
    size: u64,
    root: &[u8],
    timestamp_ns: i64,
    key_id: String,
    signature: &[u8],
    public_key: &[u8],
) -> PyResult<bool> {
    let vk = self::public_key(public_key)?;
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| bad("signature", "must be 64 bytes"))?;
    let c = Checkpoint {
        size,
        root: hash_arg("root", root)?,
        timestamp_ns,
        key_id,
        sig,
    };
    Ok(c.verify_signature(&vk))
}

/// Does the RFC 6962 audit `path` lead from `leaf` (a chain hash) at `index` to `root`?
#[pyfunction]
pub fn audit_verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8],
    path: Vec<Vec<u8>>,
    root: &[u8],
) -> PyResult<bool> {
    let leaf = hash_arg("leaf", leaf)?;
    let root = hash_arg("root", root)?;
    let path = path
        .iter()
        .map(|p| hash_arg("path", p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(merkle::verify_inclusion(index, size, &leaf, &path, &root))
}

/// Do `canonical` bytes of event `seq` after `prev` hash to `chain` and carry a valid
/// signature by `public_key`?
#[pyfunction]
pub fn audit_verify_event(
    prev: &[u8],
    seq: u64,
    canonical: &[u8],
    chain_hash: &[u8],
    signature: &[u8],
    public_key: &[u8],
) -> PyResult<bool> {
    let vk = self::public_key(public_key)?;
    let prev = hash_arg("prev_hash", prev)?;
    let ch = hash_arg("chain_hash", chain_hash)?;
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| bad("signature", "must be 64 bytes"))?;
    if event::decode(canonical).map(|f| f.seq) != Some(seq)
        || chain::link(&prev, seq, canonical) != ch
    {
        return Ok(false);
    }
    let msg = [canonical, &ch].concat();
    Ok(keys::first_bad_signature(&vk, &[&msg], &[sig]).is_none())
}

/// The key id (hex) of an Ed25519 public key.
#[pyfunction]
pub fn audit_key_id(public_key: &[u8]) -> PyResult<String> {
    Ok(keys::key_id(&self::public_key(public_key)?))
}
