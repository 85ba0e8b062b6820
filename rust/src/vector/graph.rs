//! HNSW adjacency storage: flat, seqlock-protected neighbour lists that searches read
//! without taking a lock.
//!
//! Layout (as hnswlib's level-0 block): layer 0 of every node lives in one contiguous
//! array of `AtomicU32`, one block of `2 + 2m` words per node: `[version, count, ids..]`.
//! A search hop touches one block (136 bytes for m = 16), and `prefetch` can pull it into
//! cache ahead of use. Layers >= 1 (about 1/m of the nodes) live in a small per-node boxed
//! array of `(1 + m)`-word blocks `[count, ids..]`, guarded by the same per-node version.
//!
//! Concurrency: one sequence lock per node (the `version` word) covers all its layers.
//! - Writers (inserts linking in parallel, repair) lock a node by moving its version from
//!   even to odd with a CAS, store the new count and ids, then publish `version + 2` with
//!   Release ordering. Writers to one node are thereby serialized; no writer ever holds two
//!   node locks, so there is no lock-order deadlock.
//! - Readers (searches, and inserts while they look for neighbours) take no lock: they load
//!   the version (Acquire), copy the count and ids into their own buffer with Relaxed
//!   loads, issue an Acquire fence and re-load the version; if it was odd or changed, a
//!   writer was active and they copy again. This is the standard seqlock protocol (Boehm,
//!   "Can seqlocks get along with programming language memory models?", 2012), so a reader
//!   always acts on a list exactly as one writer published it ("a whole list"), as the old
//!   per-list `RwLock` guaranteed.
//!
//! Memory-safety argument (why the lock-free read is sound, not just "usually works"):
//! every shared word is an `AtomicU32`, so concurrent reads and writes are never a data
//! race in the Rust/C++ memory model, whatever the interleaving. The arrays are only
//! resized through `&mut Graph` (`push`, while `Core` is write-locked), so no reader can
//! observe a reallocation. The count a reader sees is clamped to the block capacity before
//! indexing, and every id a writer stores is a slot that already exists (staged before it
//! is linked; slots are never removed while the `Core` read lock is held). So even a torn
//! read — which the version check rejects anyway — could only yield in-range ids. No
//! `unsafe` is needed here; the only `unsafe` is the prefetch hint, which never faults.

use std::sync::atomic::{fence, AtomicU32, Ordering};

/// Neighbour lists of every node, one seqlock per node.
pub struct Graph {
    /// Max links on layers >= 1 (`m`).
    m: usize,
    /// Max links on layer 0 (`2m`).
    m0: usize,
    /// Words per node in `level0`: version, count, `m0` ids.
    stride: usize,
    level0: Vec<AtomicU32>,
    /// Per node: `level * (1 + m)` words (`[count, ids..]` per layer 1..=level).
    upper: Vec<Box<[AtomicU32]>>,
    levels: Vec<u8>,
}

fn atomics(n: usize) -> impl Iterator<Item = AtomicU32> {
    (0..n).map(|_| AtomicU32::new(0))
}

