//! Python bindings: `Policy`, `PolicyEngineCore` and the decision classes `Allow`, `Deny`,
//! `AllowWithConditions` and `Condition`. Batches are converted first, then decided with
//! the GIL released.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

use super::ast::{self, Map, Value};
use super::condition::Request;
use super::engine::{Decision, Engine, Obligations};
use super::{parser, PolicyError};

const MAX_DEPTH: usize = 32;

// ------------------------------------------------------------------ values

/// Prefix the (relative) field path of a conversion error with `root`.
fn rooted<T>(r: Result<T, PolicyError>, root: &str) -> Result<T, PolicyError> {
    r.map_err(|e| match e {
        PolicyError::BadRequest { field, message } => PolicyError::BadRequest {
            field: format!("{root}{field}"),
            message,
        },
        e => e,
    })
}

/// A Python value as a policy value. Errors carry the field path relative to `obj`
/// (`""`, `".key"`, ...); callers add the root with [`rooted`]. No path is built unless
/// there is an error, so the common case allocates only the value itself.
fn to_value(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, PolicyError> {
    let bad = |message: String| PolicyError::BadRequest {
        field: String::new(),
        message,
    };
    if depth > MAX_DEPTH {
        return Err(bad(format!("nested more than {MAX_DEPTH} levels deep")));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::Str(
            s.to_cow().map_err(|e| bad(e.to_string()))?.into_owned(),
        ));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.cast::<PyInt>().is_ok() {
        return obj
            .extract::<i64>()
            .map(Value::Int)
            .map_err(|_| bad("integer does not fit in 64 bits".into()));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return dict_to_map(d, depth).map(Value::Map);
    }
    if obj.cast::<PyList>().is_ok()
        || obj.cast::<PyTuple>().is_ok()
        || obj.cast::<PySet>().is_ok()
        || obj.cast::<PyFrozenSet>().is_ok()
    {
        let mut items = Vec::new();
        for it in obj.try_iter().map_err(|e| bad(e.to_string()))? {
            let it = it.map_err(|e| bad(e.to_string()))?;
            items.push(to_value(&it, depth + 1)?);
        }
        return Ok(Value::List(items));
    }
    let tn = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    Err(bad(format!(
        "values must be str, int, float, bool, None, list, tuple, set or dict, got {tn}"
    )))
}

fn dict_to_map(d: &Bound<'_, PyDict>, depth: usize) -> Result<Map, PolicyError> {
    let mut m = Map::new();
    for (k, v) in d.iter() {
        let Ok(k) = k.cast::<PyString>() else {
            return Err(PolicyError::BadRequest {
                field: String::new(),
                message: format!(
                    "mapping keys must be str, got {}",
                    k.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ),
            });
        };
        let k = k.to_cow().map(|c| c.into_owned()).unwrap_or_default();
        let v = match to_value(&v, depth + 1) {
            Ok(v) => v,
            Err(e) => return rooted(Err(e), &format!(".{k}")),
        };
        m.insert(k, v);
    }
    Ok(m)
}

fn from_value<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_bound_py_any(py)?,
        Value::Int(i) => i.into_bound_py_any(py)?,
        Value::Float(f) => f.into_bound_py_any(py)?,
        Value::Str(s) => s.into_bound_py_any(py)?,
        Value::List(items) => {
            let l = PyList::empty(py);
            for it in items {
                l.append(from_value(py, it)?)?;
            }
            l.into_any()
        }
        Value::Map(m) => map_to_dict(py, m)?.into_any(),
    })
}

fn map_to_dict<'py>(py: Python<'py>, m: &Map) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in m {
        d.set_item(k, from_value(py, v)?)?;
    }
    Ok(d)
}

// ------------------------------------------------------------------ requests

