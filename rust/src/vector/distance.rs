//! Distance kernels: dot product and squared L2 over float32, plus the asymmetric kernels
//! that score a float32 query against 4-bit codes (see `quant`).
//!
//! The AVX2+FMA versions are chosen once at run time with `is_x86_feature_detected!`;
//! every other CPU gets the portable versions (written with independent accumulators so
//! LLVM can vectorize them). Both paths are checked against each other in the tests.

/// `fn(a, b) -> f32` over equal-length slices.
pub type Kernel = fn(&[f32], &[f32]) -> f32;
/// Asymmetric SQ4 dot: `sum(w[i] * code[i])` over padded dimensions.
pub type Sq4DotKernel = fn(&[f32], &[u8]) -> f32;
/// Asymmetric SQ4 L2: `sum((r[i] - step[i] * code[i])^2)` over padded dimensions.
pub type Sq4L2Kernel = fn(&[f32], &[f32], &[u8]) -> f32;
/// SQ8 integer score: `sum(w[i] * code[i])` (see `quant::Sq8Query`).
pub type Sq8DotKernel = fn(&[i16], &[u8]) -> i32;

/// The kernels this CPU runs, picked once per index.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub dot: Kernel,
    pub l2: Kernel,
    pub sq4_dot: Sq4DotKernel,
    pub sq4_l2: Sq4L2Kernel,
    pub sq8_dot: Sq8DotKernel,
    pub name: &'static str,
    /// Set when the AVX2+FMA kernels were selected: searches then use these statically
    /// dispatched kernels instead of the function pointers.
    pub avx2: Option<Avx2>,
}

impl Kernels {
    pub fn portable() -> Self {
        Kernels {
            dot: dot_portable,
            l2: l2_portable,
            sq4_dot: sq4_dot_portable,
            sq4_l2: sq4_l2_portable,
            sq8_dot: sq8_dot_portable,
            name: "portable",
            avx2: None,
        }
    }

    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(a) = Avx2::detect() {
                return Kernels {
                    dot: avx2::dot,
                    l2: avx2::l2,
                    sq4_dot: avx2::sq4_dot,
                    sq4_l2: avx2::sq4_l2,
                    sq8_dot: avx2::sq8_dot,
                    name: "avx2+fma",
                    avx2: Some(a),
                };
            }
        }
        Self::portable()
    }
}

/// Statically dispatched kernels, so the hot search loops are monomorphised per kernel set
/// and metric (a direct, predictable call instead of a function pointer per distance).
pub trait Kern: Copy + Send + Sync {
    fn dot(self, a: &[f32], b: &[f32]) -> f32;
    fn l2(self, a: &[f32], b: &[f32]) -> f32;
    /// Register-blocked raw scores (dot products, or squared L2 with `l2`) of 4 queries
    /// against every row in `rows`: `out[j * rows.len() + r]` for query `j`, row `r`. Used
    /// by the brute-force scans: each row chunk is loaded once for four queries. All slices
    /// must have the same length; `out` at least `4 * rows.len()`.
    fn scores_4xn(self, l2: bool, q: [&[f32]; 4], rows: &[&[f32]], out: &mut [f32]) {
        let n = rows.len();
        for (j, qv) in q.iter().enumerate() {
            for (r, xv) in rows.iter().enumerate() {
                out[j * n + r] = if l2 {
                    self.l2(qv, xv)
                } else {
                    self.dot(qv, xv)
                };
            }
        }
    }
}

/// Portable kernels.
#[derive(Clone, Copy)]
pub struct Portable;
impl Kern for Portable {
    #[inline]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        dot_portable(a, b)
    }
    #[inline]
    fn l2(self, a: &[f32], b: &[f32]) -> f32 {
        l2_portable(a, b)
    }
}

