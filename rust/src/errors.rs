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
use crate::crypto::CryptoError;
use crate::dsl::DslError;
use crate::policy::PolicyError;
use crate::scheduler::SchedulerError;
use crate::vector::VectorError;

/// Build an instance of `symbi.errors.<class>` with `message` and keyword attributes.
fn symbi_error(class: &str, message: String, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    Python::attach(|py| {
        let build = || -> PyResult<PyErr> {
            let cls = py.import("symbi.errors")?.getattr(class)?;
            let kwargs = PyDict::new(py);
            for (k, v) in attrs {
                kwargs.set_item(*k, v.bind(py))?;
            }
            Ok(PyErr::from_value(
                cls.call((message.clone(),), Some(&kwargs))?,
            ))
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
                &[
                    ("argument", obj("prev")),
                    ("expected", obj(format!("{expected} bytes"))),
                    ("got", obj(got)),
                ],
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
                &[
                    ("argument", obj("first_seq")),
                    ("expected", obj("a sequence that fits in u64")),
                    ("got", obj(first_seq)),
                ],
            ),
            AuditError::BadInput { field, .. } => symbi_error(
                "InvalidArgument",
                msg,
                &[
                    ("argument", obj(field)),
                    ("expected", obj("a valid audit event field")),
                ],
            ),
            AuditError::Integrity { seq, kind, .. } => symbi_error(
                "AuditIntegrityError",
                msg,
                &[("sequence", obj(seq)), ("kind", obj(kind.as_str()))],
            ),
            AuditError::Io { path, .. } | AuditError::Key { path, .. } => {
                symbi_error("AuditStorageError", msg, &[("path", obj(path))])
            }
            AuditError::Closed { .. } => symbi_error("RuntimeStateError", msg, &[]),
        }
    }
}

impl From<PolicyError> for PyErr {
    fn from(e: PolicyError) -> PyErr {
        let msg = e.to_string();
        match e {
            PolicyError::Parse {
                origin,
                line,
                column,
                ..
            } => symbi_error(
                "ParseError",
                msg,
                &[
                    ("source", obj(origin)),
                    ("line", obj(line)),
                    ("column", obj(column)),
                ],
            ),
            PolicyError::InvalidPolicy { field, message } => symbi_error(
                "InvalidArgument",
                msg,
                &[
                    ("argument", obj(format!("policy.{field}"))),
                    ("expected", obj(message)),
                ],
            ),
            PolicyError::BadRequest { field, message } => symbi_error(
                "InvalidArgument",
                msg,
                &[
                    ("argument", obj(format!("request.{field}"))),
                    ("expected", obj(message)),
                ],
            ),
            PolicyError::Eval(_) => symbi_error(
                "InvalidArgument",
                msg,
                &[
                    ("argument", obj("condition")),
                    ("expected", obj("a condition that evaluates to a bool")),
                ],
            ),
            PolicyError::UnknownPolicy(id) => symbi_error(
                "InvalidArgument",
                msg,
                &[
                    ("argument", obj("id")),
                    ("expected", obj("a registered policy id")),
                    ("got", obj(id)),
                ],
            ),
        }
    }
}

impl From<DslError> for PyErr {
    fn from(e: DslError) -> PyErr {
        let msg = e.to_string();
        match e {
            DslError::Parse {
                origin,
                line,
                column,
                ..
            } => symbi_error(
                "ParseError",
                msg,
                &[
                    ("source", obj(origin)),
                    ("line", obj(line)),
                    ("column", obj(column)),
                ],
            ),
        }
    }
}

