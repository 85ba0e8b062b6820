//! The HNSW graph (Malkov & Yashunin 2016, neighbour heuristic as in hnswlib).
//!
//! Concurrency model:
//! - `Index.core` is a `RwLock<Core>`. Searches hold a read lock. A batch add takes the
//!   write lock only to append the new vectors, metadata and (empty) nodes, then downgrades
//!   to a read lock and links the new nodes on all cores, so queries keep running while the
//!   graph grows. Links live in [`Graph`]: flat arrays with one sequence lock per node, so
//!   concurrent inserters are serialized per node and readers (searches) copy a whole,
//!   consistent list without taking any lock (the safety argument is in `graph.rs`).
//! - `Index.writer` serializes mutations (add, delete, repair, save) with each other.
//! - Inserts that run in parallel do not see each other, which can leave a new node with
//!   no link pointing at it (systematically so for identical vectors, see
//!   `Core::link_stragglers`). So every add ends with a pass that checks each new node is
//!   reachable on layer 0 from the entry point and links the ones that are not.
//!
//! Deletes are tombstones: a deleted node is never returned but still routes searches, so
//! recall does not drop right after a delete. When the tombstones not yet repaired exceed
//! `REPAIR_FRACTION` of the live items (or on `repair()` / `save()`), every live node that
//! links to a deleted node gets its neighbour list rebuilt from its live neighbours plus
//! the live neighbours of the deleted ones (heuristic selection), and deleted nodes are
//! unlinked. Deleted slots keep their (unreachable) vectors until the index is saved and
//! loaded again: `save` writes only live items.
//!
//! Filtered search evaluates the predicate on every node the traversal visits: all nodes
//! route the search, only matching ones enter the result set. When the filter is very
//! selective (estimated from a fixed sample of `SELECTIVITY_SAMPLE` items to match at most
//! `BRUTE_FORCE_SELECTIVITY` of them), or the index is small (`BRUTE_FORCE_MAX_ITEMS`), the
//! search is exact instead: the predicate is evaluated on every item and the matching ones
//! are scored with full-precision distances. That keeps a 1% filter at recall 1.0, where a
//! graph walk would have to visit ~100x more nodes to fill `ef` matching results.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use rayon::prelude::*;

use super::distance::{Kern, Kernels, Portable};
use super::filter::{Compiled, Filter, Interner, Lit, Meta};
use super::graph::{prefetch_ptr, Graph};
use super::quant::{Sq4, Sq4Query, Sq8, Sq8Query};
use super::{Metric, Result, VectorError};

/// Metadata as `(field, value)` pairs, as given by the caller.
pub type MetaItems = Vec<(String, Lit)>;

/// Padding id in search results when fewer than k items match.
pub const NO_ID: u64 = u64::MAX;
pub(crate) const NONE: u32 = u32::MAX;
/// Repair when unrepaired tombstones exceed this fraction of live items.
pub const REPAIR_FRACTION: f64 = 0.1;
/// Filters estimated to match at most this fraction of items are answered exactly.
pub const BRUTE_FORCE_SELECTIVITY: f64 = 0.02;
/// Filtered searches over at most this many items are answered exactly.
pub const BRUTE_FORCE_MAX_ITEMS: usize = 2048;
/// Items sampled to estimate a filter's selectivity.
pub const SELECTIVITY_SAMPLE: usize = 1024;
const MAX_LEVEL: usize = 16;
/// Cache lines of a float32 row prefetched ahead of its distance computation (the
/// hardware streamer picks up the rest of the row).
const PREFETCH_LINES: usize = 4;

#[derive(Clone, Debug)]
pub struct Params {
    pub dim: usize,
    pub metric: Metric,
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    pub sq4: bool,
    /// Traverse on 8-bit codes (`quant::Sq8`), rerank with float32. Exclusive with `sq4`.
    pub sq8: bool,
    pub seed: u64,
}

impl Params {
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.dim > 65_536 {
            return Err(VectorError::arg("dim", "dim must be between 1 and 65536"));
        }
        if self.m < 2 || self.m > 256 {
            return Err(VectorError::arg(
                "m",
                "m must be between 2 and 256 (16 is a good default)",
            ));
        }
        if self.ef_construction < 1 || self.ef_construction > 100_000 {
            return Err(VectorError::arg(
                "ef_construction",
                "ef_construction must be between 1 and 100000",
            ));
        }
        if self.sq4 && self.sq8 {
            return Err(VectorError::arg(
                "compression",
                "choose one of 'sq4' and 'sq8'",
            ));
        }
        if self.ef_search < 1 || self.ef_search > 100_000 {
            return Err(VectorError::arg(
                "ef_search",
                "ef_search must be between 1 and 100000",
            ));
        }
        Ok(())
    }
}

/// A growable float32 buffer whose start is 64-byte (cache-line) aligned, so rows of a
/// dimension that is a multiple of 16 never straddle a cache line: one fewer line per
/// row to fetch and no split AVX loads (a `Vec<f32>` is only 16-byte aligned).
#[derive(Default)]
pub struct AlignedF32 {
    blocks: Vec<Line>,
    len: usize,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([f32; 16]);

impl AlignedF32 {
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over `[f32; 16]` (size 64, no padding), so the blocks
        // are `blocks.len() * 16` initialized, contiguous f32s, and `len` never exceeds that.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr() as *const f32, self.len) }
    }

    pub fn extend_from_slice(&mut self, data: &[f32]) {
        let (old, new) = (self.len, self.len + data.len());
        self.blocks.resize(new.div_ceil(16), Line([0.0; 16]));
        // SAFETY: as in `as_slice`; `new <= blocks.len() * 16` after the resize, and the
        // exclusive borrow of `self` makes this the only view.
        let all =
            unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr() as *mut f32, new) };
        all[old..].copy_from_slice(data);
        self.len = new;
    }
}

/// A growable byte buffer whose start is 64-byte aligned (quantized codes: a 384-byte SQ8
/// code then spans exactly 6 cache lines instead of 7).
#[derive(Default)]
pub struct AlignedU8 {
    blocks: Vec<Line>,
    len: usize,
}

impl AlignedU8 {
    pub fn from_slice(data: &[u8]) -> Self {
        let mut a = AlignedU8::default();
        a.resize(data.len());
        a.copy_from_slice(data);
        a
    }

    /// Grow or shrink to `len` bytes (new bytes are zero).
    pub fn resize(&mut self, len: usize) {
        self.blocks.resize(len.div_ceil(64), Line([0.0; 16]));
        if len > self.len {
            let old = self.len;
            self.len = len;
            self[old..].fill(0);
        }
        self.len = len;
    }
}

impl std::ops::Deref for AlignedU8 {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes without padding; `len <= blocks.len() * 64`.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr() as *const u8, self.len) }
    }
}

impl std::ops::DerefMut for AlignedU8 {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; the exclusive borrow makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr() as *mut u8, self.len) }
    }
}

impl FromIterator<f32> for AlignedF32 {
    fn from_iter<I: IntoIterator<Item = f32>>(it: I) -> Self {
        let v: Vec<f32> = it.into_iter().collect();
        let mut a = AlignedF32::default();
        a.extend_from_slice(&v);
        a
    }
}

/// Float32 vectors, row-major: an optional read-only mmap'd base (after `load`) followed by
/// rows appended in memory.
pub struct Vectors {
    pub dim: usize,
    pub base: Option<memmap2::Mmap>,
    pub base_rows: usize,
    pub tail: AlignedF32,
}

impl Vectors {
    pub fn new(dim: usize) -> Self {
        Vectors {
            dim,
            base: None,
            base_rows: 0,
            tail: AlignedF32::default(),
        }
    }

    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        let d = self.dim;
        if i < self.base_rows {
            let m = self.base.as_ref().expect("base rows without a mapping");
            // SAFETY: `store::load` checked the file length (base_rows * dim * 4 bytes), the
            // mapping is page-aligned (so f32-aligned), read-only and lives as long as self;
            // the platform is little-endian (checked at load).
            let all =
                unsafe { std::slice::from_raw_parts(m.as_ptr() as *const f32, self.base_rows * d) };
            &all[i * d..(i + 1) * d]
        } else {
            let j = i - self.base_rows;
            &self.tail.as_slice()[j * d..(j + 1) * d]
        }
    }

    pub fn rows(&self) -> usize {
        self.base_rows + self.tail.len() / self.dim
    }

    /// Hint the CPU to start loading row `i` (a no-op for out-of-range rows).
    #[inline]
    pub fn prefetch(&self, i: usize) {
        let d = self.dim;
        let p = if i < self.base_rows {
            match &self.base {
                Some(m) => m.as_ptr().wrapping_add(i * d * 4),
                None => return,
            }
        } else {
            match self.tail.as_slice().get((i - self.base_rows) * d) {
                Some(x) => x as *const f32 as *const u8,
                None => return,
            }
        };
        for l in 0..PREFETCH_LINES.min(d.div_ceil(16)) {
            prefetch_ptr(p.wrapping_add(l * 64));
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
struct C(f32, u32);
impl Eq for C {}
impl PartialOrd for C {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for C {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }
    #[inline]
    fn insert(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        if *m == self.epoch {
            false
        } else {
            *m = self.epoch;
            true
        }
    }
}

/// Per-thread search state, reused across queries so a search allocates nothing but its
/// result: the visited marks (generation counter, never cleared), both heaps and the
/// neighbour-list buffers.
struct Scratch {
    vis: Visited,
    cand: BinaryHeap<Reverse<C>>,
    res: BinaryHeap<C>,
    links: Vec<u32>,
    todo: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            vis: Visited { marks: Vec::new(), epoch: 0 },
            cand: BinaryHeap::new(),
            res: BinaryHeap::new(),
            links: Vec::new(),
            todo: Vec::new(),
        })
    };
}

