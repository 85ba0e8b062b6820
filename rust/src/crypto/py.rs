//! Python bindings of the bus crypto: `BusKeyRing` and `parse_envelope`.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::envelope::{self, KIND_TOPIC};
use super::keyring::{KeyRing, Opened, SealItem};
use super::CryptoError;
use crate::gil;

/// Batches this long are sealed or opened without the GIL (see gil.rs).
const DETACH_ITEMS: usize = 32;

type OpenedTuple<'py> = (
    String,
    Bound<'py, PyString>,
    Bound<'py, PyString>,
    bool,
    u64,
    Bound<'py, PyString>,
    Bound<'py, PyBytes>,
    bool,
);

fn opened<'py>(py: Python<'py>, o: &Opened<'_>) -> OpenedTuple<'py> {
    let h = &o.header;
    (
        envelope::id_hex(&h.id),
        PyString::new(py, h.sender),
        PyString::new(py, h.recipient),
        h.kind == KIND_TOPIC,
        h.timestamp_ns,
        PyString::new(py, h.content_type),
        PyBytes::new(py, &o.payload),
        o.duplicate,
    )
}

/// Agent identities and the keys derived from them. Secret keys never leave it.
#[pyclass(module = "symbi._core", name = "BusKeyRing", frozen)]
pub struct BusKeyRing {
    inner: Mutex<KeyRing>,
}

impl BusKeyRing {
    fn ring(&self) -> std::sync::MutexGuard<'_, KeyRing> {
        // A panic while holding the lock cannot leave the ring half-updated in a way
        // that matters for safety (maps are updated atomically), so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl BusKeyRing {
    #[new]
    #[pyo3(signature = (replay_window_s = 30.0))]
    fn new(replay_window_s: f64) -> PyResult<Self> {
        if !(replay_window_s.is_finite() && replay_window_s > 0.0) {
            return Err(CryptoError::Invalid {
                what: "replay_window_s",
                detail: format!("must be a positive number of seconds, got {replay_window_s}"),
            }
            .into());
        }
        Ok(Self {
            inner: Mutex::new(KeyRing::new((replay_window_s * 1e9) as u64)),
        })
    }

