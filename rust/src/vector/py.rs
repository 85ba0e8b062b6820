//! `symbi._core.VectorIndexCore`: the Python face of the index. Arrays come in zero-copy
//! through the `numpy` crate; every heavy call releases the GIL. `symbi.vector.VectorIndex`
//! wraps this class (input coercion, 1-D queries, typed results).

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::filter::{Filter, Lit, Op};
use super::hnsw::{
    Index, Params, BRUTE_FORCE_MAX_ITEMS, BRUTE_FORCE_SELECTIVITY, NO_ID, REPAIR_FRACTION,
};
use super::{prepare_rows, store, Metric, VectorError};

fn bad_filter(path: &str, message: impl Into<String>) -> VectorError {
    VectorError::BadFilter {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// A metadata value or filter operand; `None` when the type is not supported.
fn lit(v: &Bound<'_, PyAny>) -> std::result::Result<Option<Lit>, &'static str> {
    if v.is_instance_of::<PyBool>() {
        return Ok(Some(Lit::Bool(
            v.extract::<bool>().map_err(|_| "bad bool")?,
        )));
    }
    if v.is_instance_of::<PyInt>() {
        return v
            .extract::<i64>()
            .map(|i| Some(Lit::Int(i)))
            .map_err(|_| "integers must fit in 64 bits (-2**63 .. 2**63-1)");
    }
    if v.is_instance_of::<PyFloat>() {
        let x: f64 = v.extract().map_err(|_| "bad float")?;
        if !x.is_finite() {
            return Err("floats must be finite (no NaN or infinity)");
        }
        return Ok(Some(Lit::Float(x)));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(Some(Lit::Str(v.extract().map_err(|_| "bad str")?)));
    }
    Ok(None)
}

fn filter_lit(v: &Bound<'_, PyAny>, path: &str) -> Result<Lit, VectorError> {
    match lit(v) {
        Ok(Some(l)) => Ok(l),
        Ok(None) => Err(bad_filter(
            path,
            format!(
                "operand of type {} is not supported; use str, int, float or bool",
                type_name(v)
            ),
        )),
        Err(m) => Err(bad_filter(path, m)),
    }
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn items_of<'py>(v: &Bound<'py, PyAny>, path: &str) -> Result<Vec<Bound<'py, PyAny>>, VectorError> {
    if v.is_instance_of::<PyList>()
        || v.is_instance_of::<PyTuple>()
        || v.is_instance_of::<pyo3::types::PySet>()
        || v.is_instance_of::<pyo3::types::PyFrozenSet>()
    {
        let mut out = Vec::new();
        for x in v.try_iter().map_err(|e| bad_filter(path, e.to_string()))? {
            out.push(x.map_err(|e| bad_filter(path, e.to_string()))?);
        }
        Ok(out)
    } else {
        Err(bad_filter(
            path,
            format!("expected a list, tuple or set, got {}", type_name(v)),
        ))
    }
}

/// Parse the dict form: `{"field": value}`, `{"field": {"gte": 1, "lt": 5}}`,
/// `{"field": {"in": [..]}}`, `{"$and": [..]}`, `{"$or": [..]}`, `{"$not": {..}}`.
pub fn parse_filter(obj: &Bound<'_, PyAny>, path: &str) -> Result<Filter, VectorError> {
    let d = obj
        .cast::<PyDict>()
        .map_err(|_| bad_filter(path, format!("expected a dict, got {}", type_name(obj))))?;
    let mut parts = Vec::new();
    for (k, v) in d.iter() {
        let key: String = k.extract().map_err(|_| {
            bad_filter(
                path,
                "filter keys must be field names (str) or $and/$or/$not",
            )
        })?;
        let here = format!("{path}.{key}");
        match key.as_str() {
            "$and" | "$or" => {
                let subs = items_of(&v, &here)?
                    .iter()
                    .enumerate()
                    .map(|(i, x)| parse_filter(x, &format!("{here}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                parts.push(if key == "$and" {
                    Filter::And(subs)
                } else {
                    Filter::Or(subs)
                });
            }
            "$not" => parts.push(Filter::Not(Box::new(parse_filter(&v, &here)?))),
            k if k.starts_with('$') => {
                return Err(bad_filter(&here, "unknown operator; use $and, $or or $not"));
            }
            _ => {
                if let Ok(ops) = v.cast::<PyDict>() {
                    if ops.is_empty() {
                        return Err(bad_filter(
                            &here,
                            "empty condition; give an operator such as {\"eq\": value}",
                        ));
                    }
                    for (op, operand) in ops.iter() {
                        let op: String = op
                            .extract()
                            .map_err(|_| bad_filter(&here, "operator names are str"))?;
                        let p = format!("{here}.{op}");
                        match op.as_str() {
                            "in" | "nin" => {
                                let values = items_of(&operand, &p)?
                                    .iter()
                                    .map(|x| filter_lit(x, &p))
                                    .collect::<Result<Vec<_>, _>>()?;
                                parts.push(Filter::In {
                                    field: key.clone(),
                                    values,
                                    negate: op == "nin",
                                });
                            }
                            other => {
                                let op = Op::parse(other).ok_or_else(|| {
                                    bad_filter(
                                        &p,
                                        "unknown operator; use eq, ne, lt, lte, gt, gte, in or nin",
                                    )
                                })?;
                                parts.push(Filter::Cmp {
                                    field: key.clone(),
                                    op,
                                    value: filter_lit(&operand, &p)?,
                                });
                            }
                        }
                    }
                } else {
                    parts.push(Filter::Cmp {
                        field: key.clone(),
                        op: Op::Eq,
                        value: filter_lit(&v, &here)?,
                    });
                }
            }
        }
    }
    Ok(if parts.len() == 1 {
        parts.pop().expect("one")
    } else {
        Filter::And(parts)
    })
}

use super::hnsw::MetaItems;

type Record<'py> = (Bound<'py, PyArray1<f32>>, Option<Bound<'py, PyDict>>);

fn parse_metadata(obj: &Bound<'_, PyAny>, n: usize) -> Result<Vec<Option<MetaItems>>, VectorError> {
    let arg = |m: String| VectorError::arg("metadata", m);
    let mut out = Vec::with_capacity(n);
    for (row, item) in obj
        .try_iter()
        .map_err(|_| arg("expected a sequence with one dict (or None) per id".into()))?
        .enumerate()
    {
        let item = item.map_err(|e| arg(e.to_string()))?;
        if item.is_none() {
            out.push(None);
            continue;
        }
        let d = item.cast::<PyDict>().map_err(|_| {
            arg(format!(
                "row {row}: expected a dict or None, got {}",
                type_name(&item)
            ))
        })?;
        let mut m = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key: String = k
                .extract()
                .map_err(|_| arg(format!("row {row}: keys must be str")))?;
            if key.starts_with('$') {
                return Err(arg(format!(
                    "row {row}: key {key:?} starts with '$', which filters reserve"
                )));
            }
            match lit(&v) {
                Ok(Some(l)) => m.push((key, l)),
                Ok(None) => {
                    return Err(arg(format!(
                        "row {row}, key {key:?}: values must be str, int, float or bool, got {}",
                        type_name(&v)
                    )))
                }
                Err(e) => return Err(arg(format!("row {row}, key {key:?}: {e}"))),
            }
        }
        out.push(Some(m));
    }
    if out.len() != n {
        return Err(arg(format!(
            "got {} metadata entries for {n} ids; pass one per id (or None)",
            out.len()
        )));
    }
    Ok(out)
}

fn lit_to_py<'py>(py: Python<'py>, l: &Lit) -> PyResult<Bound<'py, PyAny>> {
    Ok(match l {
        Lit::Str(s) => PyString::new(py, s).into_any(),
        Lit::Int(i) => i.into_pyobject(py)?.into_any(),
        Lit::Float(x) => PyFloat::new(py, *x).into_any(),
        Lit::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
    })
}