/// `principal` / `resource`: a str id, or an object with `.id` (str) and `.attrs` (dict).
fn party(obj: &Bound<'_, PyAny>, field: &str) -> Result<(Value, Map), PolicyError> {
    let py = obj.py();
    let bad = |message: String| PolicyError::BadRequest {
        field: field.to_string(),
        message,
    };
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok((Value::Str(s.to_string()), Map::new()));
    }
    let id = obj
        .getattr(intern!(py, "id"))
        .map_err(|_| bad("expected a str id or an object with .id and .attrs".into()))?;
    let id = id
        .cast::<PyString>()
        .map_err(|_| bad("`.id` must be a str".into()))?
        .to_string();
    let attrs = match obj.getattr(intern!(py, "attrs")) {
        Ok(a) if a.is_none() => Map::new(),
        Ok(a) => {
            let d = a
                .cast::<PyDict>()
                .map_err(|_| bad("`.attrs` must be a dict".into()))?;
            rooted(dict_to_map(d, 0), &format!("{field}.attrs"))?
        }
        Err(_) => Map::new(),
    };
    Ok((Value::Str(id), attrs))
}

fn request<'py>(obj: &Bound<'py, PyAny>) -> Result<Request, PolicyError> {
    let py = obj.py();
    let get = |name: &Bound<'py, PyString>| -> Result<Bound<'py, PyAny>, PolicyError> {
        obj.getattr(name).map_err(|_| PolicyError::BadRequest {
            field: name.to_string(),
            message: "missing; pass a symbi.PolicyRequest".into(),
        })
    };
    let (principal_id, principal_attrs) = party(&get(intern!(py, "principal"))?, "principal")?;
    let (resource_id, resource_attrs) = party(&get(intern!(py, "resource"))?, "resource")?;
    let action = get(intern!(py, "action"))?;
    let action = match action.cast::<PyString>() {
        Ok(s) if !s.is_empty().unwrap_or(true) => s.to_string(),
        _ => {
            return Err(PolicyError::BadRequest {
                field: "action".into(),
                message: "must be a non-empty str".into(),
            })
        }
    };
    let ctx = get(intern!(py, "context"))?;
    let context = if ctx.is_none() {
        Map::new()
    } else {
        let d = ctx.cast::<PyDict>().map_err(|_| PolicyError::BadRequest {
            field: "context".into(),
            message: "must be a dict".into(),
        })?;
        rooted(dict_to_map(d, 0), "context")?
    };
    Ok(Request {
        principal_id,
        principal_attrs,
        action: Value::Str(action),
        resource_id,
        resource_attrs,
        context,
    })
}

// ------------------------------------------------------------------ decisions

/// The request is allowed, with nothing further required.
#[pyclass(module = "symbi._core", frozen, eq)]
#[derive(PartialEq)]
pub struct Allow;

#[pymethods]
impl Allow {
    #[new]
    fn new() -> Self {
        Allow
    }

    #[getter]
    fn allowed(&self) -> bool {
        true
    }

    fn __repr__(&self) -> &'static str {
        "Allow()"
    }
}

/// The request is denied. `reason` says why; `policy` names the deciding policy, if any.
#[pyclass(module = "symbi._core", frozen, eq)]
#[derive(PartialEq)]
pub struct Deny {
    #[pyo3(get)]
    reason: String,
    #[pyo3(get)]
    policy: Option<String>,
}

#[pymethods]
impl Deny {
    #[new]
    #[pyo3(signature = (reason, policy=None))]
    fn new(reason: String, policy: Option<String>) -> Self {
        Deny { reason, policy }
    }

    #[getter]
    fn allowed(&self) -> bool {
        false
    }

    fn __repr__(&self) -> String {
        let policy = match &self.policy {
            Some(p) => format!("{p:?}"),
            None => "None".into(),
        };
        format!("Deny(reason={:?}, policy={policy})", self.reason)
    }
}

/// One obligation of an allow: a `require` or `audit` entry of the allowing policy.
#[pyclass(module = "symbi._core", frozen, eq)]
#[derive(PartialEq)]
pub struct Condition {
    #[pyo3(get)]
    kind: String,
    #[pyo3(get)]
    key: String,
    value: Value,
    #[pyo3(get)]
    policy: String,
}

#[pymethods]
impl Condition {
    #[new]
    fn new(kind: String, key: String, value: &Bound<'_, PyAny>, policy: String) -> PyResult<Self> {
        if kind != "require" && kind != "audit" {
            return Err(PolicyError::InvalidPolicy {
                field: "kind".into(),
                message: "must be \"require\" or \"audit\"".into(),
            }
            .into());
        }
        Ok(Condition {
            kind,
            key,
            value: rooted(to_value(value, 0), "value")?,
            policy,
        })
    }

    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        from_value(py, &self.value)
    }

    fn __repr__(&self) -> String {
        let mut v = String::new();
        ast::write_value(&self.value, &mut v);
        format!(
            "Condition(kind={:?}, key={:?}, value={v}, policy={:?})",
            self.kind, self.key, self.policy
        )
    }
}