/// AVX2+FMA kernels. A value exists only after the CPU features were detected
/// ([`Avx2::detect`]), which is what makes calling them safe.
#[derive(Clone, Copy)]
pub struct Avx2(());
impl Avx2 {
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Some(Avx2(()));
            }
        }
        None
    }
}
impl Kern for Avx2 {
    #[inline]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        return avx2::dot(a, b);
        #[cfg(not(target_arch = "x86_64"))]
        return dot_portable(a, b);
    }
    #[inline]
    fn l2(self, a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        return avx2::l2(a, b);
        #[cfg(not(target_arch = "x86_64"))]
        return l2_portable(a, b);
    }
    #[inline]
    fn scores_4xn(self, l2: bool, q: [&[f32]; 4], rows: &[&[f32]], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        avx2::scores_4xn(l2, q, rows, out);
        #[cfg(not(target_arch = "x86_64"))]
        Portable.scores_4xn(l2, q, rows, out);
    }
}

pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        for j in 0..8 {
            acc[j] += a[c * 8 + j] * b[c * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    s
}

pub fn l2_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        for j in 0..8 {
            let d = a[c * 8 + j] - b[c * 8 + j];
            acc[j] += d * d;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        let d = a[i] - b[i];
        s += d * d;
    }
    s
}

pub fn sq8_dot_portable(w: &[i16], codes: &[u8]) -> i32 {
    w.iter()
        .zip(codes)
        .map(|(&a, &c)| a as i32 * c as i32)
        .sum()
}

/// Code layout (see `quant`): blocks of 16 dimensions in 8 bytes; byte `i` of a block holds
/// dimension `i` in its low nibble and dimension `i + 8` in its high nibble.
#[inline]
fn nibble(codes: &[u8], d: usize) -> f32 {
    let block = d / 16;
    let r = d % 16;
    let byte = codes[block * 8 + (r % 8)];
    (if r < 8 { byte & 0x0f } else { byte >> 4 }) as f32
}

pub fn sq4_dot_portable(w: &[f32], codes: &[u8]) -> f32 {
    let n = (codes.len() * 2).min(w.len());
    w[..n]
        .iter()
        .enumerate()
        .map(|(d, x)| x * nibble(codes, d))
        .sum()
}

