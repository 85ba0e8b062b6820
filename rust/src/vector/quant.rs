//! 4-bit scalar quantization (SQ4): each dimension is mapped to 16 levels between a
//! per-dimension low and high bound, so a 384-dim vector takes 192 bytes instead of 1536
//! (87.5% smaller). The graph is traversed on codes; the final candidates are reranked with
//! the float32 vectors (in memory, or the mmap'd vectors file after `load`).
//!
//! Bounds are fitted on the data (the 0.1% and 99.9% quantiles per dimension, so a few
//! outliers do not waste levels) and refitted, re-encoding every code, whenever the index
//! has doubled in size since the last fit.

use super::distance::Kernels;

/// Quantization parameters for one index.
#[derive(Clone, Debug)]
pub struct Sq4 {
    pub dim: usize,
    /// `dim` rounded up to a multiple of 16 (one code block).
    pub padded: usize,
    pub low: Vec<f32>,
    pub step: Vec<f32>,
}

impl Sq4 {
    pub fn code_bytes(dim: usize) -> usize {
        dim.div_ceil(16) * 8
    }

    /// Fit bounds on row-major `rows` (any number of rows, at least one).
    pub fn fit<'a>(dim: usize, rows: impl Iterator<Item = &'a [f32]>) -> Self {
        let rows: Vec<&[f32]> = rows.collect();
        let padded = dim.div_ceil(16) * 16;
        let mut low = vec![0.0f32; padded];
        let mut step = vec![0.0f32; padded];
        let mut col: Vec<f32> = Vec::with_capacity(rows.len());
        for d in 0..dim {
            col.clear();
            col.extend(rows.iter().map(|r| r[d]));
            if col.is_empty() {
                continue;
            }
            col.sort_unstable_by(f32::total_cmp);
            let q = |f: f64| col[((col.len() - 1) as f64 * f).round() as usize];
            let (lo, hi) = (q(0.001), q(0.999));
            low[d] = lo;
            step[d] = if hi > lo { (hi - lo) / 15.0 } else { 0.0 };
        }
        Sq4 {
            dim,
            padded,
            low,
            step,
        }
    }

    /// Encode one vector into `out` (`code_bytes(dim)` bytes).
    pub fn encode(&self, v: &[f32], out: &mut [u8]) {
        out.iter_mut().for_each(|b| *b = 0);
        for (d, &x) in v.iter().enumerate().take(self.dim) {
            let c = if self.step[d] > 0.0 {
                ((x - self.low[d]) / self.step[d]).round().clamp(0.0, 15.0) as u8
            } else {
                0
            };
            let (block, r) = (d / 16, d % 16);
            let i = block * 8 + (r % 8);
            out[i] |= if r < 8 { c } else { c << 4 };
        }
    }

    /// Decode (for tests and `get` on a code-only view).
    pub fn decode(&self, codes: &[u8]) -> Vec<f32> {
        (0..self.dim)
            .map(|d| {
                let (block, r) = (d / 16, d % 16);
                let b = codes[block * 8 + (r % 8)];
                let c = if r < 8 { b & 0x0f } else { b >> 4 };
                self.low[d] + self.step[d] * c as f32
            })
            .collect()
    }
}

/// A query prepared for scoring against codes.
pub enum Sq4Query {
    /// `dist = 1 - (bias + sum(w * code))` for cosine and dot.
    Dot { w: Vec<f32>, bias: f32 },
    /// `dist = sum((r - step * code)^2)` for L2, with `r = q - low`.
    L2 { r: Vec<f32> },
}

impl Sq4Query {
    pub fn new(sq: &Sq4, q: &[f32], l2: bool) -> Self {
        if l2 {
            let mut r = vec![0.0f32; sq.padded];
            for d in 0..sq.dim {
                r[d] = q[d] - sq.low[d];
            }
            Sq4Query::L2 { r }
        } else {
            let mut w = vec![0.0f32; sq.padded];
            let mut bias = 0.0f32;
            for d in 0..sq.dim {
                w[d] = q[d] * sq.step[d];
                bias += q[d] * sq.low[d];
            }
            Sq4Query::Dot { w, bias }
        }
    }

    #[inline]
    pub fn distance(&self, k: &Kernels, sq: &Sq4, codes: &[u8]) -> f32 {
        match self {
            Sq4Query::Dot { w, bias } => 1.0 - (bias + (k.sq4_dot)(w, codes)),
            Sq4Query::L2 { r } => (k.sq4_l2)(r, &sq.step, codes),
        }
    }
}