/// The request is allowed if the caller meets `conditions` (from the allowing policies'
/// `require` and `audit` clauses).
#[pyclass(module = "symbi._core", frozen, eq)]
#[derive(PartialEq)]
pub struct AllowWithConditions {
    obligations: Vec<Arc<Obligations>>,
}

fn merged<'py>(
    py: Python<'py>,
    obs: &[Arc<Obligations>],
    audit: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for o in obs {
        for (k, v) in if audit { &o.audit } else { &o.require } {
            if !d.contains(k)? {
                d.set_item(k, from_value(py, v)?)?;
            }
        }
    }
    Ok(d)
}

#[pymethods]
impl AllowWithConditions {
    #[new]
    fn new(conditions: Vec<PyRef<'_, Condition>>) -> Self {
        let mut obligations: Vec<Obligations> = Vec::new();
        for c in conditions {
            let at = match obligations.iter().position(|o| o.policy == c.policy) {
                Some(i) => i,
                None => {
                    obligations.push(Obligations {
                        policy: c.policy.clone(),
                        require: Map::new(),
                        audit: Map::new(),
                    });
                    obligations.len() - 1
                }
            };
            let o = &mut obligations[at];
            let m = if c.kind == "audit" {
                &mut o.audit
            } else {
                &mut o.require
            };
            m.insert(c.key.clone(), c.value.clone());
        }
        AllowWithConditions {
            obligations: obligations.into_iter().map(Arc::new).collect(),
        }
    }

    #[getter]
    fn allowed(&self) -> bool {
        true
    }

    /// Every obligation, policy by policy in registration order: require entries, then audit.
    #[getter]
    fn conditions(&self) -> Vec<Condition> {
        let mut out = Vec::new();
        for o in &self.obligations {
            for (kind, m) in [("require", &o.require), ("audit", &o.audit)] {
                for (k, v) in m {
                    out.push(Condition {
                        kind: kind.into(),
                        key: k.clone(),
                        value: v.clone(),
                        policy: o.policy.clone(),
                    });
                }
            }
        }
        out
    }

    /// `require` entries of all allowing policies; the first policy to set a key wins.
    #[getter]
    fn require<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        merged(py, &self.obligations, false)
    }

    /// `audit` entries of all allowing policies; the first policy to set a key wins.
    #[getter]
    fn audit<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        merged(py, &self.obligations, true)
    }

    #[getter]
    fn policies(&self) -> Vec<String> {
        self.obligations.iter().map(|o| o.policy.clone()).collect()
    }

    fn __repr__(&self) -> String {
        let parts: Vec<String> = self.conditions().iter().map(|c| c.__repr__()).collect();
        format!("AllowWithConditions(conditions=[{}])", parts.join(", "))
    }
}

static ALLOW: PyOnceLock<Py<Allow>> = PyOnceLock::new();

fn decision_to_py(py: Python<'_>, d: Decision) -> PyResult<Py<PyAny>> {
    Ok(match d {
        Decision::Allow => ALLOW
            .get_or_init(py, || Py::new(py, Allow).expect("allocating Allow"))
            .clone_ref(py)
            .into_any(),
        Decision::Deny { reason, policy } => Py::new(py, Deny { reason, policy })?.into_any(),
        Decision::AllowWithConditions(obligations) => {
            Py::new(py, AllowWithConditions { obligations })?.into_any()
        }
    })
}

// ------------------------------------------------------------------ policies

/// A parsed policy (from DSL text or the dict form). Immutable; compare with `==`.
#[pyclass(module = "symbi._core", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Policy {
    pub inner: ast::Policy,
}

#[pymethods]
impl Policy {
    /// Every `policy` block in `text`; errors name `source:line:col`.
    #[staticmethod]
    #[pyo3(signature = (text, source="<string>"))]
    fn parse(py: Python<'_>, text: &str, source: &str) -> PyResult<Vec<Policy>> {
        let ps = py.detach(|| parser::parse_policies(text, source))?;
        Ok(ps.into_iter().map(|inner| Policy { inner }).collect())
    }

