//! When to release the GIL around Rust work.
//!
//! Releasing it lets other Python threads run meanwhile, but taking it back waits for
//! them: while another thread runs Python (the audit writer, a user's thread), each
//! hand-off costs tens to hundreds of microseconds, far more than a scheduling decision
//! or one seal. So short calls keep the GIL and batches release it.

use pyo3::marker::Ungil;
use pyo3::Python;

/// Run `f` without the GIL when `heavy`, with it otherwise.
pub fn detach_if<T, F>(py: Python<'_>, heavy: bool, f: F) -> T
where
    F: Ungil + FnOnce() -> T,
    T: Ungil,
{
    if heavy {
        py.detach(f)
    } else {
        f()
    }
}