/// 8-bit scalar quantization (SQ8) used as a *traversal* code: the graph walk scores
/// neighbours on 1 byte per dimension (a quarter of the float32 bytes, so 4x less memory
/// traffic per hop, which is what bounds HNSW search once the vectors exceed L2), and the
/// `ef` candidates are reranked with exact float32 distances. 255 levels between the
/// per-dimension min and max of a sample keep the score error far below the gaps the
/// rerank has to resolve, so recall at a given `ef` matches float32 traversal.
///
/// Scoring is an integer dot product: the query's per-dimension weights `q[d] * step[d]`
/// are scaled to 13-bit integers (`Sq8Query`), so 16 dimensions cost one widening load and
/// one `vpmaddwd` (AVX2); the weight bound is chosen per query so that no i32 lane sum
/// can overflow (`Sq8Query::new`).
#[derive(Clone, Debug)]
pub struct Sq8 {
    pub dim: usize,
    /// `dim` rounded up to a multiple of 32 (one AVX2 block of codes).
    pub padded: usize,
    pub low: Vec<f32>,
    pub step: Vec<f32>,
}

/// Integer query weights use at most this many bits (plus sign): 13 bits keep the
/// rounding error of a weight below 0.01% of the largest one.
const MAX_W_BITS: u32 = 13;

impl Sq8 {
    pub fn code_bytes(dim: usize) -> usize {
        dim.div_ceil(32) * 32
    }

    /// Fit bounds (per-dimension min and max) on `rows`.
    pub fn fit<'a>(dim: usize, rows: impl Iterator<Item = &'a [f32]>) -> Self {
        let padded = Self::code_bytes(dim);
        let mut lo = vec![f32::INFINITY; dim];
        let mut hi = vec![f32::NEG_INFINITY; dim];
        for r in rows {
            for d in 0..dim {
                lo[d] = lo[d].min(r[d]);
                hi[d] = hi[d].max(r[d]);
            }
        }
        let mut low = vec![0.0f32; padded];
        let mut step = vec![0.0f32; padded];
        for d in 0..dim {
            if lo[d].is_finite() && hi[d].is_finite() {
                low[d] = lo[d];
                step[d] = if hi[d] > lo[d] {
                    (hi[d] - lo[d]) / 255.0
                } else {
                    0.0
                };
            }
        }
        Sq8 {
            dim,
            padded,
            low,
            step,
        }
    }

    /// Encode one vector into `out` (`code_bytes(dim)` bytes); returns the squared norm of
    /// the decoded vector (the L2 score needs it).
    pub fn encode(&self, v: &[f32], out: &mut [u8]) -> f32 {
        out.iter_mut().for_each(|b| *b = 0);
        let mut norm = 0.0f32;
        for (d, &x) in v.iter().enumerate().take(self.dim) {
            let c = if self.step[d] > 0.0 {
                ((x - self.low[d]) / self.step[d]).round().clamp(0.0, 255.0)
            } else {
                0.0
            };
            out[d] = c as u8;
            let y = self.low[d] + self.step[d] * c;
            norm += y * y;
        }
        norm
    }

    /// The squared norm of a decoded code (as `encode` returns it).
    pub fn norm(&self, codes: &[u8]) -> f32 {
        (0..self.dim)
            .map(|d| {
                let y = self.low[d] + self.step[d] * codes[d] as f32;
                y * y
            })
            .sum()
    }

    pub fn decode(&self, codes: &[u8]) -> Vec<f32> {
        (0..self.dim)
            .map(|d| self.low[d] + self.step[d] * codes[d] as f32)
            .collect()
    }
}

/// A query prepared for scoring against SQ8 codes: `q . x ~ bias + scale * sum(w[d] * c[d])`
/// with integer weights `w`, so `dot` distance is `1 - that` and L2 is
/// `|q|^2 - 2 * that + |x|^2` (the decoded norm stored per code).
pub struct Sq8Query {
    pub w: Vec<i16>,
    pub scale: f32,
    pub bias: f32,
    pub qnorm: f32,
    pub l2: bool,
}