/// Rows of a 2-D float32 array, checked: shape, contiguity, finiteness (normalized for cosine).
fn rows(
    arr: &PyReadonlyArray2<'_, f32>,
    argument: &'static str,
    dim: usize,
    metric: Metric,
) -> Result<Vec<f32>, VectorError> {
    let shape = arr.shape();
    if shape[1] != dim {
        return Err(VectorError::Dimension {
            argument,
            expected: dim,
            got: shape[1],
            row: 0,
        });
    }
    let s = arr.as_slice().map_err(|_| {
        VectorError::arg(
            argument,
            "array must be C-contiguous; use numpy.ascontiguousarray",
        )
    })?;
    let mut v = s.to_vec();
    prepare_rows(argument, &mut v, dim, metric)?;
    Ok(v)
}

fn compression_name(p: &Params) -> Option<&'static str> {
    if p.sq4 {
        Some("sq4")
    } else if p.sq8 {
        Some("sq8")
    } else {
        None
    }
}

/// The HNSW index core. Use `symbi.VectorIndex` instead.
#[pyclass(name = "VectorIndexCore", module = "symbi._core", frozen)]
pub struct VectorIndexCore {
    inner: Arc<Index>,
    dim: usize,
    metric: Metric,
}

#[pymethods]
impl VectorIndexCore {
    #[new]
    #[pyo3(signature = (dim, metric = "cosine", m = 16, ef_construction = 200, ef_search = 100, compression = None, seed = 100))]
    fn new(
        dim: usize,
        metric: &str,
        m: usize,
        ef_construction: usize,
        ef_search: usize,
        compression: Option<&str>,
        seed: u64,
    ) -> PyResult<Self> {
        let metric = Metric::parse(metric)?;
        let (sq4, sq8) = match compression {
            None | Some("none") => (false, false),
            Some("sq4") => (true, false),
            Some("sq8") => (false, true),
            Some(other) => {
                return Err(VectorError::arg(
                    "compression",
                    format!("unknown compression {other:?}; use 'sq8', 'sq4' or None"),
                )
                .into())
            }
        };
        let p = Params {
            dim,
            metric,
            m,
            ef_construction,
            ef_search,
            sq4,
            sq8,
            seed,
        };
        Ok(VectorIndexCore {
            inner: Arc::new(Index::new(p)?),
            dim,
            metric,
        })
    }

