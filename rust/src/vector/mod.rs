//! Vector index: an HNSW graph over float32 vectors with live updates, filtered search,
//! 4-bit scalar quantization and crash-safe, mmap-backed persistence.
//!
//! Layout:
//! - [`distance`]: dot / squared-L2 kernels (AVX2+FMA with runtime detection, portable fallback);
//! - [`quant`]: 4-bit per-dimension scalar quantization (SQ4, 8x smaller than float32);
//! - [`filter`]: metadata values, the string interner and filter predicates;
//! - [`graph`]: flat neighbour lists with per-node seqlocks (lock-free search reads);
//! - [`hnsw`]: the graph, insertion, deletion repair and (filtered) search;
//! - [`store`]: save/load of an index directory;
//! - [`py`]: the `symbi._core.VectorIndexCore` class wrapped by `symbi.vector`.
//!
//! Why our own HNSW and not a crate: the graph must evaluate metadata predicates *during*
//! traversal (non-matching nodes still route the search), support live deletes with
//! neighbour repair while queries run, traverse on quantized codes and rerank from an
//! mmap'd float32 file, and release the GIL around all of it. The maintained Rust HNSW
//! crates (hnsw_rs, instant-distance) cover parts of that but not filtered traversal with
//! tombstones + repair + SQ4 together, and wrapping them would mean a second copy of every
//! vector. The algorithm follows Malkov & Yashunin (2016) and hnswlib's neighbour heuristic.

pub mod distance;
pub mod filter;
pub mod graph;
pub mod hnsw;
pub mod py;
pub mod quant;
pub mod store;

/// Everything that can go wrong in the vector index. Mapped to
/// `symbi.errors.VectorIndexError` in `errors.rs`.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("invalid {argument}: {message}")]
    InvalidArgument {
        argument: &'static str,
        message: String,
    },
    #[error(
        "{argument} row {row} has dimension {got}, but the index has dimension {expected}; \
         pass arrays with exactly {expected} columns"
    )]
    Dimension {
        argument: &'static str,
        expected: usize,
        got: usize,
        row: usize,
    },
    #[error(
        "{argument} row {row} contains NaN or infinity; clean or drop that vector before \
         adding or searching"
    )]
    NonFinite { argument: &'static str, row: usize },
    #[error(
        "{argument} row {row} is a zero vector, which has no direction under the cosine metric; \
         drop it or use metric='l2' or 'dot'"
    )]
    ZeroVector { argument: &'static str, row: usize },
    #[error(
        "no vector with id {id} in the index; check `id in index` first \
         (or pass missing_ok=True to delete)"
    )]
    UnknownId { id: u64 },
    #[error("id {id} is already in the index; use upsert() to replace its vector and metadata")]
    DuplicateId { id: u64 },
    #[error("invalid filter at {path}: {message}")]
    BadFilter { path: String, message: String },
    #[error("vector index I/O failed on {path}: {source}; check the path and free disk space")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vector index files in {path} are corrupt or from another version: {message}; restore them from a backup or rebuild the index")]
    Corrupt { path: String, message: String },
}

impl VectorError {
    pub(crate) fn arg(argument: &'static str, message: impl Into<String>) -> Self {
        VectorError::InvalidArgument {
            argument,
            message: message.into(),
        }
    }
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        VectorError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, VectorError>;

/// The distance a search returns; smaller is closer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// `1 - cos(a, b)`; vectors are normalized at insert and query time.
    Cosine,
    /// `1 - a·b` (as hnswlib's "ip").
    Dot,
    /// Squared Euclidean distance (as hnswlib's "l2").
    L2,
}

impl Metric {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "dot" | "ip" => Ok(Metric::Dot),
            "l2" | "euclidean" => Ok(Metric::L2),
            other => Err(VectorError::arg(
                "metric",
                format!("unknown metric {other:?}; use 'cosine', 'dot' or 'l2'"),
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
            Metric::L2 => "l2",
        }
    }
    pub(crate) fn code(self) -> u8 {
        match self {
            Metric::Cosine => 0,
            Metric::Dot => 1,
            Metric::L2 => 2,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Metric::Cosine),
            1 => Some(Metric::Dot),
            2 => Some(Metric::L2),
            _ => None,
        }
    }
}

/// Validate one batch of row-major vectors: dimension, finiteness, and (for cosine)
/// normalize in place.
pub(crate) fn prepare_rows(
    argument: &'static str,
    data: &mut [f32],
    dim: usize,
    metric: Metric,
) -> Result<()> {
    if dim == 0 || data.len() % dim != 0 {
        return Err(VectorError::Dimension {
            argument,
            expected: dim,
            got: data.len() % dim.max(1),
            row: 0,
        });
    }
    for (row, v) in data.chunks_exact_mut(dim).enumerate() {
        // Branch-free finiteness check and an 8-lane f64 sum of squares, so both loops
        // vectorize (this runs on every query of a batch).
        if !v.iter().fold(true, |ok, x| ok & x.is_finite()) {
            return Err(VectorError::NonFinite { argument, row });
        }
        if metric == Metric::Cosine {
            let mut acc = [0.0f64; 8];
            let chunks = v.chunks_exact(8);
            let rest = chunks.remainder();
            for c in chunks {
                for (a, x) in acc.iter_mut().zip(c) {
                    *a += (*x as f64) * (*x as f64);
                }
            }
            let n = (acc.iter().sum::<f64>()
                + rest.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>())
            .sqrt();
            if n == 0.0 || !n.is_finite() {
                return Err(VectorError::ZeroVector { argument, row });
            }
            let inv = (1.0 / n) as f32;
            v.iter_mut().for_each(|x| *x *= inv);
        }
    }
    Ok(())
}
