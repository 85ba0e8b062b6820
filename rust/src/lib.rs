//! `symbi._core`: the hot paths of symbi, exposed to Python through PyO3.
//!
//! Each submodule has one job and one error enum; `errors.rs` is the only place that turns
//! those enums into Python exceptions (the classes live in `symbi.errors`).

pub mod audit;
pub mod crypto;
pub mod dsl;
pub mod errors;
pub mod gil;
pub mod lex;
pub mod policy;
pub mod scheduler;
pub mod signing;
pub mod vector;

use pyo3::prelude::*;

/// The Python extension module. Functions are registered per concept so the facade modules
/// in `python/symbi/` can each import only what they wrap.
#[pymodule]
mod _core {
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    #[pymodule_export]
    use crate::audit::py::{
        audit_key_id, audit_query_dir, audit_verify_checkpoint, audit_verify_dir,
        audit_verify_event, audit_verify_inclusion, AuditStore,
    };
    #[pymodule_export]
    use crate::audit::py::{chain_hashes, chain_link, verify_chain};
    #[pymodule_export]
    use crate::crypto::py::{parse_envelope, BusKeyRing};
    #[pymodule_export]
    use crate::dsl::py::dsl_parse;
    #[pymodule_export]
    use crate::policy::py::{
        Allow, AllowWithConditions, Condition, Deny, Policy, PolicyEngineCore,
    };
    #[pymodule_export]
    use crate::scheduler::py::SchedulerCore;
    #[pymodule_export]
    use crate::vector::py::VectorIndexCore;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("CHAIN_HASH_SIZE", crate::audit::chain::HASH_SIZE)?;
        Ok(())
    }

    /// Facts about how this extension was built, for `symbi version` and bug reports.
    #[pyfunction]
    fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", env!("CARGO_PKG_VERSION"))?;
        d.set_item(
            "profile",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        )?;
        d.set_item("target_arch", std::env::consts::ARCH)?;
        d.set_item("target_os", std::env::consts::OS)?;
        d.set_item("abi3", true)?;
        Ok(d)
    }
}

/// Re-exported so Rust benches and tests can name the module's pure functions.
pub use audit::chain;
