//! Python binding: `dsl_parse(text, source, strict)` parses with the GIL released and
//! returns the file as plain data (dicts, lists, tuples) holding `symbi.Policy` objects.
//! `symbi.dsl` turns that into typed objects.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use super::ast::Tree;
use super::parser::{parse_file, Options};
use crate::policy::py::Policy;

fn to_py<'py>(py: Python<'py>, t: &Tree) -> PyResult<Bound<'py, PyAny>> {
    Ok(match t {
        Tree::None => py.None().into_bound(py),
        Tree::Bool(b) => b.into_bound_py_any(py)?,
        Tree::Int(i) => i.into_bound_py_any(py)?,
        Tree::Float(f) => f.into_bound_py_any(py)?,
        Tree::Str(s) => s.into_bound_py_any(py)?,
        Tree::List(items) => {
            let l = PyList::empty(py);
            for it in items {
                l.append(to_py(py, it)?)?;
            }
            l.into_any()
        }
        Tree::Tuple(items) => {
            let v = items
                .iter()
                .map(|it| to_py(py, it))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, v)?.into_any()
        }
        Tree::Dict(items) => {
            let d = PyDict::new(py);
            for (k, v) in items {
                d.set_item(k, to_py(py, v)?)?;
            }
            d.into_any()
        }
        Tree::Policy(p) => Bound::new(
            py,
            Policy {
                inner: (**p).clone(),
            },
        )?
        .into_any(),
    })
}

/// Parse Symbiont DSL text. Returns `{"metadata", "agents", "policies",
/// "unsupported_policies", "functions", "types", "blocks", "warnings"}`; raises
/// `symbi.errors.ParseError` (source, line, column) when the text does not parse.
#[pyfunction]
#[pyo3(signature = (text, source="<string>", strict=true))]
pub fn dsl_parse<'py>(
    py: Python<'py>,
    text: &str,
    source: &str,
    strict: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let opts = Options {
        strict_policies: strict,
    };
    let (tree, warnings) =
        py.detach(|| parse_file(text, source, opts).map(|(f, w)| (f.to_tree(), w)))?;
    let d = to_py(py, &tree)?;
    let ws = PyList::empty(py);
    for w in warnings {
        ws.append((w.line, w.column, w.message))?;
    }
    d.set_item("warnings", ws)?;
    Ok(d)
}