    /// A policy from its dict form (see `symbi.policy` for the keys).
    #[staticmethod]
    #[pyo3(signature = (data, source="<dict>"))]
    fn from_dict(data: &Bound<'_, PyAny>, source: &str) -> PyResult<Policy> {
        let v = rooted(to_value(data, 0), "policy").map_err(|e| match e {
            PolicyError::BadRequest { field, message } => {
                let field = field.strip_prefix("policy.").unwrap_or(&field).to_string();
                PolicyError::InvalidPolicy { field, message }
            }
            e => e,
        })?;
        Ok(Policy {
            inner: ast::Policy::from_value(&v, source)?,
        })
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        from_value(py, &self.inner.to_value())
    }

    fn to_dsl(&self) -> String {
        self.inner.to_dsl()
    }

    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    #[getter]
    fn principals(&self) -> Option<Vec<String>> {
        self.inner.principals.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Policy(name={:?}, rules={})",
            self.inner.name,
            self.inner.rules.len()
        )
    }
}

// ------------------------------------------------------------------ engine

/// The compiled policy set and the decision procedure. `symbi.PolicyEngine` wraps this.
#[pyclass(module = "symbi._core", frozen)]
pub struct PolicyEngineCore {
    engine: Engine,
}

#[pymethods]
impl PolicyEngineCore {
    #[new]
    #[pyo3(signature = (enforce=true))]
    fn new(enforce: bool) -> Self {
        PolicyEngineCore {
            engine: Engine::new(enforce),
        }
    }

    #[getter]
    fn get_enforce(&self) -> bool {
        self.engine.enforce()
    }

    #[setter]
    fn set_enforce(&self, on: bool) {
        self.engine.set_enforce(on)
    }

    fn register(&self, policy: PyRef<'_, Policy>) -> PyResult<String> {
        Ok(self.engine.register(policy.inner.clone())?)
    }

    /// Add several policies in one atomic swap; returns their ids in order.
    fn register_all(&self, policies: Vec<PyRef<'_, Policy>>) -> PyResult<Vec<String>> {
        Ok(self
            .engine
            .register_all(policies.iter().map(|p| p.inner.clone()).collect())?)
    }

    fn reload(&self, policies: Vec<PyRef<'_, Policy>>) -> PyResult<Vec<String>> {
        Ok(self
            .engine
            .reload(policies.iter().map(|p| p.inner.clone()).collect())?)
    }

    fn replace(&self, id: &str, policy: PyRef<'_, Policy>) -> PyResult<()> {
        Ok(self.engine.replace(id, policy.inner.clone())?)
    }

    fn remove(&self, id: &str) -> PyResult<()> {
        Ok(self.engine.remove(id)?)
    }

    fn get(&self, id: &str) -> PyResult<Policy> {
        Ok(Policy {
            inner: self.engine.get(id)?,
        })
    }

    fn ids(&self) -> Vec<String> {
        self.engine.ids()
    }

    fn __len__(&self) -> usize {
        self.engine.len()
    }

    /// Decide one request. Never raises for a bad request: that is a `Deny` saying why.
    fn evaluate(&self, py: Python<'_>, request: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let d = match self::request(request) {
            Ok(r) => self.engine.evaluate(&r),
            Err(e) => Decision::Deny {
                reason: format!("{e}; denying (fail closed)"),
                policy: None,
            },
        };
        decision_to_py(py, d)
    }

    /// Decide many requests against one snapshot of the policies, with the GIL released.
    fn evaluate_batch(
        &self,
        py: Python<'_>,
        requests: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        // One snapshot for the whole batch; chunks keep the working set in cache.
        const CHUNK: usize = 512;
        let snap = self.engine.snapshot();
        let mut out = Vec::new();
        let mut reqs = Vec::with_capacity(CHUNK);
        let mut it = requests.try_iter()?;
        loop {
            reqs.clear();
            for r in it.by_ref().take(CHUNK) {
                reqs.push(self::request(&r?));
            }
            if reqs.is_empty() {
                return Ok(out);
            }
            let ds = py.detach(|| snap.decide_batch(&reqs));
            for d in ds {
                out.push(decision_to_py(py, d)?);
            }
        }
    }
}