    /// Add a batch (`upsert=True` replaces existing ids). Returns the number added.
    #[pyo3(signature = (ids, vectors, metadata = None, upsert = false, threads = None))]
    fn add(
        &self,
        py: Python<'_>,
        ids: PyReadonlyArray1<'_, u64>,
        vectors: PyReadonlyArray2<'_, f32>,
        metadata: Option<Bound<'_, PyAny>>,
        upsert: bool,
        threads: Option<usize>,
    ) -> PyResult<usize> {
        let data = rows(&vectors, "vectors", self.dim, self.metric)?;
        let ids = ids
            .as_slice()
            .map_err(|_| VectorError::arg("ids", "ids must be a contiguous 1-D array"))?
            .to_vec();
        let metas = match metadata {
            Some(m) if !m.is_none() => parse_metadata(&m, ids.len())?,
            _ => Vec::new(),
        };
        let inner = &self.inner;
        Ok(py.detach(|| inner.add(&ids, &data, metas, upsert, threads))?)
    }

    /// Delete ids; unknown ids raise unless `missing_ok`. Returns the number deleted.
    #[pyo3(signature = (ids, missing_ok = false))]
    fn delete(
        &self,
        py: Python<'_>,
        ids: PyReadonlyArray1<'_, u64>,
        missing_ok: bool,
    ) -> PyResult<usize> {
        let ids = ids
            .as_slice()
            .map_err(|_| VectorError::arg("ids", "ids must be a contiguous 1-D array"))?
            .to_vec();
        let inner = &self.inner;
        Ok(py.detach(|| inner.delete(&ids, missing_ok))?)
    }