impl From<CryptoError> for PyErr {
    fn from(e: CryptoError) -> PyErr {
        let msg = e.to_string();
        match e {
            CryptoError::UnknownAgent(agent) | CryptoError::DuplicateAgent(agent) => symbi_error(
                "InvalidArgument",
                msg,
                &[
                    ("argument", obj("agent")),
                    ("expected", obj("an agent known to the key ring")),
                    ("got", obj(agent)),
                ],
            ),
            CryptoError::WeakKey(agent) => symbi_error(
                "InvalidArgument",
                msg,
                &[
                    ("argument", obj("bundle")),
                    ("expected", obj("a valid X25519 public key")),
                    ("got", obj(agent)),
                ],
            ),
            CryptoError::Malformed(_) => symbi_error("SignatureError", msg, &[]),
            CryptoError::Signature { id, sender, .. } => symbi_error(
                "SignatureError",
                msg,
                &[("message_id", obj(id)), ("sender", obj(sender))],
            ),
            CryptoError::Decrypt { id } | CryptoError::WrongRecipient { id, .. } => {
                symbi_error("DecryptError", msg, &[("message_id", obj(id))])
            }
            CryptoError::UnknownTopic(_) => symbi_error("DecryptError", msg, &[]),
            CryptoError::Invalid {
                what: "timestamp", ..
            } => symbi_error("ReplayError", msg, &[]),
            CryptoError::Invalid { what, .. } => symbi_error(
                "InvalidArgument",
                msg,
                &[
                    ("argument", obj(what)),
                    ("expected", obj("see the message")),
                ],
            ),
        }
    }
}

impl From<SchedulerError> for PyErr {
    fn from(e: SchedulerError) -> PyErr {
        let msg = e.to_string();
        let (argument, expected, got): (String, String, Py<PyAny>) = match e {
            SchedulerError::BadOption {
                option,
                expected,
                got,
            } => (option.into(), expected.into(), obj(got)),
            SchedulerError::BadSlot {
                field,
                expected,
                got,
                ..
            } => (format!("slot.{field}"), expected.into(), obj(got)),
            SchedulerError::DuplicateSlot(id) => (
                "slot.id".into(),
                "a slot id not in the pool".into(),
                obj(id),
            ),
            SchedulerError::UnknownSlot(id) => (
                "slot_id".into(),
                "the id of a slot in the pool".into(),
                obj(id),
            ),
            SchedulerError::BadTaskId(got) => {
                ("task_id".into(), "an int in 0..2**64".into(), obj(got))
            }
            SchedulerError::DuplicateTask(id) => (
                "task_id".into(),
                "an id not queued or running".into(),
                obj(id),
            ),
            SchedulerError::BadPriority(got) => {
                ("priority".into(), "a Priority (0..4)".into(), obj(got))
            }
            SchedulerError::BadDemand { field, got, .. } => {
                (field.into(), "a finite number >= 0".into(), obj(got))
            }
            SchedulerError::Impossible {
                memory_mb,
                cpu_cores,
                ..
            } => (
                "memory_mb/cpu_cores".into(),
                "a demand some slot can hold".into(),
                obj((memory_mb, cpu_cores)),
            ),
            SchedulerError::WrongState {
                task_id, needed, ..
            } => ("task_id".into(), format!("a {needed} task"), obj(task_id)),
            SchedulerError::BadBatch { index, .. } => (
                "tasks".into(),
                "(task_id, priority, memory_mb, cpu_cores) tuples".into(),
                obj(index),
            ),
        };
        symbi_error(
            "InvalidArgument",
            msg,
            &[
                ("argument", obj(argument)),
                ("expected", obj(expected)),
                ("got", got),
            ],
        )
    }
}

impl From<VectorError> for PyErr {
    fn from(e: VectorError) -> PyErr {
        let msg = e.to_string();
        let attrs: Vec<(&str, Py<PyAny>)> = match e {
            VectorError::InvalidArgument { argument, .. } => vec![("argument", obj(argument))],
            VectorError::Dimension {
                argument,
                expected,
                got,
                ..
            } => vec![
                ("argument", obj(argument)),
                ("expected", obj(format!("{expected} columns"))),
                ("got", obj(got)),
            ],
            VectorError::NonFinite { argument, row }
            | VectorError::ZeroVector { argument, row } => {
                vec![
                    ("argument", obj(argument)),
                    ("got", obj(format!("row {row}"))),
                ]
            }
            VectorError::UnknownId { id } | VectorError::DuplicateId { id } => {
                vec![("argument", obj("ids")), ("id", obj(id))]
            }
            VectorError::BadFilter { path, .. } => {
                vec![("argument", obj("filter")), ("got", obj(path))]
            }
            VectorError::Io { path, .. } | VectorError::Corrupt { path, .. } => {
                vec![("path", obj(path))]
            }
        };
        symbi_error("VectorIndexError", msg, &attrs)
    }
}
