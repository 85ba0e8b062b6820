//! The one place where Rust errors become Python exceptions.
//!
//! Exception classes are defined in Python (`symbi.errors`) so that users catch the same
//! classes whether an error was raised in Rust or in Python. Each mapping passes the
//! context attributes the Python class documents.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::BoundObject;

use crate::audit::AuditError;

/// Build an instance of `symbi.errors.<class>` with `message` and keyword attributes.
fn symbi_error(class: &str, message: String, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    Python::attach(|py| {
        let build = || -> PyResult<PyErr> {
            let cls = py.import("symbi.errors")?.getattr(class)?;
            let kwargs = PyDict::new(py);
            for (k, v) in attrs {
                kwargs.set_item(*k, v.bind(py))?;
            }
            Ok(PyErr::from_value(cls.call((message.clone(),), Some(&kwargs))?))
        };
        // If symbi.errors itself cannot load, still surface the original message.
        build().unwrap_or_else(|e| {
            PyRuntimeError::new_err(format!("{message} (and symbi.errors failed to load: {e})"))
        })
    })
}

fn obj<T>(v: T) -> Py<PyAny>
where
    T: for<'py> IntoPyObject<'py>,
{
    Python::attach(|py| match v.into_pyobject(py) {
        Ok(b) => b.into_any().unbind(),
        Err(_) => py.None(),
    })
}

impl From<AuditError> for PyErr {
    fn from(e: AuditError) -> PyErr {
        let msg = e.to_string();
        match e {
            AuditError::BadHashLength { expected, got } => symbi_error(
                "InvalidArgument",
                msg,
                &[("argument", obj("prev")), ("expected", obj(format!("{expected} bytes"))), ("got", obj(got))],
            ),
            AuditError::LengthMismatch { payloads, hashes } => symbi_error(
                "InvalidArgument",
                msg,
                &[
                    ("argument", obj("hashes")),
                    ("expected", obj(format!("{payloads} hashes"))),
                    ("got", obj(hashes)),
                ],
            ),
            AuditError::SequenceOverflow { first_seq, .. } => symbi_error(
                "InvalidArgument",
                msg,
                &[("argument", obj("first_seq")), ("expected", obj("a sequence that fits in u64")), ("got", obj(first_seq))],
            ),
        }
    }
}
