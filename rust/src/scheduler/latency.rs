//! A log-linear latency histogram (HDR-style): exact below 64 ns, then 32 sub-buckets per
//! power of two (~3% relative resolution), capped at 2^40 ns. Recording is O(1).

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const MAX_BITS: u32 = 40;
const BUCKETS: usize = 2 * SUB + (MAX_BITS - SUB_BITS - 1) as usize * SUB;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

fn index(v: u64) -> usize {
    let v = v.min((1u64 << MAX_BITS) - 1);
    if v < (2 * SUB) as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = ((v >> shift) as usize) & (SUB - 1);
    2 * SUB + (msb - SUB_BITS - 1) as usize * SUB + sub
}

/// (lower bound, width) of a bucket, in ns.
fn bounds(i: usize) -> (u64, u64) {
    if i < 2 * SUB {
        return (i as u64, 1);
    }
    let k = i - 2 * SUB;
    let e = (k / SUB) as u32 + 1;
    let sub = (k % SUB) as u64;
    ((SUB as u64 + sub) << e, 1u64 << e)
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
        self.total += 1;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1) in ns: the middle of its bucket; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, w) = bounds(i);
                return lo as f64 + (w as f64 - 1.0) / 2.0;
            }
        }
        bounds(BUCKETS - 1).0 as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values() {
        for v in [
            0u64,
            1,
            63,
            64,
            65,
            127,
            128,
            1000,
            123_456,
            1 << 39,
            u64::MAX,
        ] {
            let i = index(v);
            let (lo, w) = bounds(i);
            let vc = v.min((1 << MAX_BITS) - 1);
            assert!(lo <= vc && vc < lo + w, "v={v} i={i} lo={lo} w={w}");
        }
        assert_eq!(index((1 << MAX_BITS) - 1), BUCKETS - 1);
    }

    #[test]
    fn quantiles_within_resolution() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 100);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.04, "{p50}");
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.04, "{p99}");
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
    }
}