impl Sq8Query {
    pub fn new(sq: &Sq8, q: &[f32], l2: bool) -> Self {
        let mut wf = vec![0.0f32; sq.padded];
        let mut bias = 0.0f32;
        for d in 0..sq.dim {
            wf[d] = q[d] * sq.step[d];
            bias += q[d] * sq.low[d];
        }
        // Keep every i32 lane sum in range: a lane accumulates `padded / 8` products of
        // at most 255 * 2 * wmax (pairs from vpmaddwd).
        let lane_terms = (sq.padded / 8).max(1) as f64;
        let wmax_allowed = ((i32::MAX as f64) / (255.0 * 2.0 * lane_terms)).floor();
        let wmax = wmax_allowed.min(((1u32 << MAX_W_BITS) - 1) as f64) as f32;
        let amax = wf.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = if amax > 0.0 { amax / wmax } else { 1.0 };
        let w = wf.iter().map(|x| (x / scale).round() as i16).collect();
        let qnorm = q.iter().map(|x| x * x).sum();
        Sq8Query {
            w,
            scale,
            bias,
            qnorm,
            l2,
        }
    }

    /// Distance to a code with decoded squared norm `xnorm` (ignored for dot/cosine).
    #[inline]
    pub fn finish(&self, raw: i32, xnorm: f32) -> f32 {
        let dot = self.bias + self.scale * raw as f32;
        if self.l2 {
            (self.qnorm - 2.0 * dot + xnorm).max(0.0)
        } else {
            1.0 - dot
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sq8_distance_matches_decoded() {
        let dim = 40;
        let rows: Vec<Vec<f32>> = (0..60)
            .map(|i| {
                (0..dim)
                    .map(|d| ((i * 7 + d * 13) % 100) as f32 / 50.0 - 1.0)
                    .collect()
            })
            .collect();
        let sq = Sq8::fit(dim, rows.iter().map(|r| r.as_slice()));
        let k = Kernels::detect();
        let p = Kernels::portable();
        let q: Vec<f32> = (0..dim).map(|d| (d as f32 / 20.0) - 0.7).collect();
        let mut codes = vec![0u8; Sq8::code_bytes(dim)];
        assert_eq!(codes.len(), 64);
        for r in &rows {
            let norm = sq.encode(r, &mut codes);
            let x = sq.decode(&codes);
            for d in 0..dim {
                assert!((x[d] - r[d]).abs() <= sq.step[d] * 0.5 + 1e-6);
            }
            assert!((norm - sq.norm(&codes)).abs() < 1e-3);
            for l2 in [false, true] {
                let qq = Sq8Query::new(&sq, &q, l2);
                let raw = (k.sq8_dot)(&qq.w, &codes);
                assert_eq!(raw, (p.sq8_dot)(&qq.w, &codes));
                let got = qq.finish(raw, norm);
                let want = if l2 {
                    q.iter()
                        .zip(&x)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                } else {
                    1.0 - q.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>()
                };
                assert!(
                    (got - want).abs() < 2e-3 * (1.0 + want.abs()),
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn roundtrip_error_is_bounded_by_half_a_step() {
        let dim = 40;
        let rows: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                (0..dim)
                    .map(|d| ((i * 7 + d * 13) % 100) as f32 / 50.0 - 1.0)
                    .collect()
            })
            .collect();
        let sq = Sq4::fit(dim, rows.iter().map(|r| r.as_slice()));
        let mut codes = vec![0u8; Sq4::code_bytes(dim)];
        assert_eq!(codes.len(), 24);
        for r in &rows[1..199] {
            sq.encode(r, &mut codes);
            let back = sq.decode(&codes);
            for d in 0..dim {
                assert!((back[d] - r[d]).abs() <= sq.step[d] * 0.5 + 0.03, "{d}");
            }
        }
    }

    #[test]
    fn asymmetric_distance_matches_decoded() {
        let dim = 20;
        let rows: Vec<Vec<f32>> = (0..50)
            .map(|i| {
                (0..dim)
                    .map(|d| ((i * 3 + d * 5) % 17) as f32 / 17.0)
                    .collect()
            })
            .collect();
        let sq = Sq4::fit(dim, rows.iter().map(|r| r.as_slice()));
        let k = Kernels::detect();
        let q: Vec<f32> = (0..dim).map(|d| d as f32 / 20.0).collect();
        let mut codes = vec![0u8; Sq4::code_bytes(dim)];
        sq.encode(&rows[5], &mut codes);
        let x = sq.decode(&codes);
        let exact_dot = 1.0 - q.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>();
        let exact_l2: f32 = q.iter().zip(&x).map(|(a, b)| (a - b) * (a - b)).sum();
        let d = Sq4Query::new(&sq, &q, false).distance(&k, &sq, &codes);
        assert!((d - exact_dot).abs() < 1e-4, "{d} vs {exact_dot}");
        let d = Sq4Query::new(&sq, &q, true).distance(&k, &sq, &codes);
        assert!((d - exact_l2).abs() < 1e-4, "{d} vs {exact_l2}");
    }
}
