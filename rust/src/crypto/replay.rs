//! Replay protection: a timestamp window plus the ids accepted within it.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// First time seen, inside the window: accept.
    Fresh,
    /// Seen before: a retry or a replay. Do not apply it again.
    Duplicate,
    /// Older than the window (or too far in the future): reject.
    Stale,
}

/// Remembers accepted ids until they fall out of the window, so memory stays bounded by
/// the message rate times the window.
pub struct ReplayGuard {
    window_ns: u64,
    seen: HashMap<[u8; 16], u64>,
    order: VecDeque<(u64, [u8; 16])>,
}

impl ReplayGuard {
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn prune(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(self.window_ns);
        while let Some(&(ts, id)) = self.order.front() {
            if ts >= cutoff {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&id) == Some(&ts) {
                self.seen.remove(&id);
            }
        }
    }

    /// Classify a message and, when fresh, remember it.
    pub fn check(&mut self, id: [u8; 16], ts_ns: u64, now_ns: u64) -> Freshness {
        self.prune(now_ns);
        if ts_ns.saturating_add(self.window_ns) < now_ns
            || ts_ns > now_ns.saturating_add(self.window_ns)
        {
            return Freshness::Stale;
        }
        if self.seen.contains_key(&id) {
            return Freshness::Duplicate;
        }
        self.seen.insert(id, ts_ns);
        // Messages arrive nearly in timestamp order; keep the queue sorted cheaply.
        if self.order.back().is_none_or(|&(last, _)| last <= ts_ns) {
            self.order.push_back((ts_ns, id));
        } else {
            let at = self.order.partition_point(|&(t, _)| t <= ts_ns);
            self.order.insert(at, (ts_ns, id));
        }
        Freshness::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_duplicate_stale_and_expiry() {
        let s = 1_000_000_000u64;
        let mut g = ReplayGuard::new(30 * s);
        assert_eq!(g.check([1; 16], 100 * s, 100 * s), Freshness::Fresh);
        assert_eq!(g.check([1; 16], 100 * s, 101 * s), Freshness::Duplicate);
        assert_eq!(g.check([2; 16], 60 * s, 101 * s), Freshness::Stale);
        assert_eq!(g.check([3; 16], 200 * s, 101 * s), Freshness::Stale);
        // after the window the id is forgotten, and the old timestamp is now stale
        assert_eq!(g.check([4; 16], 140 * s, 140 * s), Freshness::Fresh);
        assert_eq!(g.len(), 1);
        assert_eq!(g.check([1; 16], 100 * s, 140 * s), Freshness::Stale);
    }

    #[test]
    fn out_of_order_timestamps_are_kept_sorted() {
        let s = 1_000_000_000u64;
        let mut g = ReplayGuard::new(10 * s);
        for t in [5u64, 3, 9, 1, 7] {
            assert_eq!(g.check([t as u8; 16], t * s, 10 * s), Freshness::Fresh);
        }
        assert_eq!(g.check([0; 16], 12 * s, 12 * s), Freshness::Fresh);
        // 1s and 2s-old ones fell out of [2s, 12s]
        assert_eq!(g.len(), 5);
    }
}