/// How a search scores nodes. Implemented for exact float32 distances (per kernel set and
/// metric, so the hot loop is monomorphised) and for SQ4 codes.
trait Space {
    fn dist(&self, n: u32) -> f32;
    /// Start loading what `dist(n)` will read.
    fn prefetch(&self, n: u32);
}

struct ExactSpace<'a, K: Kern, const L2: bool> {
    k: K,
    vecs: &'a Vectors,
    q: &'a [f32],
}

impl<K: Kern, const L2: bool> Space for ExactSpace<'_, K, L2> {
    #[inline]
    fn dist(&self, n: u32) -> f32 {
        let v = self.vecs.row(n as usize);
        if L2 {
            self.k.l2(self.q, v)
        } else {
            1.0 - self.k.dot(self.q, v)
        }
    }
    #[inline]
    fn prefetch(&self, n: u32) {
        self.vecs.prefetch(n as usize);
    }
}

struct Sq4Space<'a> {
    core: &'a Core,
    sq: &'a Sq4,
    sqq: Sq4Query,
}

impl Space for Sq4Space<'_> {
    #[inline]
    fn dist(&self, n: u32) -> f32 {
        self.sqq.distance(&self.core.k, self.sq, self.core.code(n))
    }
    #[inline]
    fn prefetch(&self, n: u32) {
        let b = self.core.code_bytes;
        if let Some(c) = self.core.codes.get(n as usize * b) {
            let p = c as *const u8;
            for l in 0..b.div_ceil(64) {
                prefetch_ptr(p.wrapping_add(l * 64));
            }
        }
    }
}

struct Sq8Space<'a> {
    core: &'a Core,
    sqq: Sq8Query,
    kern: super::distance::Sq8DotKernel,
}

impl Space for Sq8Space<'_> {
    #[inline]
    fn dist(&self, n: u32) -> f32 {
        let raw = (self.kern)(&self.sqq.w, self.core.code(n));
        let norm = if self.sqq.l2 {
            self.core.norms[n as usize]
        } else {
            0.0
        };
        self.sqq.finish(raw, norm)
    }
    #[inline]
    fn prefetch(&self, n: u32) {
        let b = self.core.code_bytes;
        if let Some(c) = self.core.codes.get(n as usize * b) {
            let p = c as *const u8;
            for l in 0..b.div_ceil(64) {
                prefetch_ptr(p.wrapping_add(l * 64));
            }
        }
    }
}

/// Run `$body` with `$sp` bound to the exact-distance [`Space`] for query `$q`, picking
/// the kernel set and metric once (the body is monomorphised for each).
macro_rules! with_exact_space {
    ($core:expr, $q:expr, |$sp:ident| $body:expr) => {{
        let core: &Core = $core;
        let (vecs, q) = (&core.vecs, $q);
        match (core.k.avx2, core.p.metric == Metric::L2) {
            (Some(k), false) => {
                let $sp = ExactSpace::<_, false> { k, vecs, q };
                $body
            }
            (Some(k), true) => {
                let $sp = ExactSpace::<_, true> { k, vecs, q };
                $body
            }
            (None, false) => {
                let $sp = ExactSpace::<_, false> {
                    k: Portable,
                    vecs,
                    q,
                };
                $body
            }
            (None, true) => {
                let $sp = ExactSpace::<_, true> {
                    k: Portable,
                    vecs,
                    q,
                };
                $body
            }
        }
    }};
}

/// Everything behind the index lock.
pub struct Core {
    pub p: Params,
    pub k: Kernels,
    pub vecs: Vectors,
    pub sq: Option<Sq4>,
    pub sq8: Option<Sq8>,
    /// Quantized codes (SQ4 or SQ8, `code_bytes` per slot), 64-byte aligned.
    pub codes: AlignedU8,
    /// SQ8: squared norm of each decoded code (for L2 scores).
    pub norms: Vec<f32>,
    pub code_bytes: usize,
    /// Item count when the SQ4 bounds were last fitted.
    pub fitted_at: usize,
    /// Neighbour lists (one node per slot).
    pub graph: Graph,
    pub ids: Vec<u64>,
    pub slot_of: HashMap<u64, u32>,
    pub deleted: Vec<bool>,
    pub n_deleted: usize,
    /// Deleted nodes already unlinked by `repair`.
    pub n_purged: usize,
    pub meta: Vec<Option<Meta>>,
    pub interner: Interner,
    /// (entry node, its level); `NONE` when empty.
    pub entry: RwLock<(u32, u8)>,
    pub rng: u64,
    pub mmap_path: Option<String>,
    /// Bumped by every change to the items, tombstones or metadata (`stage`, `delete`),
    /// all of which need `&mut Core`, i.e. the index write lock.
    pub generation: u64,
    /// The last selective filter's matching slots (see `matches_for`).
    match_cache: Mutex<Option<MatchCache>>,
    /// Graph searches that found fewer than k results and were answered by brute force
    /// instead (a health signal: it should stay at zero on a well-connected graph).
    pub fallbacks: std::sync::atomic::AtomicU64,
}

/// A filter's exact-plan decision and matching slots, valid for one `Core::generation`.
struct MatchCache {
    filter: Filter,
    generation: u64,
    list: Option<Arc<Vec<u32>>>,
}

impl Core {
    pub fn new(p: Params) -> Result<Self> {
        p.validate()?;
        Ok(Core {
            k: Kernels::detect(),
            vecs: Vectors::new(p.dim),
            sq: None,
            sq8: None,
            codes: AlignedU8::default(),
            norms: Vec::new(),
            code_bytes: if p.sq8 {
                Sq8::code_bytes(p.dim)
            } else {
                Sq4::code_bytes(p.dim)
            },
            fitted_at: 0,
            graph: Graph::new(p.m),
            ids: Vec::new(),
            slot_of: HashMap::new(),
            deleted: Vec::new(),
            n_deleted: 0,
            n_purged: 0,
            meta: Vec::new(),
            interner: Interner::default(),
            entry: RwLock::new((NONE, 0)),
            rng: p.seed ^ 0x9E37_79B9_7F4A_7C15,
            mmap_path: None,
            generation: 0,
            match_cache: Mutex::new(None),
            fallbacks: std::sync::atomic::AtomicU64::new(0),
            p,
        })
    }

    pub fn live(&self) -> usize {
        self.graph.len() - self.n_deleted
    }

    #[inline]
    pub fn exact(&self, q: &[f32], slot: u32) -> f32 {
        let v = self.vecs.row(slot as usize);
        match self.p.metric {
            Metric::L2 => (self.k.l2)(q, v),
            _ => 1.0 - (self.k.dot)(q, v),
        }
    }

    #[inline]
    fn code(&self, slot: u32) -> &[u8] {
        let b = self.code_bytes;
        &self.codes[slot as usize * b..(slot as usize + 1) * b]
    }

    fn next_rand(&mut self) -> f64 {
        // splitmix64: deterministic levels for a given seed and insertion order.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn random_level(&mut self) -> usize {
        let ml = 1.0 / (self.p.m as f64).ln();
        ((-self.next_rand().ln() * ml).floor() as usize).min(MAX_LEVEL)
    }

    /// Phase one of an add (write lock held): validate ids, tombstone replaced items and
    /// append the new rows, metadata and empty nodes. Returns the new slots.
    pub fn stage(
        &mut self,
        ids: &[u64],
        data: &[f32],
        metas: Vec<Option<Vec<(String, Lit)>>>,
        upsert: bool,
    ) -> Result<Range<usize>> {
        let d = self.p.dim;
        if data.len() != ids.len() * d {
            return Err(VectorError::arg(
                "ids",
                format!(
                    "got {} ids for {} vectors; pass one id per row",
                    ids.len(),
                    data.len() / d
                ),
            ));
        }
        if !metas.is_empty() && metas.len() != ids.len() {
            return Err(VectorError::arg(
                "metadata",
                format!(
                    "got {} metadata entries for {} ids; pass one per id (or None)",
                    metas.len(),
                    ids.len()
                ),
            ));
        }
        let mut seen = HashSet::with_capacity(ids.len());
        for &id in ids {
            if id == NO_ID {
                return Err(VectorError::arg(
                    "ids",
                    "id 2**64-1 is reserved (it pads missing results); use a smaller id",
                ));
            }
            if !seen.insert(id) {
                return Err(VectorError::arg(
                    "ids",
                    format!("id {id} appears twice in one batch; pass each id once"),
                ));
            }
            if !upsert && self.slot_of.contains_key(&id) {
                return Err(VectorError::DuplicateId { id });
            }
        }
        if self.graph.len() + ids.len() >= NONE as usize {
            return Err(VectorError::arg(
                "ids",
                "the index is full (2**32-1 slots); save and load it to compact deleted items",
            ));
        }
        if upsert {
            for id in ids {
                if let Some(old) = self.slot_of.remove(id) {
                    self.deleted[old as usize] = true;
                    self.n_deleted += 1;
                }
            }
        }
        let start = self.graph.len();
        self.vecs.tail.extend_from_slice(data);
        self.graph.reserve(ids.len());
        let mut metas = metas.into_iter();
        for &id in ids {
            let level = self.random_level();
            let slot = self.graph.len() as u32;
            self.graph.push(level);
            self.ids.push(id);
            self.slot_of.insert(id, slot);
            self.deleted.push(false);
            self.generation += 1;
            let m = metas.next().flatten().map(|m| self.interner.make_meta(&m));
            self.meta.push(m);
        }
        if self.p.sq4 {
            self.update_codes(start);
        } else if self.p.sq8 {
            self.update_codes8(start);
        }
        Ok(start..self.graph.len())
    }