pub fn sq4_l2_portable(r: &[f32], step: &[f32], codes: &[u8]) -> f32 {
    let n = (codes.len() * 2).min(r.len()).min(step.len());
    (0..n)
        .map(|d| {
            let x = r[d] - step[d] * nibble(codes, d);
            x * x
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            let d1 = _mm256_sub_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
            );
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            acc1 = _mm256_fmadd_ps(d1, d1, acc1);
            i += 16;
        }
        if i + 8 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            let d = *pa.add(i) - *pb.add(i);
            s += d * d;
            i += 1;
        }
        s
    }

    /// Expand one 8-byte block into (low nibbles, high nibbles) as 2 x 8 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn unpack(p: *const u8) -> (__m256, __m256) {
        let bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
        let lo = _mm256_and_si256(bytes, _mm256_set1_epi32(0x0f));
        let hi = _mm256_srli_epi32(bytes, 4);
        (_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn sq4_dot_impl(w: &[f32], codes: &[u8]) -> f32 {
        let blocks = (codes.len() / 8).min(w.len() / 16);
        let (pw, pc) = (w.as_ptr(), codes.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        for b in 0..blocks {
            let (lo, hi) = unpack(pc.add(b * 8));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(b * 16)), lo, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(b * 16 + 8)), hi, acc1);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn sq4_l2_impl(r: &[f32], step: &[f32], codes: &[u8]) -> f32 {
        let blocks = (codes.len() / 8).min(r.len() / 16).min(step.len() / 16);
        let (pr, ps, pc) = (r.as_ptr(), step.as_ptr(), codes.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        for b in 0..blocks {
            let (lo, hi) = unpack(pc.add(b * 8));
            let d0 = _mm256_fnmadd_ps(
                _mm256_loadu_ps(ps.add(b * 16)),
                lo,
                _mm256_loadu_ps(pr.add(b * 16)),
            );
            let d1 = _mm256_fnmadd_ps(
                _mm256_loadu_ps(ps.add(b * 16 + 8)),
                hi,
                _mm256_loadu_ps(pr.add(b * 16 + 8)),
            );
            acc0 = _mm256_fmadd_ps(d0, d0, acc0);
            acc1 = _mm256_fmadd_ps(d1, d1, acc1);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    /// 4 queries x all rows, two rows at a time: 8 independent accumulators keep both FMA
    /// ports busy while each row chunk is loaded once for all four queries.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_4xn_impl<const L2: bool>(q: [&[f32]; 4], rows: &[&[f32]], out: &mut [f32]) {
        let nr = rows.len();
        assert!(out.len() >= 4 * nr);
        let n = q
            .iter()
            .map(|v| v.len())
            .chain(rows.iter().map(|v| v.len()))
            .min()
            .unwrap_or(0);
        let qp = [q[0].as_ptr(), q[1].as_ptr(), q[2].as_ptr(), q[3].as_ptr()];
        let mut r = 0;
        while r < nr {
            let r1 = (r + 1).min(nr - 1);
            let (x0, x1) = (rows[r].as_ptr(), rows[r1].as_ptr());
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut i = 0;
            while i + 8 <= n {
                let a = _mm256_loadu_ps(x0.add(i));
                let b = _mm256_loadu_ps(x1.add(i));
                for j in 0..4 {
                    let qv = _mm256_loadu_ps(qp[j].add(i));
                    if L2 {
                        let da = _mm256_sub_ps(qv, a);
                        let db = _mm256_sub_ps(qv, b);
                        acc[2 * j] = _mm256_fmadd_ps(da, da, acc[2 * j]);
                        acc[2 * j + 1] = _mm256_fmadd_ps(db, db, acc[2 * j + 1]);
                    } else {
                        acc[2 * j] = _mm256_fmadd_ps(qv, a, acc[2 * j]);
                        acc[2 * j + 1] = _mm256_fmadd_ps(qv, b, acc[2 * j + 1]);
                    }
                }
                i += 8;
            }
            let mut s = [0.0f32; 8];
            for (o, a) in s.iter_mut().zip(acc) {
                *o = hsum(a);
            }
            while i < n {
                for j in 0..4 {
                    let qv = *qp[j].add(i);
                    let (a, b) = (*x0.add(i), *x1.add(i));
                    if L2 {
                        s[2 * j] += (qv - a) * (qv - a);
                        s[2 * j + 1] += (qv - b) * (qv - b);
                    } else {
                        s[2 * j] += qv * a;
                        s[2 * j + 1] += qv * b;
                    }
                }
                i += 1;
            }
            for j in 0..4 {
                out[j * nr + r] = s[2 * j];
                if r + 1 < nr {
                    out[j * nr + r + 1] = s[2 * j + 1];
                }
            }
            r += 2;
        }
    }

    pub fn scores_4xn(l2: bool, q: [&[f32]; 4], rows: &[&[f32]], out: &mut [f32]) {
        // SAFETY: reached only through an `Avx2` value, which exists only after the
        // avx2/fma detection; reads stay below the shortest slice length, writes are
        // bounds-checked (`out` length asserted).
        unsafe {
            if l2 {
                scores_4xn_impl::<true>(q, rows, out)
            } else {
                scores_4xn_impl::<false>(q, rows, out)
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn sq8_dot_impl(w: &[i16], codes: &[u8]) -> i32 {
        let n = w.len().min(codes.len());
        let (pw, pc) = (w.as_ptr(), codes.as_ptr());
        let mut acc0 = _mm256_setzero_si256();
        let mut acc1 = _mm256_setzero_si256();
        let mut i = 0;
        while i + 32 <= n {
            let c0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(pc.add(i) as *const __m128i));
            let c1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(pc.add(i + 16) as *const __m128i));
            let w0 = _mm256_loadu_si256(pw.add(i) as *const __m256i);
            let w1 = _mm256_loadu_si256(pw.add(i + 16) as *const __m256i);
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(c0, w0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(c1, w1));
            i += 32;
        }
        let acc = _mm256_add_epi32(acc0, acc1);
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256(acc, 1),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        let mut t = _mm_cvtsi128_si32(s);
        while i < n {
            t += *pw.add(i) as i32 * *pc.add(i) as i32;
            i += 1;
        }
        t
    }

    // Safe entry points: only installed in `Kernels` after the CPU features were detected.
    pub fn sq8_dot(w: &[i16], codes: &[u8]) -> i32 {
        // SAFETY: selected only when avx2 and fma are available; reads stay below the
        // shorter slice's length.
        unsafe { sq8_dot_impl(w, codes) }
    }
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: selected only when avx2 and fma are available (Kernels::detect).
        unsafe { dot_impl(a, b) }
    }
    pub fn l2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as above.
        unsafe { l2_impl(a, b) }
    }
    pub fn sq4_dot(w: &[f32], codes: &[u8]) -> f32 {
        // SAFETY: as above; reads stay inside `blocks`, bounded by both slices.
        unsafe { sq4_dot_impl(w, codes) }
    }
    pub fn sq4_l2(r: &[f32], step: &[f32], codes: &[u8]) -> f32 {
        // SAFETY: as above.
        unsafe { sq4_l2_impl(r, step, codes) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn simd_and_portable_agree() {
        let k = Kernels::detect();
        let p = Kernels::portable();
        for n in [0usize, 1, 7, 8, 15, 16, 17, 33, 100, 384, 385] {
            let a = data(n, 1);
            let b = data(n, 2);
            let (d1, d2) = ((k.dot)(&a, &b), (p.dot)(&a, &b));
            assert!(
                (d1 - d2).abs() <= 1e-4 * (1.0 + d2.abs()),
                "dot n={n}: {d1} vs {d2}"
            );
            let (l1, l2) = ((k.l2)(&a, &b), (p.l2)(&a, &b));
            assert!(
                (l1 - l2).abs() <= 1e-4 * (1.0 + l2.abs()),
                "l2 n={n}: {l1} vs {l2}"
            );
        }
    }

    #[test]
    fn sq4_simd_and_portable_agree() {
        let k = Kernels::detect();
        let p = Kernels::portable();
        for padded in [16usize, 32, 384] {
            let w = data(padded, 3);
            let st = data(padded, 4);
            let codes: Vec<u8> = (0..padded / 2).map(|i| (i * 37 % 256) as u8).collect();
            let (a, b) = ((k.sq4_dot)(&w, &codes), (p.sq4_dot)(&w, &codes));
            assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
            let (a, b) = ((k.sq4_l2)(&w, &st, &codes), (p.sq4_l2)(&w, &st, &codes));
            assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn sq8_simd_and_portable_agree() {
        let k = Kernels::detect();
        for n in [0usize, 5, 32, 33, 64, 96, 384, 400] {
            let w: Vec<i16> = data(n, 5).iter().map(|x| (x * 8000.0) as i16).collect();
            let c: Vec<u8> = data(n, 6)
                .iter()
                .map(|x| ((x + 1.0) * 127.0) as u8)
                .collect();
            assert_eq!((k.sq8_dot)(&w, &c), sq8_dot_portable(&w, &c), "n={n}");
            #[cfg(target_arch = "x86_64")]
            if Avx2::detect().is_some() {
                assert_eq!(
                    avx2::sq8_dot(&w, &c),
                    sq8_dot_portable(&w, &c),
                    "avx2 n={n}"
                );
            }
        }
    }

    #[test]
    fn block_kernel_matches_single() {
        if let Some(k) = Avx2::detect() {
            for n in [1usize, 8, 13, 384] {
                let qs: Vec<Vec<f32>> = (0..4).map(|s| data(n, 10 + s)).collect();
                let xs: Vec<Vec<f32>> = (0..2).map(|s| data(n, 20 + s)).collect();
                let q = [&qs[0][..], &qs[1][..], &qs[2][..], &qs[3][..]];
                for l2 in [false, true] {
                    for rows in [&[&xs[0][..]][..], &[&xs[0][..], &xs[1][..], &xs[0][..]][..]] {
                        let (mut a, mut b) = (vec![0.0; 4 * rows.len()], vec![0.0; 4 * rows.len()]);
                        k.scores_4xn(l2, q, rows, &mut a);
                        Portable.scores_4xn(l2, q, rows, &mut b);
                        for (x, y) in a.iter().zip(b) {
                            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn exact_values() {
        let p = Kernels::detect();
        assert_eq!((p.dot)(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
        assert_eq!((p.l2)(&[1.0, 2.0], &[4.0, 6.0]), 25.0);
    }
}