impl Graph {
    pub fn new(m: usize) -> Self {
        Graph {
            m,
            m0: 2 * m,
            stride: 2 + 2 * m,
            level0: Vec::new(),
            upper: Vec::new(),
            levels: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The largest list any layer can hold (the read buffer size callers need).
    pub fn max_links(&self) -> usize {
        self.m0
    }

    /// Capacity of `layer`'s lists.
    pub fn cap(&self, layer: usize) -> usize {
        if layer == 0 {
            self.m0
        } else {
            self.m
        }
    }

    /// Append an unlinked node with top layer `level`.
    pub fn push(&mut self, level: usize) {
        self.level0.extend(atomics(self.stride));
        self.upper
            .push(atomics(level * (1 + self.m)).collect::<Vec<_>>().into());
        self.levels.push(level as u8);
    }

    /// Reserve room for `extra` more nodes (amortizes growth of the flat array).
    pub fn reserve(&mut self, extra: usize) {
        self.level0.reserve(extra * self.stride);
        self.upper.reserve(extra);
        self.levels.reserve(extra);
    }

    #[inline]
    pub fn level(&self, i: u32) -> usize {
        self.levels[i as usize] as usize
    }

    #[inline]
    fn version(&self, i: u32) -> &AtomicU32 {
        &self.level0[i as usize * self.stride]
    }

    /// `(count, ids)` words of node `i` on `layer` (`layer <= level(i)`).
    #[inline]
    fn block(&self, i: u32, layer: usize) -> (&AtomicU32, &[AtomicU32]) {
        if layer == 0 {
            let b = &self.level0[i as usize * self.stride + 1..(i as usize + 1) * self.stride];
            (&b[0], &b[1..])
        } else {
            let w = 1 + self.m;
            let b = &self.upper[i as usize][(layer - 1) * w..layer * w];
            (&b[0], &b[1..])
        }
    }

    /// Copy node `i`'s list on `layer` into `buf` (at least `max_links()` long) and return
    /// its length: a consistent snapshot, without locking (see the module doc). An empty
    /// list when the node does not reach `layer`.
    #[inline]
    pub fn read(&self, i: u32, layer: usize, buf: &mut [u32]) -> usize {
        if layer > self.level(i) {
            return 0;
        }
        let ver = self.version(i);
        let (cnt, ids) = self.block(i, layer);
        let mut spins = 0u32;
        loop {
            let v1 = ver.load(Ordering::Acquire);
            if v1 & 1 == 0 {
                let n = (cnt.load(Ordering::Relaxed) as usize).min(ids.len());
                for (dst, src) in buf[..n].iter_mut().zip(ids) {
                    *dst = src.load(Ordering::Relaxed);
                }
                fence(Ordering::Acquire);
                if ver.load(Ordering::Relaxed) == v1 {
                    return n;
                }
            }
            backoff(&mut spins);
        }
    }

    /// Lock node `i`, show `f` its current list on `layer` and, if `f` returns a new list,
    /// store it (truncated to the layer capacity). Readers never block on this.
    pub fn update(&self, i: u32, layer: usize, f: impl FnOnce(&[u32]) -> Option<Vec<u32>>) {
        if layer > self.level(i) {
            return;
        }
        let ver = self.version(i);
        let mut spins = 0u32;
        let v = loop {
            let v = ver.load(Ordering::Relaxed);
            if v & 1 == 0
                && ver
                    .compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break v;
            }
            backoff(&mut spins);
        };
        // Order the odd version before the data stores below (seqlock writer protocol).
        fence(Ordering::Release);
        let (cnt, ids) = self.block(i, layer);
        let n = (cnt.load(Ordering::Relaxed) as usize).min(ids.len());
        let cur: Vec<u32> = ids[..n].iter().map(|x| x.load(Ordering::Relaxed)).collect();
        // The lock must be released even if `f` panics.
        struct Unlock<'a>(&'a AtomicU32, u32);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.store(self.1.wrapping_add(2), Ordering::Release);
            }
        }
        let _unlock = Unlock(ver, v);
        if let Some(new) = f(&cur) {
            let n = new.len().min(ids.len());
            for (dst, &src) in ids.iter().zip(&new[..n]) {
                dst.store(src, Ordering::Relaxed);
            }
            cnt.store(n as u32, Ordering::Relaxed);
        }
    }

    /// Replace a list outright (through the node lock).
    pub fn set(&self, i: u32, layer: usize, list: &[u32]) {
        self.update(i, layer, |_| Some(list.to_vec()));
    }

    /// Replace a list with exclusive access (loading); no atomics contention.
    pub fn set_mut(&mut self, i: u32, layer: usize, list: &[u32]) {
        if layer > self.level(i) {
            return;
        }
        let (cnt, ids) = self.block(i, layer);
        let n = list.len().min(ids.len());
        for (dst, &src) in ids.iter().zip(&list[..n]) {
            dst.store(src, Ordering::Relaxed);
        }
        cnt.store(n as u32, Ordering::Relaxed);
    }

    /// Hint the CPU to load node `i`'s layer-0 block (version, count and the first ids).
    #[inline]
    pub fn prefetch(&self, i: u32) {
        if let Some(w) = self.level0.get(i as usize * self.stride) {
            prefetch_ptr(w as *const AtomicU32 as *const u8);
        }
    }

    /// Heap bytes of the adjacency storage.
    pub fn bytes(&self) -> usize {
        self.level0.capacity() * 4
            + self
                .upper
                .iter()
                .map(|b| b.len() * 4 + std::mem::size_of::<Box<[AtomicU32]>>())
                .sum::<usize>()
            + self.levels.capacity()
    }
}

