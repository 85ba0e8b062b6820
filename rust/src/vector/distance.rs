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

/// The kernels this CPU runs, picked once per index.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub dot: Kernel,
    pub l2: Kernel,
    pub sq4_dot: Sq4DotKernel,
    pub sq4_l2: Sq4L2Kernel,
    pub name: &'static str,
}

impl Kernels {
    pub fn portable() -> Self {
        Kernels {
            dot: dot_portable,
            l2: l2_portable,
            sq4_dot: sq4_dot_portable,
            sq4_l2: sq4_l2_portable,
            name: "portable",
        }
    }

    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Kernels {
                    dot: avx2::dot,
                    l2: avx2::l2,
                    sq4_dot: avx2::sq4_dot,
                    sq4_l2: avx2::sq4_l2,
                    name: "avx2+fma",
                };
            }
        }
        Self::portable()
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

    // Safe entry points: only installed in `Kernels` after the CPU features were detected.
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
    fn exact_values() {
        let p = Kernels::detect();
        assert_eq!((p.dot)(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
        assert_eq!((p.l2)(&[1.0, 2.0], &[4.0, 6.0]), 25.0);
    }
}
