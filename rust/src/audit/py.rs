//! Python bindings for the audit chain. Hashing runs with the GIL released.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::chain;

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