    /// Search a batch of queries: `(ids[nq, k] uint64, distances[nq, k] float32)`.
    #[pyo3(signature = (queries, k = 10, ef = None, filter = None, threads = None))]
    #[allow(clippy::type_complexity)]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        k: usize,
        ef: Option<usize>,
        filter: Option<Bound<'py, PyAny>>,
        threads: Option<usize>,
    ) -> PyResult<(Bound<'py, PyArray2<u64>>, Bound<'py, PyArray2<f32>>)> {
        let nq = queries.shape()[0];
        let q = rows(&queries, "queries", self.dim, self.metric)?;
        let filter = match filter {
            Some(f) if !f.is_none() => Some(parse_filter(&f, "filter")?),
            _ => None,
        };
        let inner = &self.inner;
        let hits = py.detach(|| inner.search(&q, k, ef, filter.as_ref(), threads))?;
        let ids = hits.ids.into_pyarray(py).reshape([nq, k])?;
        let dists = hits.dists.into_pyarray(py).reshape([nq, k])?;
        Ok((ids, dists))
    }

    /// `(vector, metadata or None)` of one id (cosine vectors are stored normalized).
    fn get<'py>(&self, py: Python<'py>, id: u64) -> PyResult<Record<'py>> {
        let inner = &self.inner;
        let (v, m) = py.detach(|| inner.get(id))?;
        let meta = match m {
            None => None,
            Some(items) => {
                let d = PyDict::new(py);
                for (k, l) in &items {
                    d.set_item(k, lit_to_py(py, l)?)?;
                }
                Some(d)
            }
        };
        Ok((PyArray1::from_vec(py, v), meta))
    }

    fn contains(&self, id: u64) -> bool {
        self.inner.contains(id)
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        let inner = &self.inner;
        py.detach(|| inner.len())
    }

    /// Rebuild links around deleted items now; returns how many were purged.
    fn repair(&self, py: Python<'_>) -> usize {
        let inner = &self.inner;
        py.detach(|| inner.repair())
    }

    /// Save to a directory (crash-safe: temp files, fsync, atomic rename, fsync dir).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let inner = &self.inner;
        py.detach(|| {
            let _w = inner.writer.lock();
            let mut core = inner.core.write();
            core.repair();
            let core = parking_lot::RwLockWriteGuard::downgrade(core);
            store::save(&core, &path)
        })?;
        Ok(())
    }

    #[staticmethod]
    #[pyo3(signature = (path, mmap = true))]
    fn load(py: Python<'_>, path: PathBuf, mmap: bool) -> PyResult<Self> {
        let index = py.detach(|| store::load(&path, mmap))?;
        let (dim, metric) = {
            let c = index.core.read();
            (c.p.dim, c.p.metric)
        };
        Ok(VectorIndexCore {
            inner: Arc::new(index),
            dim,
            metric,
        })
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let c = self.inner.core.read();
        let nodes = c.graph.len();
        let graph = c.graph.bytes();
        d.set_item("count", c.live())?;
        d.set_item("deleted", c.n_deleted - c.n_purged)?;
        d.set_item("slots", nodes)?;
        d.set_item("dim", c.p.dim)?;
        d.set_item("metric", c.p.metric.as_str())?;
        d.set_item("m", c.p.m)?;
        d.set_item("ef_construction", c.p.ef_construction)?;
        d.set_item("ef_search", c.p.ef_search)?;
        d.set_item("compression", compression_name(&c.p))?;
        d.set_item("max_level", c.entry.read().1)?;
        d.set_item("vector_bytes", nodes * c.p.dim * 4)?;
        d.set_item("code_bytes", c.codes.len())?;
        let coded = c.p.sq4 || c.p.sq8;
        d.set_item("bytes_per_code", if coded { c.code_bytes } else { 0 })?;
        d.set_item("graph_bytes", graph)?;
        d.set_item("mmap", c.mmap_path.clone())?;
        d.set_item("simd", c.k.name)?;
        d.set_item(
            "fallback_searches",
            c.fallbacks.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        Ok(d)
    }

    #[getter]
    fn dim(&self) -> usize {
        self.dim
    }

    #[getter]
    fn metric(&self) -> &'static str {
        self.metric.as_str()
    }

    #[getter]
    fn compression(&self) -> Option<&'static str> {
        compression_name(&self.inner.core.read().p)
    }

    /// Tuning constants, for documentation and tests.
    #[staticmethod]
    fn constants<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("NO_ID", NO_ID)?;
        d.set_item("BRUTE_FORCE_SELECTIVITY", BRUTE_FORCE_SELECTIVITY)?;
        d.set_item("BRUTE_FORCE_MAX_ITEMS", BRUTE_FORCE_MAX_ITEMS)?;
        d.set_item("REPAIR_FRACTION", REPAIR_FRACTION)?;
        Ok(d)
    }
}
