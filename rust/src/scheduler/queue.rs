//! The ready queue: queued tasks ordered by (virtual deadline, submission sequence).
//!
//! A B-tree map gives O(log n) insert, remove (for cancel and placement) and "next after a
//! cursor" (for a scan that skips tasks that do not fit).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

use super::LEVELS;

/// The virtual deadline of a task: `enqueue + level * aging_s` (seconds).
pub fn virtual_deadline(enqueue: f64, level: u8, aging_s: f64) -> f64 {
    enqueue + f64::from(level) * aging_s
}

/// Order of a queued task: earliest deadline first, then earliest submission.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    pub deadline: f64,
    pub seq: u64,
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.deadline
            .total_cmp(&other.deadline)
            .then(self.seq.cmp(&other.seq))
    }
}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Key {}

/// Queued task ids by [`Key`], with a count per priority level.
#[derive(Default, Debug)]
pub struct ReadyQueue {
    map: BTreeMap<Key, u64>,
    by_level: [usize; LEVELS],
}

impl ReadyQueue {
    pub fn insert(&mut self, key: Key, id: u64, level: u8) {
        if self.map.insert(key, id).is_none() {
            self.by_level[usize::from(level)] += 1;
        }
    }

    pub fn remove(&mut self, key: &Key, level: u8) -> bool {
        let found = self.map.remove(key).is_some();
        if found {
            self.by_level[usize::from(level)] -= 1;
        }
        found
    }

    /// The first entry strictly after `cursor` (or the first entry).
    pub fn next_after(&self, cursor: Option<Key>) -> Option<(Key, u64)> {
        let mut range = match cursor {
            None => self.map.range(..),
            Some(c) => self.map.range((Bound::Excluded(c), Bound::Unbounded)),
        };
        range.next().map(|(k, v)| (*k, *v))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn by_level(&self) -> [usize; LEVELS] {
        self.by_level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_deadline_then_sequence() {
        let mut q = ReadyQueue::default();
        q.insert(
            Key {
                deadline: 2.0,
                seq: 0,
            },
            10,
            2,
        );
        q.insert(
            Key {
                deadline: 1.0,
                seq: 1,
            },
            11,
            1,
        );
        q.insert(
            Key {
                deadline: 1.0,
                seq: 2,
            },
            12,
            1,
        );
        let mut order = vec![];
        let mut cur = None;
        while let Some((k, id)) = q.next_after(cur) {
            order.push(id);
            cur = Some(k);
        }
        assert_eq!(order, vec![11, 12, 10]);
        assert_eq!(q.by_level(), [0, 2, 1, 0, 0]);
        assert!(q.remove(
            &Key {
                deadline: 1.0,
                seq: 2
            },
            1
        ));
        assert!(!q.remove(
            &Key {
                deadline: 1.0,
                seq: 2
            },
            1
        ));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn aging_lets_old_low_priority_win() {
        // BATCH enqueued at 0 vs CRITICAL enqueued at 21 with aging 5: 20 < 21.
        assert!(virtual_deadline(0.0, 4, 5.0) < virtual_deadline(21.0, 0, 5.0));
        assert!(virtual_deadline(0.0, 4, 5.0) > virtual_deadline(19.0, 0, 5.0));
    }
}