    /// Encode the rows from `start`; refit the bounds (re-encoding everything) when the
    /// index has doubled since the last fit.
    fn update_codes(&mut self, start: usize) {
        let n = self.graph.len();
        let cb = self.code_bytes;
        let refit = self.sq.is_none() || n >= 2 * self.fitted_at.max(1);
        if refit {
            let live: Vec<usize> = (0..n).filter(|&i| !self.deleted[i]).collect();
            let step = (live.len() / 20_000).max(1);
            let vecs = &self.vecs;
            let sample = live.iter().step_by(step).map(|&i| vecs.row(i));
            self.sq = Some(Sq4::fit(self.p.dim, sample));
            self.fitted_at = n;
        }
        let sq = self.sq.as_ref().expect("fitted above");
        let from = if refit { 0 } else { start };
        self.codes.resize(n * cb);
        let vecs = &self.vecs;
        self.codes[from * cb..]
            .par_chunks_mut(cb)
            .enumerate()
            .for_each(|(i, c)| sq.encode(vecs.row(from + i), c));
    }

    /// `update_codes` for SQ8 (codes plus decoded norms).
    fn update_codes8(&mut self, start: usize) {
        let n = self.graph.len();
        let cb = self.code_bytes;
        let refit = self.sq8.is_none() || n >= 2 * self.fitted_at.max(1);
        if refit {
            let live: Vec<usize> = (0..n).filter(|&i| !self.deleted[i]).collect();
            let step = (live.len() / 20_000).max(1);
            let vecs = &self.vecs;
            let sample = live.iter().step_by(step).map(|&i| vecs.row(i));
            self.sq8 = Some(Sq8::fit(self.p.dim, sample));
            self.fitted_at = n;
        }
        let sq = self.sq8.as_ref().expect("fitted above");
        let from = if refit { 0 } else { start };
        self.codes.resize(n * cb);
        self.norms.resize(n, 0.0);
        let vecs = &self.vecs;
        self.codes[from * cb..]
            .par_chunks_mut(cb)
            .zip(self.norms[from..].par_iter_mut())
            .enumerate()
            .for_each(|(i, (c, nm))| *nm = sq.encode(vecs.row(from + i), c));
    }