    /// Create an agent's identity; returns its 64-byte public bundle.
    fn create_identity<'py>(&self, py: Python<'py>, agent: &str) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.ring().create_identity(agent)?))
    }

    /// Know another agent by its public bundle (e.g. one living in another process).
    fn add_peer(&self, agent: &str, bundle: &[u8]) -> PyResult<()> {
        Ok(self.ring().add_peer(agent, bundle)?)
    }

    fn remove(&self, agent: &str) -> bool {
        self.ring().remove(agent)
    }

    fn bundle<'py>(&self, py: Python<'py>, agent: &str) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.ring().bundle(agent)?))
    }

    fn has_identity(&self, agent: &str) -> bool {
        self.ring().has_identity(agent)
    }

    /// The topic's 32-byte group key, created if it has none.
    fn topic_key<'py>(&self, py: Python<'py>, topic: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.ring().ensure_topic(topic))
    }

    fn set_topic_key(&self, topic: &str, key: &[u8]) -> PyResult<()> {
        Ok(self.ring().set_topic_key(topic, key)?)
    }

    /// Learn a group key for opening `topic` messages; returns its 8-byte key id. It
    /// becomes the sealing key only if the topic has none.
    fn add_topic_key<'py>(
        &self,
        py: Python<'py>,
        topic: &str,
        key: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.ring().add_topic_key(topic, key)?))
    }

    fn has_topic_key(&self, topic: &str, key_id: &[u8]) -> bool {
        self.ring().has_topic_key(topic, key_id)
    }

    /// The 8-byte id of the key `topic` is sealed under, or None.
    fn topic_key_id<'py>(&self, py: Python<'py>, topic: &str) -> Option<Bound<'py, PyBytes>> {
        self.ring()
            .topic_key_id(topic)
            .map(|k| PyBytes::new(py, &k))
    }

    /// Encrypt and sign one message.
    #[pyo3(signature = (sender, recipient, content_type, payload, topic = false, timestamp_ns = None))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python signature, keywords included
    fn seal<'py>(
        &self,
        py: Python<'py>,
        sender: &str,
        recipient: &str,
        content_type: &str,
        payload: &[u8],
        topic: bool,
        timestamp_ns: Option<u64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let item = SealItem {
            recipient,
            topic,
            content_type,
            payload,
        };
        // One seal is shorter than a GIL hand-off under contention (see gil.rs).
        let mut ring = self.ring();
        let out = ring.seal(sender, &item, timestamp_ns)?;
        let env = PyBytes::new(py, &out);
        ring.recycle([out]);
        Ok(env)
    }

    /// Encrypt many messages from one sender and sign them with one signature.
    /// Items are (recipient, content_type, payload, topic).
    #[pyo3(signature = (sender, items, timestamp_ns = None))]
    fn seal_batch<'py>(
        &self,
        py: Python<'py>,
        sender: &str,
        items: Vec<(String, String, Bound<'py, PyBytes>, bool)>,
        timestamp_ns: Option<u64>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let views: Vec<SealItem<'_>> = items
            .iter()
            .map(|(r, c, p, t)| SealItem {
                recipient: r,
                topic: *t,
                content_type: c,
                payload: p.as_bytes(),
            })
            .collect();
        let heavy = views.len() >= DETACH_ITEMS;
        let out = gil::detach_if(py, heavy, || {
            self.ring().seal_batch(sender, &views, timestamp_ns)
        })?;
        let envs = out.iter().map(|b| PyBytes::new(py, b)).collect();
        self.ring().recycle(out);
        Ok(envs)
    }

    /// Verify, replay-check and decrypt one envelope for `opener`. Returns
    /// (id, sender, recipient, is_topic, timestamp_ns, content_type, payload, duplicate).
    #[pyo3(signature = (opener, envelope, now_ns = None))]
    fn open<'py>(
        &self,
        py: Python<'py>,
        opener: &str,
        envelope: &[u8],
        now_ns: Option<u64>,
    ) -> PyResult<OpenedTuple<'py>> {
        let mut ring = self.ring();
        let o = ring.open(opener, envelope, now_ns)?;
        let t = opened(py, &o);
        ring.recycle([o.payload]);
        Ok(t)
    }

    /// `open` for many envelopes; each result is the tuple, or the exception for that item.
    #[pyo3(signature = (opener, envelopes, now_ns = None))]
    fn open_batch<'py>(
        &self,
        py: Python<'py>,
        opener: &str,
        envelopes: Vec<Bound<'py, PyBytes>>,
        now_ns: Option<u64>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let views: Vec<&[u8]> = envelopes.iter().map(|b| b.as_bytes()).collect();
        let heavy = views.len() >= DETACH_ITEMS;
        let results: Vec<Result<Opened, CryptoError>> = gil::detach_if(py, heavy, || {
            let mut ring = self.ring();
            views.iter().map(|v| ring.open(opener, v, now_ns)).collect()
        });
        let mut spent = Vec::with_capacity(results.len());
        let out = results
            .into_iter()
            .map(|r| match r {
                Ok(o) => {
                    let t = opened(py, &o).into_pyobject(py)?.into_any().unbind();
                    spent.push(o.payload);
                    Ok(t)
                }
                Err(e) => Ok(PyErr::from(e).into_value(py).into_any()),
            })
            .collect();
        self.ring().recycle(spent);
        out
    }
}

/// The fields of an envelope without decrypting it (for inspection and tests).
#[pyfunction]
pub fn parse_envelope<'py>(py: Python<'py>, envelope: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    let e = envelope::parse(envelope)?;
    let d = PyDict::new(py);
    let h = &e.header;
    d.set_item("id", envelope::id_hex(&h.id))?;
    d.set_item(
        "kind",
        if h.kind == KIND_TOPIC {
            "topic"
        } else {
            "direct"
        },
    )?;
    d.set_item("sender", h.sender)?;
    d.set_item("recipient", h.recipient)?;
    d.set_item("timestamp_ns", h.timestamp_ns)?;
    d.set_item("sender_key_id", PyBytes::new(py, &h.sender_key))?;
    d.set_item("recipient_key_id", PyBytes::new(py, &h.recipient_key))?;
    d.set_item("nonce", PyBytes::new(py, &h.nonce))?;
    d.set_item("content_type", h.content_type)?;
    d.set_item("encrypted_payload", PyBytes::new(py, e.ciphertext))?;
    d.set_item("signature", PyBytes::new(py, &e.signature))?;
    d.set_item("batch", e.batch.as_ref().map(|b| (b.index, b.size)))?;
    Ok(d)
}