#[inline]
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Prefetch one cache line into all cache levels. A hint only: it never faults, whatever
/// the address, so it is safe to call on any pointer.
#[inline(always)]
pub fn prefetch_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is SSE (baseline on x86_64) and does not access memory
    // architecturally; invalid addresses are ignored.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Arc;

    #[test]
    fn read_write_layers() {
        let mut g = Graph::new(4);
        g.push(0);
        g.push(2);
        let mut buf = vec![0u32; g.max_links()];
        assert_eq!(g.read(1, 2, &mut buf), 0);
        g.set(1, 2, &[0]);
        g.set(1, 0, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(g.read(1, 0, &mut buf), 8, "truncated to 2m");
        let n = g.read(1, 2, &mut buf);
        assert_eq!(&buf[..n], &[0]);
        assert_eq!(g.read(0, 1, &mut buf), 0, "node 0 has no layer 1");
        g.update(1, 2, |cur| {
            assert_eq!(cur, &[0]);
            Some(vec![0, 1])
        });
        let n = g.read(1, 2, &mut buf);
        assert_eq!(&buf[..n], &[0, 1]);
        g.set_mut(0, 0, &[1]);
        let n = g.read(0, 0, &mut buf);
        assert_eq!(&buf[..n], &[1]);
    }

    /// Readers racing writers only ever see lists some writer published whole: every
    /// writer stores `[x; len]` with `len` derived from `x`.
    #[test]
    fn readers_see_whole_lists() {
        let mut g = Graph::new(8);
        for _ in 0..4 {
            g.push(1);
        }
        let g = Arc::new(g);
        let stop = Arc::new(AtomicBool::new(false));
        // Writers keep writing until the reader has checked enough lists, so the two
        // overlap even when a loaded machine schedules the reader late.
        let checked = Arc::new(AtomicU64::new(0));
        const MIN_CHECKS: u64 = 2_000;
        // Set when the reader ends, even by a failed assertion, so writers never spin on.
        let reader_done = Arc::new(AtomicBool::new(false));
        struct Done(Arc<AtomicBool>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (g, checked, done) = (g.clone(), checked.clone(), reader_done.clone());
                std::thread::spawn(move || {
                    let mut r = 0u32;
                    while r < 20_000
                        || (checked.load(Ordering::Relaxed) < MIN_CHECKS
                            && !done.load(Ordering::Relaxed))
                    {
                        let x = (r * 2 + t) % 4;
                        let len = 1 + (x as usize * 5) % 16;
                        g.set(r % 4, (r as usize / 4) % 2, &vec![x; len]);
                        r = r.wrapping_add(1);
                    }
                })
            })
            .collect();
        let reader = {
            let (g, stop, checked) = (g.clone(), stop.clone(), checked.clone());
            let done = Done(reader_done.clone());
            std::thread::spawn(move || {
                let _done = done;
                let mut buf = vec![0u32; g.max_links()];
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..4 {
                        for layer in 0..2 {
                            let n = g.read(i, layer, &mut buf);
                            if n > 0 {
                                let x = buf[0];
                                let want = (1 + (x as usize * 5) % 16).min(g.cap(layer));
                                assert_eq!(n, want, "torn length");
                                assert!(buf[..n].iter().all(|&y| y == x), "torn ids");
                                checked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().expect("the reader saw a torn list");
        assert!(checked.load(Ordering::Relaxed) >= MIN_CHECKS);
    }
}