    /// Best-first search of one layer from `eps`: the `ef` nearest accepted nodes,
    /// ascending. Neighbour lists are read lock-free (seqlock snapshots, see `graph.rs`);
    /// unvisited neighbours' vectors are prefetched as a batch before any distance is
    /// computed, and the link block of each new candidate as it is queued.
    fn search_layer<S, A>(&self, sp: &S, eps: &[C], ef: usize, layer: usize, accept: &A) -> Vec<C>
    where
        S: Space,
        A: Fn(u32) -> bool,
    {
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let Scratch {
                vis,
                cand,
                res,
                links,
                todo,
            } = &mut *guard;
            let g = &self.graph;
            vis.reset(g.len());
            links.resize(g.max_links(), 0);
            cand.clear();
            res.clear();
            for &c in eps {
                if vis.insert(c.1) {
                    cand.push(Reverse(c));
                    if accept(c.1) {
                        res.push(c);
                    }
                }
            }
            while res.len() > ef {
                res.pop();
            }
            let mut bound = if res.len() >= ef {
                res.peek().map_or(f32::INFINITY, |c| c.0)
            } else {
                f32::INFINITY
            };
            while let Some(Reverse(c)) = cand.pop() {
                if c.0 > bound {
                    break;
                }
                let cnt = g.read(c.1, layer, links);
                todo.clear();
                for &n in &links[..cnt] {
                    if vis.insert(n) {
                        sp.prefetch(n);
                        todo.push(n);
                    }
                }
                for &n in todo.iter() {
                    let d = sp.dist(n);
                    if d < bound {
                        cand.push(Reverse(C(d, n)));
                        g.prefetch(n);
                        if accept(n) {
                            res.push(C(d, n));
                            if res.len() > ef {
                                res.pop();
                            }
                            if res.len() >= ef {
                                bound = res.peek().map_or(f32::INFINITY, |c| c.0);
                            }
                        }
                    }
                }
            }
            let mut out: Vec<C> = res.drain().collect();
            out.sort_unstable();
            out
        })
    }

    /// Greedy descent from `cur` through layers `top` down to `stop + 1`.
    fn greedy<S: Space>(&self, sp: &S, mut cur: C, top: usize, stop: usize) -> C {
        let mut links = vec![0u32; self.graph.max_links()];
        for layer in (stop + 1..=top).rev() {
            loop {
                let mut changed = false;
                let cnt = self.graph.read(cur.1, layer, &mut links);
                for &n in &links[..cnt] {
                    sp.prefetch(n);
                }
                for &n in &links[..cnt] {
                    let d = sp.dist(n);
                    if d < cur.0 {
                        cur = C(d, n);
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
        }
        cur
    }

    /// hnswlib's neighbour heuristic: keep a candidate only if it is closer to the base
    /// than to every neighbour kept so far (spreads links across directions).
    ///
    /// Duplicates of the base (candidates at the base's own distance to itself, i.e. the
    /// same vector) get special treatment. Under the plain heuristic a kept duplicate
    /// "occludes" every later candidate (each is exactly as close to the duplicate as to
    /// the base), so a node with a duplicate ended up linked to duplicates only: groups
    /// of equal vectors became traps with no way out. A filtered search that walked into
    /// a group whose members belong to other filter scopes could then not reach enough
    /// matches and fell back to brute force. Now duplicates never occlude, and at most
    /// `max(2, m / 4)` of them are linked, preferring the nearest by slot, so a group is a
    /// connected band (every member reachable from the one that outside nodes link to)
    /// and the other links spread out as usual.
    fn select(&self, base: u32, cands: &[C], m: usize) -> Vec<u32> {
        let vb = self.vecs.row(base as usize);
        let own = self.exact(vb, base);
        let tol = 1e-5 * (1.0 + own.abs());
        let is_dup = |d: f32| (d - own).abs() <= tol;
        let max_dups = (m / 4).max(2);
        let mut dups: Vec<u32> = cands
            .iter()
            .filter(|c| c.1 != base && is_dup(c.0))
            .map(|c| c.1)
            .collect();
        dups.sort_unstable_by_key(|&c| (c.abs_diff(base), c));
        dups.truncate(max_dups.min(m));
        let mut out: Vec<u32> = Vec::with_capacity(m);
        out.extend_from_slice(&dups);
        let n_dups = out.len();
        for &C(d, c) in cands {
            if out.len() >= m {
                break;
            }
            if c == base || is_dup(d) {
                continue;
            }
            let vc = self.vecs.row(c as usize);
            if out[n_dups..].iter().all(|&o| self.exact(vc, o) > d) {
                out.push(c);
            }
        }
        out
    }

    /// Add the back link `n -> s` on `layer`, pruning `n`'s list with the heuristic when
    /// it is full (under `n`'s seqlock; readers keep reading the old list meanwhile).
    fn connect(&self, n: u32, s: u32, layer: usize, mmax: usize) {
        self.graph.update(n, layer, |l| {
            if l.contains(&s) {
                return None;
            }
            let mut l = l.to_vec();
            if l.len() < mmax {
                l.push(s);
                return Some(l);
            }
            let vn = self.vecs.row(n as usize);
            let mut c: Vec<C> = l.iter().map(|&x| C(self.exact(vn, x), x)).collect();
            c.push(C(self.exact(vn, s), s));
            c.sort_unstable();
            Some(self.select(n, &c, mmax))
        });
    }

    /// Phase two of an add (read lock held, runs in parallel): link node `s` into the graph.
    /// Returns the layer-0 neighbours it selected (the only nodes that got a link to `s`
    /// from this insert; `link_stragglers` checks them).
    pub fn insert(&self, s: u32) -> Vec<u32> {
        self.insert_hiding(s, &|_| false)
    }

    /// `insert`, as if the nodes for which `hidden` is true were not linked yet (what a
    /// concurrent insert of those nodes looks like to this one). Production passes
    /// `|_| false`; tests use it to replay parallel-build races deterministically.
    fn insert_hiding<H: Fn(u32) -> bool>(&self, s: u32, hidden: &H) -> Vec<u32> {
        let q = self.vecs.row(s as usize);
        with_exact_space!(self, q, |sp| self.insert_with(s, &sp, hidden))
    }

    fn insert_with<S: Space, H: Fn(u32) -> bool>(&self, s: u32, sp: &S, hidden: &H) -> Vec<u32> {
        let lvl = self.graph.level(s);
        let (ep, top) = {
            let mut e = self.entry.write();
            if e.0 == NONE {
                *e = (s, lvl as u8);
                return Vec::new();
            }
            (e.0, e.1 as usize)
        };
        let mut cur = C(sp.dist(ep), ep);
        if top > lvl {
            cur = self.greedy(sp, cur, top, lvl);
        }
        let mut eps = vec![cur];
        let accept = |n: u32| n != s && !self.deleted[n as usize] && !hidden(n);
        let mut first = Vec::new();
        for layer in (0..=lvl.min(top)).rev() {
            let w = self.search_layer(sp, &eps, self.p.ef_construction, layer, &accept);
            let mmax = if layer == 0 { 2 * self.p.m } else { self.p.m };
            let sel = self.select(s, &w, self.p.m);
            self.graph.set(s, layer, &sel);
            for &n in &sel {
                self.connect(n, s, layer, mmax);
            }
            if !w.is_empty() {
                eps = w;
            }
            if layer == 0 {
                first = sel;
            }
        }
        if lvl > top {
            let mut e = self.entry.write();
            if lvl > e.1 as usize || e.0 == NONE {
                *e = (s, lvl as u8);
            }
        }
        first
    }

    /// After a batch `new` is linked (read lock held): make every new node reachable on
    /// layer 0 from the entry point, and return how many needed an extra link.
    ///
    /// Why this is needed: the neighbour heuristic drops the back link `n -> s` when a
    /// neighbour `o` that `n` keeps is closer to `s` than `n` is, on the assumption that
    /// `o` leads to `s`. In a sequential build it does: `s` was inserted after `o`, found
    /// it and linked both ways. Inserts that run in parallel never see each other, so the
    /// assumption fails, and for identical vectors it fails systematically: all copies are
    /// equidistant from an outside node, so its list keeps exactly one copy (the lowest
    /// slot) and drops the others, even a copy that was there before. A copy inserted in
    /// parallel with its twins then had no link pointing at it, or a whole group of copies
    /// linked only to each other — unreachable, so a filtered search for that copy's scope
    /// could never return it.
    ///
    /// `first[j]` is what `insert` returned for slot `new.start + j`. A new node is
    /// reachable when an older node (assumed reachable, as before the batch) still links to
    /// it — only the nodes it selected can, since an insert adds back links only to its own
    /// selection — or a reachable new node does. Every other new node is searched for from
    /// the entry point (so the candidates are reachable by construction) and linked from
    /// its nearest candidate that has room (or, if none has, forced into the nearest one's
    /// list in place of its farthest neighbour). Cost: `O(batch * m * 2m)` link reads,
    /// plus one search per straggler (a 20k x 384 parallel build: ~4 stragglers, ~3 ms,
    /// about 0.1% of the build).
    pub fn link_stragglers(&self, new: Range<usize>, first: &[Vec<u32>]) -> usize {
        let start = new.start;
        let g = &self.graph;
        let (ep, _) = *self.entry.read();
        let seeded: Vec<bool> = new
            .clone()
            .into_par_iter()
            .map(|s| {
                let mut buf = vec![0u32; g.max_links()];
                s as u32 == ep
                    || first[s - start].iter().any(|&n| {
                        (n as usize) < start && {
                            let cnt = g.read(n, 0, &mut buf);
                            buf[..cnt].contains(&(s as u32))
                        }
                    })
            })
            .collect();
        let mut reached = vec![false; new.len()];
        let mut stack: Vec<u32> = Vec::new();
        let mut buf = vec![0u32; g.max_links()];
        // Mark `from` and every new node it reaches through new nodes.
        let mut flood = |from: u32, reached: &mut Vec<bool>, stack: &mut Vec<u32>| {
            reached[from as usize - start] = true;
            stack.push(from);
            while let Some(x) = stack.pop() {
                let cnt = g.read(x, 0, &mut buf);
                for &y in &buf[..cnt] {
                    let y_new = (y as usize) >= start && (y as usize) < new.end;
                    if y_new && !reached[y as usize - start] {
                        reached[y as usize - start] = true;
                        stack.push(y);
                    }
                }
            }
        };
        for (j, &ok) in seeded.iter().enumerate() {
            if ok && !reached[j] {
                flood((start + j) as u32, &mut reached, &mut stack);
            }
        }
        let mut linked = 0;
        for j in 0..new.len() {
            let s = (start + j) as u32;
            if reached[j] || self.deleted[s as usize] {
                continue;
            }
            if self.link_from_reachable(s) {
                linked += 1;
            }
            flood(s, &mut reached, &mut stack);
        }
        linked
    }

    /// Add a link to `s` from the nearest node a search from the entry point finds on
    /// layer 0 alone (see `link_stragglers`). Not through the upper layers: they could
    /// land the search inside the very group of nodes that layer 0 cannot reach. False if
    /// the graph has no other live node.
    fn link_from_reachable(&self, s: u32) -> bool {
        let (ep, _) = *self.entry.read();
        if ep == NONE || ep == s {
            return false;
        }
        let q = self.vecs.row(s as usize);
        let accept = |n: u32| n != s && !self.deleted[n as usize];
        let w = with_exact_space!(self, q, |sp| {
            let start = C(sp.dist(ep), ep);
            self.search_layer(
                &sp,
                &[start],
                self.p.ef_construction.max(self.p.m),
                0,
                &accept,
            )
        });
        let cap = self.graph.cap(0);
        let mut buf = vec![0u32; self.graph.max_links()];
        let pick = w
            .iter()
            .find(|c| self.graph.read(c.1, 0, &mut buf) < cap)
            .or(w.first());
        let Some(&C(_, r)) = pick else {
            return false;
        };
        self.graph.update(r, 0, |l| {
            if l.contains(&s) {
                return None;
            }
            let mut l = l.to_vec();
            if l.len() >= cap {
                // Every candidate is full (rare): replace `r`'s farthest neighbour only. No
                // heuristic pruning here, which could drop other copies of a group.
                let vr = self.vecs.row(r as usize);
                let far = (0..l.len())
                    .max_by(|&a, &b| {
                        let (da, db) = (self.exact(vr, l[a]), self.exact(vr, l[b]));
                        da.total_cmp(&db).then(l[a].cmp(&l[b]))
                    })
                    .expect("a full list is not empty");
                l.remove(far);
            }
            l.push(s);
            Some(l)
        });
        true
    }

    /// Tombstone `ids`. With `missing_ok=false` nothing changes unless every id exists.
    pub fn delete(&mut self, ids: &[u64], missing_ok: bool) -> Result<usize> {
        if !missing_ok {
            if let Some(&id) = ids.iter().find(|id| !self.slot_of.contains_key(id)) {
                return Err(VectorError::UnknownId { id });
            }
        }
        let mut n = 0;
        for id in ids {
            if let Some(slot) = self.slot_of.remove(id) {
                self.deleted[slot as usize] = true;
                self.meta[slot as usize] = None;
                self.generation += 1;
                self.n_deleted += 1;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn needs_repair(&self) -> bool {
        let pending = self.n_deleted - self.n_purged;
        pending > 0 && (pending as f64) > REPAIR_FRACTION * (self.live().max(1) as f64)
    }

    /// Rebuild the neighbour lists that point at deleted nodes and unlink the deleted
    /// nodes. Returns how many tombstones were purged.
    pub fn repair(&mut self) -> usize {
        let pending = self.n_deleted - self.n_purged;
        if pending == 0 {
            return 0;
        }
        let this: &Core = self;
        (0..this.graph.len())
            .into_par_iter()
            .filter(|&i| !this.deleted[i])
            .for_each(|i| {
                let g = &this.graph;
                let mut buf = vec![0u32; g.max_links()];
                let mut nbuf = vec![0u32; g.max_links()];
                for layer in 0..=g.level(i as u32) {
                    let cnt = g.read(i as u32, layer, &mut buf);
                    let cur = &buf[..cnt];
                    if !cur.iter().any(|&x| this.deleted[x as usize]) {
                        continue;
                    }
                    let mut cs: Vec<u32> = Vec::with_capacity(cur.len() * 2);
                    for &x in cur {
                        if !this.deleted[x as usize] {
                            cs.push(x);
                        } else {
                            // Deleted nodes' lists are never written during repair
                            // (`read` returns nothing when `x` does not reach `layer`).
                            let xn = g.read(x, layer, &mut nbuf);
                            for &y in &nbuf[..xn] {
                                if y as usize != i && !this.deleted[y as usize] {
                                    cs.push(y);
                                }
                            }
                        }
                    }
                    cs.sort_unstable();
                    cs.dedup();
                    let v = this.vecs.row(i);
                    let mut c: Vec<C> = cs.iter().map(|&y| C(this.exact(v, y), y)).collect();
                    c.sort_unstable();
                    let mmax = if layer == 0 { 2 * this.p.m } else { this.p.m };
                    g.set(i as u32, layer, &this.select(i as u32, &c, mmax));
                }
            });
        for i in 0..self.graph.len() {
            if self.deleted[i] {
                for layer in 0..=self.graph.level(i as u32) {
                    self.graph.set_mut(i as u32, layer, &[]);
                }
            }
        }
        let (ep, _) = *self.entry.read();
        if ep != NONE && self.deleted[ep as usize] {
            let best = (0..self.graph.len())
                .filter(|&i| !self.deleted[i])
                .max_by_key(|&i| (self.graph.level(i as u32), Reverse(i)));
            *self.entry.write() = match best {
                Some(i) => (i as u32, self.graph.level(i as u32) as u8),
                None => (NONE, 0),
            };
        }
        self.n_purged = self.n_deleted;
        pending
    }

    fn count_fallback(&self) {
        self.fallbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn brute<A: Fn(u32) -> bool>(&self, q: &[f32], k: usize, accept: &A) -> Vec<C> {
        let mut heap: BinaryHeap<C> = BinaryHeap::with_capacity(k + 1);
        for i in 0..self.graph.len() as u32 {
            if !accept(i) {
                continue;
            }
            let d = self.exact(q, i);
            if heap.len() < k {
                heap.push(C(d, i));
            } else if heap.peek().is_some_and(|t| d < t.0) {
                heap.pop();
                heap.push(C(d, i));
            }
        }
        heap.into_sorted_vec()
    }

    fn graph_search<A: Fn(u32) -> bool>(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        accept: &A,
    ) -> Vec<C> {
        let (ep, top) = *self.entry.read();
        if ep == NONE {
            return Vec::new();
        }
        let ef = ef.max(k);
        if let Some(sq) = &self.sq8 {
            let sp = Sq8Space {
                core: self,
                sqq: Sq8Query::new(sq, q, self.p.metric == Metric::L2),
                kern: self.k.sq8_dot,
            };
            let cur = self.greedy(&sp, C(sp.dist(ep), ep), top as usize, 0);
            let w = self.search_layer(&sp, &[cur], ef, 0, accept);
            // Exact float32 rerank of the `ef` candidates (prefetched as a batch first).
            for c in &w {
                self.vecs.prefetch(c.1 as usize);
            }
            let mut r: Vec<C> = w.iter().map(|c| C(self.exact(q, c.1), c.1)).collect();
            r.sort_unstable();
            r.truncate(k);
            return r;
        }
        if let Some(sq) = &self.sq {
            let sp = Sq4Space {
                core: self,
                sq,
                sqq: Sq4Query::new(sq, q, self.p.metric == Metric::L2),
            };
            let cur = self.greedy(&sp, C(sp.dist(ep), ep), top as usize, 0);
            let w = self.search_layer(&sp, &[cur], ef, 0, accept);
            // Full-precision rerank of every candidate from the float32 store.
            let mut r: Vec<C> = w.iter().map(|c| C(self.exact(q, c.1), c.1)).collect();
            r.sort_unstable();
            r.truncate(k);
            r
        } else {
            with_exact_space!(self, q, |sp| {
                let cur = self.greedy(&sp, C(sp.dist(ep), ep), top as usize, 0);
                let mut w = self.search_layer(&sp, &[cur], ef, 0, accept);
                w.truncate(k);
                w
            })
        }
    }

    fn filter_is_selective<A: Fn(u32) -> bool>(&self, accept: &A) -> bool {
        let n = self.graph.len();
        if self.live() <= BRUTE_FORCE_MAX_ITEMS {
            return true;
        }
        let stride = (n / SELECTIVITY_SAMPLE).max(1);
        let (mut seen, mut hit) = (0usize, 0usize);
        for i in (0..n).step_by(stride) {
            if !self.deleted[i] {
                seen += 1;
                hit += accept(i as u32) as usize;
            }
        }
        seen == 0 || (hit as f64) <= BRUTE_FORCE_SELECTIVITY * seen as f64
    }

    /// For a selective filter (see the module doc), every matching slot: one scan shared
    /// by a whole query batch. `None` means the graph plan.
    pub fn exact_matches(&self, f: &Compiled) -> Option<Vec<u32>> {
        let accept = |i: u32| {
            !self.deleted[i as usize] && f.matches(&self.interner, self.meta[i as usize].as_ref())
        };
        if self.filter_is_selective(&accept) {
            Some(
                (0..self.graph.len() as u32)
                    .filter(|&i| accept(i))
                    .collect(),
            )
        } else {
            None
        }
    }

    /// `exact_matches`, remembered for the last filter until the items change: repeated
    /// searches with the same selective filter skip the metadata scan. Sound because
    /// every input of the answer (tombstones, metadata, interner) changes only through
    /// `&mut Core`, which bumps `generation`, while callers hold the `Core` read lock.
    pub fn matches_for(&self, filter: &Filter, f: &Compiled) -> Option<Arc<Vec<u32>>> {
        if let Some(m) = &*self.match_cache.lock() {
            if m.generation == self.generation && m.filter == *filter {
                return m.list.clone();
            }
        }
        let list = self.exact_matches(f).map(Arc::new);
        *self.match_cache.lock() = Some(MatchCache {
            filter: filter.clone(),
            generation: self.generation,
            list: list.clone(),
        });
        list
    }

    fn brute_list(&self, q: &[f32], k: usize, list: &[u32]) -> Vec<C> {
        let mut heap: BinaryHeap<C> = BinaryHeap::with_capacity(k + 1);
        for &i in list {
            let d = self.exact(q, i);
            if heap.len() < k {
                heap.push(C(d, i));
            } else if heap.peek().is_some_and(|t| d < t.0) {
                heap.pop();
                heap.push(C(d, i));
            }
        }
        heap.into_sorted_vec()
    }

    /// Exact k-NN of a batch of prepared queries (row-major) over the slots in `list` (a
    /// selective filter's matches); each result is (distance, slot) ascending. Blocked like
    /// a matrix product: rows are taken in cache-sized blocks and, within a block, queries
    /// four at a time with the register-blocked 4x2 kernel, so every row chunk loaded from
    /// memory is scored against four queries and every block is reused by all queries.
    pub fn brute_batch(&self, queries: &[f32], k: usize, list: &[u32]) -> Vec<Vec<(f32, u32)>> {
        match self.k.avx2 {
            Some(kern) => self.brute_batch_with(kern, queries, k, list),
            None => self.brute_batch_with(Portable, queries, k, list),
        }
    }

    fn brute_batch_with<K: Kern>(
        &self,
        kern: K,
        queries: &[f32],
        k: usize,
        list: &[u32],
    ) -> Vec<Vec<(f32, u32)>> {
        /// Rows per block: 96 rows of 384 floats are 144 KiB, well inside L2.
        const ROW_BLOCK_BYTES: usize = 144 * 1024;
        let d = self.p.dim;
        let nq = queries.len() / d;
        if nq == 0 || k == 0 {
            return vec![Vec::new(); nq];
        }
        let l2 = self.p.metric == Metric::L2;
        let rb = (ROW_BLOCK_BYTES / (d * 4)).clamp(2, 4096) & !1;
        // Per query: candidates better than its current k-th best (`worst`); compacted to
        // the best k with a linear-time selection whenever it grows past `cap` (cheaper
        // than a heap update per accepted row).
        let cap = (4 * k).max(64);
        let mut tops: Vec<(Vec<C>, f32)> = (0..nq)
            .map(|_| (Vec::with_capacity(cap + rb), f32::INFINITY))
            .collect();
        let compact = |v: &mut Vec<C>, worst: &mut f32| {
            if v.len() > k {
                v.select_nth_unstable(k - 1);
                v.truncate(k);
            }
            if v.len() == k {
                *worst = v.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
            }
        };
        let q = |i: usize| {
            let i = i.min(nq - 1);
            &queries[i * d..(i + 1) * d]
        };
        let small_k = k <= 64;
        let mut rows: Vec<&[f32]> = Vec::with_capacity(rb);
        let mut scores = vec![0.0f32; 4 * rb];
        let mut seed: Vec<C> = Vec::with_capacity(rb);
        for block in list.chunks(rb) {
            rows.clear();
            rows.extend(block.iter().map(|&s| self.vecs.row(s as usize)));
            let nr = rows.len();
            for qb in (0..nq).step_by(4) {
                let qs = [q(qb), q(qb + 1), q(qb + 2), q(qb + 3)];
                kern.scores_4xn(l2, qs, &rows, &mut scores);
                let live_q = (nq - qb).min(4);
                for (j, (top, worst)) in tops[qb..qb + live_q].iter_mut().enumerate() {
                    if small_k {
                        // Small k: keep `top` sorted by (distance, slot) and insert in
                        // place; a row rarely beats the k-th best, so most rows cost one
                        // compare, done 8 at a time (a branch-free test LLVM vectorizes).
                        let sc = &scores[j * nr..(j + 1) * nr];
                        if top.is_empty() && nr > k {
                            // A query's first block: its k best by one selection, so the
                            // bound is tight from the start (inserting row by row here
                            // would take ~k ln(rows/k) shifting inserts).
                            seed.clear();
                            seed.extend(
                                sc.iter()
                                    .zip(block)
                                    .map(|(&v, &slot)| C(if l2 { v } else { 1.0 - v }, slot)),
                            );
                            seed.select_nth_unstable(k - 1);
                            top.extend_from_slice(&seed[..k]);
                            top.sort_unstable();
                            *worst = top[k - 1].0;
                            continue;
                        }
                        let mut r = 0;
                        while r < nr {
                            let end = (r + 8).min(nr);
                            let w = *worst;
                            let skip = sc[r..end]
                                .iter()
                                .fold(true, |all, &v| all & ((if l2 { v } else { 1.0 - v }) > w));
                            if !skip {
                                for (&v, &slot) in sc[r..end].iter().zip(&block[r..end]) {
                                    let c = C(if l2 { v } else { 1.0 - v }, slot);
                                    if c.0 <= *worst && push_top(top, k, c) {
                                        *worst = top[k - 1].0;
                                    }
                                }
                            }
                            r = end;
                        }
                        continue;
                    }
                    let scored = scores[j * nr..(j + 1) * nr].iter().zip(block);
                    for (&v, &slot) in scored {
                        let dist = if l2 { v } else { 1.0 - v };
                        // `<=` keeps ties, so the result matches a full sort exactly.
                        if dist <= *worst {
                            top.push(C(dist, slot));
                        }
                    }
                    if top.len() > cap {
                        compact(top, worst);
                    }
                }
            }
        }
        tops.into_iter()
            .map(|(mut top, mut worst)| {
                compact(&mut top, &mut worst);
                top.sort_unstable();
                top.into_iter().map(|c| (c.0, c.1)).collect()
            })
            .collect()
    }

    /// Search one prepared query; returns (distance, slot) ascending.
    pub fn search_one(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&Compiled>,
        plan: Plan<'_>,
    ) -> Vec<(f32, u32)> {
        if self.live() == 0 || k == 0 {
            return Vec::new();
        }
        let r = match filter {
            None => {
                let live = |i: u32| !self.deleted[i as usize];
                let r = self.graph_search(q, k, ef, &live);
                if r.len() < k.min(self.live()) {
                    // Only reachable in tiny or heavily-deleted graphs: stay correct.
                    self.count_fallback();
                    self.brute(q, k, &live)
                } else {
                    r
                }
            }
            Some(f) => {
                let accept = |i: u32| {
                    !self.deleted[i as usize]
                        && f.matches(&self.interner, self.meta[i as usize].as_ref())
                };
                let exact = match plan {
                    Plan::Exact(list) => {
                        return self
                            .brute_list(q, k, list)
                            .into_iter()
                            .map(|c| (c.0, c.1))
                            .collect()
                    }
                    Plan::Graph => false,
                    Plan::Decide => self.filter_is_selective(&accept),
                };
                if exact {
                    self.brute(q, k, &accept)
                } else {
                    let r = self.graph_search(q, k, ef, &accept);
                    if r.len() < k {
                        // The walk ran out of matching nodes: make sure none were missed.
                        self.count_fallback();
                        self.brute(q, k, &accept)
                    } else {
                        r
                    }
                }
            }
        };
        r.into_iter().map(|c| (c.0, c.1)).collect()
    }
}

/// Insert `c` into `top` (sorted ascending by (distance, slot), at most `k` long) if it
/// belongs to the best `k`; true when `top` then holds exactly `k` (its last entry is the
/// new bound). Plain float compares (distances are finite) and an insertion shift from the
/// end, without `Vec::insert`'s memmove: a scan inserts ~k ln(n/k) times per query.
#[inline]
fn push_top(top: &mut Vec<C>, k: usize, c: C) -> bool {
    let less = |a: C, b: C| a.0 < b.0 || (a.0 == b.0 && a.1 < b.1);
    if top.len() == k {
        if !less(c, top[k - 1]) {
            return false;
        }
        top.pop();
    }
    let mut i = top.len();
    top.push(c);
    while i > 0 && less(c, top[i - 1]) {
        top[i] = top[i - 1];
        i -= 1;
    }
    top[i] = c;
    top.len() == k
}

/// How a filtered query is answered; chosen once per batch by `Index::search`.
#[derive(Clone, Copy)]
pub enum Plan<'a> {
    /// Estimate the filter's selectivity for this query.
    Decide,
    /// Walk the graph, evaluating the filter on visited nodes.
    Graph,
    /// Exact distances over these matching slots.
    Exact(&'a [u32]),
}

/// The thread-safe index.
pub struct Index {
    pub writer: Mutex<()>,
    pub core: RwLock<Core>,
}

fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock();
    pools
        .entry(threads)
        .or_insert_with(|| {
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("cannot start vector index threads"),
            )
        })
        .clone()
}

/// Run `f` on `threads` workers (None: all cores).
pub fn with_threads<R: Send>(threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    match threads {
        Some(n) if n >= 1 => pool(n).install(f),
        _ => f(),
    }
}

/// One search's results, flattened: `nq * k` ids and distances, padded with `NO_ID` / inf.
pub struct Hits {
    pub ids: Vec<u64>,
    pub dists: Vec<f32>,
}

impl Index {
    pub fn new(p: Params) -> Result<Self> {
        Ok(Index {
            writer: Mutex::new(()),
            core: RwLock::new(Core::new(p)?),
        })
    }

    pub fn from_core(core: Core) -> Self {
        Index {
            writer: Mutex::new(()),
            core: RwLock::new(core),
        }
    }

    /// Add (or with `upsert`, replace) a batch. `data` must already be validated and, for
    /// cosine, normalized (`super::prepare_rows`).
    pub fn add(
        &self,
        ids: &[u64],
        data: &[f32],
        metas: Vec<Option<Vec<(String, Lit)>>>,
        upsert: bool,
        threads: Option<usize>,
    ) -> Result<usize> {
        let _w = self.writer.lock();
        let mut core = self.core.write();
        let range = core.stage(ids, data, metas, upsert)?;
        let core = RwLockWriteGuard::downgrade(core);
        let c: &Core = &core;
        let mut slots = range.clone();
        let mut first: Vec<Vec<u32>> = Vec::with_capacity(range.len());
        // The first node of an empty graph becomes the entry point before the parallel part.
        if c.entry.read().0 == NONE {
            if let Some(s) = slots.next() {
                first.push(c.insert(s as u32));
            }
        }
        if slots.len() <= 1 || threads == Some(1) {
            first.extend(slots.map(|s| c.insert(s as u32)));
        } else {
            let rest: Vec<Vec<u32>> = with_threads(threads, || {
                slots.into_par_iter().map(|s| c.insert(s as u32)).collect()
            });
            first.extend(rest);
        }
        with_threads(threads, || c.link_stragglers(range.clone(), &first));
        let repair = c.needs_repair();
        drop(core);
        if repair {
            self.core.write().repair();
        }
        Ok(range.len())
    }

    pub fn delete(&self, ids: &[u64], missing_ok: bool) -> Result<usize> {
        let _w = self.writer.lock();
        let mut core = self.core.write();
        let n = core.delete(ids, missing_ok)?;
        if core.needs_repair() {
            core.repair();
        }
        Ok(n)
    }

    pub fn repair(&self) -> usize {
        let _w = self.writer.lock();
        self.core.write().repair()
    }

    /// Search `nq` prepared queries (row-major).
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        ef: Option<usize>,
        filter: Option<&Filter>,
        threads: Option<usize>,
    ) -> Result<Hits> {
        if k == 0 || k > 100_000 {
            return Err(VectorError::arg(
                "k",
                format!("k must be between 1 and 100000, got {k}"),
            ));
        }
        if let Some(e) = ef {
            if e == 0 || e > 100_000 {
                return Err(VectorError::arg(
                    "ef",
                    format!("ef must be between 1 and 100000, got {e}"),
                ));
            }
        }
        let core = self.core.read();
        let d = core.p.dim;
        let nq = queries.len() / d;
        let compiled = filter.map(|f| f.compile(&core.interner));
        let ef = ef.unwrap_or(core.p.ef_search);
        let c: &Core = &core;
        let matches = match (filter, &compiled) {
            (Some(f), Some(cf)) => c.matches_for(f, cf),
            _ => None,
        };
        let plan = match &matches {
            Some(list) => Plan::Exact(list),
            None => Plan::Graph,
        };
        let run =
            |i: usize| c.search_one(&queries[i * d..(i + 1) * d], k, ef, compiled.as_ref(), plan);
        let results: Vec<Vec<(f32, u32)>> = match &matches {
            // A selective filter: one blocked exact scan over its matches for the batch.
            Some(list) if c.live() > 0 => {
                const CHUNK: usize = 32;
                if nq <= CHUNK || threads == Some(1) {
                    c.brute_batch(queries, k, list)
                } else {
                    with_threads(threads, || {
                        queries
                            .par_chunks(CHUNK * d)
                            .flat_map_iter(|qs| c.brute_batch(qs, k, list))
                            .collect()
                    })
                }
            }
            _ if nq <= 1 || threads == Some(1) => (0..nq).map(run).collect(),
            _ => with_threads(threads, || (0..nq).into_par_iter().map(run).collect()),
        };
        let mut ids = vec![NO_ID; nq * k];
        let mut dists = vec![f32::INFINITY; nq * k];
        for (qi, r) in results.iter().enumerate() {
            for (j, &(dist, slot)) in r.iter().enumerate() {
                ids[qi * k + j] = c.ids[slot as usize];
                dists[qi * k + j] = dist;
            }
        }
        Ok(Hits { ids, dists })
    }

    pub fn get(&self, id: u64) -> Result<(Vec<f32>, Option<MetaItems>)> {
        let core = self.core.read();
        let slot = *core.slot_of.get(&id).ok_or(VectorError::UnknownId { id })? as usize;
        let v = core.vecs.row(slot).to_vec();
        let m = core.meta[slot]
            .as_ref()
            .map(|m| core.interner.meta_to_lits(m));
        Ok((v, m))
    }

    pub fn contains(&self, id: u64) -> bool {
        self.core.read().slot_of.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.core.read().live()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Clustered test data: `n` points around `clusters` centers.
    pub fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
        };
        let centers: Vec<f32> = (0..clusters * dim).map(|_| rnd() * 3.0).collect();
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            let c = i % clusters;
            for d in 0..dim {
                out.push(centers[c * dim + d] + rnd());
            }
        }
        out
    }

    pub fn params(dim: usize, metric: Metric, sq4: bool) -> Params {
        Params {
            dim,
            metric,
            m: 16,
            ef_construction: 100,
            ef_search: 64,
            sq4,
            sq8: false,
            seed: 7,
        }
    }

    fn recall(idx: &Index, data: &[f32], queries: &[f32], metric: Metric, k: usize) -> f64 {
        let core = idx.core.read();
        let d = core.p.dim;
        let nq = queries.len() / d;
        let hits = {
            drop(core);
            idx.search(queries, k, Some(200), None, None).unwrap()
        };
        let core = idx.core.read();
        let mut found = 0;
        for qi in 0..nq {
            let q = &queries[qi * d..(qi + 1) * d];
            let mut all: Vec<(f32, u64)> = (0..data.len() / d)
                .filter(|&i| core.slot_of.contains_key(&(i as u64)))
                .map(|i| (core.exact(q, core.slot_of[&(i as u64)]), i as u64))
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            let truth: HashSet<u64> = all.iter().take(k).map(|x| x.1).collect();
            found += hits.ids[qi * k..(qi + 1) * k]
                .iter()
                .filter(|i| truth.contains(i))
                .count();
        }
        let _ = metric;
        found as f64 / (nq * k) as f64
    }

    fn build(metric: Metric, sq4: bool, n: usize) -> (Index, Vec<f32>) {
        let dim = 32;
        let mut data = clustered(n, dim, 20, 1);
        // Inner product on unnormalized data is not a metric (HNSW recall drops, as in
        // hnswlib); test dot on unit vectors, the embedding case.
        let norm = if metric == Metric::Dot {
            Metric::Cosine
        } else {
            metric
        };
        super::super::prepare_rows("vectors", &mut data, dim, norm).unwrap();
        let idx = Index::new(params(dim, metric, sq4)).unwrap();
        let ids: Vec<u64> = (0..n as u64).collect();
        idx.add(&ids, &data, vec![], false, None).unwrap();
        (idx, data)
    }

    #[test]
    fn recall_sq8_each_metric() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let dim = 32;
            let mut data = clustered(3000, dim, 20, 1);
            let norm = if metric == Metric::L2 {
                Metric::L2
            } else {
                Metric::Cosine
            };
            super::super::prepare_rows("vectors", &mut data, dim, norm).unwrap();
            let mut p = params(dim, metric, false);
            p.sq8 = true;
            let idx = Index::new(p).unwrap();
            let ids: Vec<u64> = (0..3000).collect();
            idx.add(&ids, &data, vec![], false, None).unwrap();
            let mut q = clustered(50, dim, 20, 9);
            super::super::prepare_rows("queries", &mut q, dim, norm).unwrap();
            let r = recall(&idx, &data, &q, metric, 10);
            assert!(r >= 0.95, "{metric:?} sq8: recall {r}");
        }
    }

    #[test]
    fn recall_each_metric() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            for sq4 in [false, true] {
                let (idx, data) = build(metric, sq4, 3000);
                let mut q = clustered(50, 32, 20, 9);
                let norm = if metric == Metric::Dot {
                    Metric::Cosine
                } else {
                    metric
                };
                super::super::prepare_rows("queries", &mut q, 32, norm).unwrap();
                let r = recall(&idx, &data, &q, metric, 10);
                assert!(r >= 0.95, "{metric:?} sq4={sq4}: recall {r}");
            }
        }
    }

    #[test]
    fn delete_repair_and_upsert() {
        let (idx, data) = build(Metric::L2, false, 2000);
        let del: Vec<u64> = (0..2000).step_by(3).collect();
        idx.delete(&del, false).unwrap();
        assert_eq!(idx.core.read().n_purged, del.len(), "repair ran");
        let q = &data[0..32];
        let hits = idx.search(q, 10, None, None, None).unwrap();
        assert!(hits.ids.iter().all(|i| i % 3 != 0));
        assert!(matches!(
            idx.delete(&[0], false),
            Err(VectorError::UnknownId { id: 0 })
        ));
        // Upsert moves id 1 onto the vector of id 0.
        idx.add(&[1], q, vec![], true, None).unwrap();
        let hits = idx.search(q, 1, None, None, None).unwrap();
        assert_eq!(hits.ids[0], 1);
        assert!(hits.dists[0].abs() < 1e-4);
        assert!(matches!(
            idx.add(&[1], q, vec![], false, None),
            Err(VectorError::DuplicateId { id: 1 })
        ));
        let r = recall(&idx, &data, &data[32 * 100..32 * 150], Metric::L2, 10);
        assert!(r >= 0.9, "recall after deletes {r}");
    }

    /// The cached match list of a selective filter follows deletes and inserts, and the
    /// blocked batch scan agrees with per-query brute force.
    #[test]
    fn filter_cache_follows_updates_and_batch_is_exact() {
        let dim = 24;
        let n = 4000;
        let data = clustered(n, dim, 10, 5);
        let idx = Index::new(params(dim, Metric::L2, false)).unwrap();
        let ids: Vec<u64> = (0..n as u64).collect();
        let metas = (0..n)
            .map(|i| Some(vec![("b".to_string(), Lit::Int((i % 100) as i64))]))
            .collect();
        idx.add(&ids, &data, metas, false, None).unwrap();
        let f = Filter::Cmp {
            field: "b".into(),
            op: super::super::filter::Op::Eq,
            value: Lit::Int(7),
        };
        let nq = 9;
        let qs = &data[7 * dim..(7 + nq) * dim];
        let hits = idx.search(qs, 5, None, Some(&f), Some(1)).unwrap();
        {
            let core = idx.core.read();
            for qi in 0..nq {
                let q = &qs[qi * dim..(qi + 1) * dim];
                let mut all: Vec<(f32, u64)> = (7..n as u64)
                    .step_by(100)
                    .map(|i| (core.exact(q, i as u32), i))
                    .collect();
                all.sort_by(|a, b| a.0.total_cmp(&b.0));
                let want: Vec<u64> = all.iter().take(5).map(|x| x.1).collect();
                assert_eq!(&hits.ids[qi * 5..(qi + 1) * 5], &want[..], "query {qi}");
            }
        }
        assert_eq!(hits.ids[0], 7);
        idx.delete(&[7], false).unwrap();
        let hits = idx
            .search(&data[7 * dim..8 * dim], 5, None, Some(&f), Some(1))
            .unwrap();
        assert!(
            !hits.ids.contains(&7),
            "deleted id served from a stale cache"
        );
        let meta = vec![Some(vec![("b".to_string(), Lit::Int(7))])];
        idx.add(&[99_999], &data[7 * dim..8 * dim], meta, false, None)
            .unwrap();
        let hits = idx
            .search(&data[7 * dim..8 * dim], 5, None, Some(&f), Some(1))
            .unwrap();
        assert_eq!(hits.ids[0], 99_999, "new match missing: stale cache");
    }

    /// The blocked batch scan (several row blocks at dim 384, both top-k paths, first
    /// block seeded by selection) returns exactly what a per-query heap scan returns.
    #[test]
    fn brute_batch_matches_heap_scan_across_blocks() {
        let dim = 384;
        let n = 700;
        for metric in [Metric::Cosine, Metric::L2] {
            let mut data = clustered(n, dim, 7, 21);
            super::super::prepare_rows("vectors", &mut data, dim, metric).unwrap();
            let mut core = Core::new(params(dim, metric, false)).unwrap();
            let ids: Vec<u64> = (0..n as u64).collect();
            core.stage(&ids, &data, vec![], false).unwrap();
            let list: Vec<u32> = (0..n as u32).filter(|i| i % 3 != 1).collect();
            let mut qs = clustered(9, dim, 7, 22);
            super::super::prepare_rows("queries", &mut qs, dim, metric).unwrap();
            for k in [1usize, 10, 100] {
                let got = core.brute_batch(&qs, k, &list);
                for (qi, row) in got.iter().enumerate() {
                    let want = core.brute_list(&qs[qi * dim..(qi + 1) * dim], k, &list);
                    let want: Vec<u32> = want.iter().map(|c| c.1).collect();
                    let have: Vec<u32> = row.iter().map(|c| c.1).collect();
                    assert_eq!(have, want, "{metric:?} k={k} query {qi}");
                }
            }
        }
    }

    /// Groups of identical vectors whose members sit in different filter scopes: every
    /// filtered graph search must find k matches without the brute-force fallback, and
    /// every member of a group must be reachable (the duplicate-trap defect).
    #[test]
    fn duplicates_across_scopes_never_trap_filtered_search() {
        let dim = 16;
        let scopes = 10usize;
        let base = clustered(3000, dim, 20, 11);
        let groups = 150usize;
        let mut data = base.clone();
        let mut metas = Vec::new();
        for i in 0..3000 {
            metas.push(Some(vec![("s".to_string(), Lit::Int((i % scopes) as i64))]));
        }
        for g in 0..groups {
            let v = &base[(g * 17) * dim..(g * 17 + 1) * dim];
            for copy in 0..scopes {
                data.extend_from_slice(v);
                metas.push(Some(vec![("s".to_string(), Lit::Int(copy as i64))]));
            }
        }
        let n = data.len() / dim;
        let idx = Index::new(params(dim, Metric::L2, false)).unwrap();
        let ids: Vec<u64> = (0..n as u64).collect();
        idx.add(&ids, &data, metas, false, Some(1)).unwrap();
        let core = idx.core.read();
        let unreachable = unreachable_from_entry(&core).len();
        assert_eq!(
            unreachable, 0,
            "{unreachable} nodes unreachable from the entry"
        );
        drop(core);
        let mut qs = Vec::new();
        for g in 0..groups {
            qs.extend_from_slice(&base[(g * 17) * dim..(g * 17 + 1) * dim]);
        }
        for s in 0..scopes as i64 {
            let f = Filter::Cmp {
                field: "s".into(),
                op: super::super::filter::Op::Eq,
                value: Lit::Int(s),
            };
            let hits = idx.search(&qs, 10, Some(32), Some(&f), Some(1)).unwrap();
            for (qi, row) in hits.ids.chunks(10).enumerate() {
                let want = 3000 + qi as u64 * scopes as u64 + s as u64;
                assert!(row.contains(&want), "scope {s} query {qi}: missing {want}");
            }
        }
        let fb = idx
            .core
            .read()
            .fallbacks
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(fb, 0, "{fb} filtered searches fell back to brute force");
    }

    /// Live nodes not reachable on layer 0 from the entry point.
    fn unreachable_from_entry(core: &Core) -> Vec<u32> {
        let n = core.graph.len();
        let (ep, _) = *core.entry.read();
        let mut seen = vec![false; n];
        let mut stack = vec![ep];
        seen[ep as usize] = true;
        let mut buf = vec![0u32; core.graph.max_links()];
        while let Some(x) = stack.pop() {
            let cnt = core.graph.read(x, 0, &mut buf);
            for &y in &buf[..cnt] {
                if !seen[y as usize] {
                    seen[y as usize] = true;
                    stack.push(y);
                }
            }
        }
        (0..n as u32)
            .filter(|&i| !seen[i as usize] && !core.deleted[i as usize])
            .collect()
    }

    /// Replays, single-threaded and deterministically, the parallel-build race behind the
    /// duplicate-scope defect: groups of identical vectors (one copy per filter scope)
    /// where the lowest-slot copy is linked as if its twins were being inserted at the
    /// same moment (it does not see them) and, in other groups, the highest-slot copy is.
    /// Outside nodes keep one copy per group (the lowest slot), so without
    /// `link_stragglers` copies end up with no link pointing at them, or whole groups link
    /// only to each other. With it, every node is reachable and every scope's filtered
    /// search returns its own copy.
    #[test]
    fn racing_duplicate_inserts_stay_reachable() {
        let dim = 16;
        let scopes = 10usize;
        let groups = 150usize;
        let n_base = 3000usize;
        let base = clustered(n_base, dim, 20, 11);
        let group_vecs = clustered(groups, dim, 20, 12);
        let idx = Index::new(params(dim, Metric::L2, false)).unwrap();
        let metas = (0..n_base)
            .map(|i| Some(vec![("s".to_string(), Lit::Int((i % scopes) as i64))]))
            .collect();
        let ids: Vec<u64> = (0..n_base as u64).collect();
        idx.add(&ids, &base, metas, false, Some(1)).unwrap();
        let mut data = Vec::new();
        let mut metas = Vec::new();
        for g in 0..groups {
            for copy in 0..scopes {
                data.extend_from_slice(&group_vecs[g * dim..(g + 1) * dim]);
                metas.push(Some(vec![("s".to_string(), Lit::Int(copy as i64))]));
            }
        }
        let ids: Vec<u64> = (n_base as u64..(n_base + groups * scopes) as u64).collect();
        let mut core = idx.core.write();
        let range = core.stage(&ids, &data, metas, false).unwrap();
        let core = RwLockWriteGuard::downgrade(core);
        let mut first = vec![Vec::new(); range.len()];
        for g in 0..groups {
            let slot0 = range.start + g * scopes;
            let group = slot0 as u32..(slot0 + scopes) as u32;
            // The racing copy: the first one in even groups, the last one in odd groups.
            let racer = if g % 2 == 0 {
                group.start
            } else {
                group.end - 1
            };
            for s in group.clone().filter(|&s| s != racer) {
                first[s as usize - range.start] = core.insert(s);
            }
            let twins = group.clone();
            let hidden = move |n: u32| twins.contains(&n) && n != racer;
            first[racer as usize - range.start] = core.insert_hiding(racer, &hidden);
        }
        let before = unreachable_from_entry(&core).len();
        assert!(before > 0, "the replayed race left every node reachable");
        let linked = core.link_stragglers(range.clone(), &first);
        assert!(
            linked > 0 && linked <= before,
            "linked {linked} of {before}"
        );
        let after = unreachable_from_entry(&core);
        assert!(
            after.is_empty(),
            "{} nodes still unreachable: {after:?}",
            after.len()
        );
        drop(core);
        for sc in 0..scopes as i64 {
            let f = Filter::Cmp {
                field: "s".into(),
                op: super::super::filter::Op::Eq,
                value: Lit::Int(sc),
            };
            let hits = idx
                .search(&group_vecs, 10, Some(32), Some(&f), Some(1))
                .unwrap();
            for (g, row) in hits.ids.chunks(10).enumerate() {
                let want = (n_base + g * scopes) as u64 + sc as u64;
                assert!(row.contains(&want), "scope {sc} group {g}: missing {want}");
            }
        }
    }

    /// The same data built on all cores, several times: the race is real there, and every
    /// node must still be reachable afterwards.
    #[test]
    fn parallel_build_with_duplicates_leaves_no_unreachable_node() {
        let dim = 16;
        let base = clustered(2000, dim, 20, 11);
        let mut data = base.clone();
        for g in 0..100 {
            for _ in 0..10 {
                data.extend_from_slice(&base[(g * 17) * dim..(g * 17 + 1) * dim]);
            }
        }
        let n = data.len() / dim;
        let ids: Vec<u64> = (0..n as u64).collect();
        for _ in 0..3 {
            let idx = Index::new(params(dim, Metric::L2, false)).unwrap();
            idx.add(&ids, &data, vec![], false, Some(4)).unwrap();
            let un = unreachable_from_entry(&idx.core.read());
            assert!(un.is_empty(), "{} nodes unreachable", un.len());
        }
    }

    #[test]
    fn filtered_search_only_returns_matches() {
        let dim = 16;
        let n = 5000;
        let data = clustered(n, dim, 10, 3);
        let idx = Index::new(params(dim, Metric::L2, false)).unwrap();
        let ids: Vec<u64> = (0..n as u64).collect();
        let metas = (0..n)
            .map(|i| Some(vec![("bucket".to_string(), Lit::Int((i % 100) as i64))]))
            .collect();
        idx.add(&ids, &data, metas, false, None).unwrap();
        for (lim, expect_all) in [(1i64, true), (50, false)] {
            let f = Filter::Cmp {
                field: "bucket".into(),
                op: super::super::filter::Op::Lt,
                value: Lit::Int(lim),
            };
            let hits = idx.search(&data[..dim], 10, None, Some(&f), None).unwrap();
            assert!(
                hits.ids.iter().all(|&i| (i % 100) < lim as u64),
                "{:?}",
                hits.ids
            );
            assert!(hits.ids.iter().all(|&i| i != NO_ID));
            if expect_all {
                assert_eq!(hits.ids[0], 0);
            }
        }
    }
}
