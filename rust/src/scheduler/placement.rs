//! Slot choice: placement strategies, load balancing, preemption plans and reservations.
//! Pure functions over the slot states; the caller applies the result.

use std::collections::BTreeSet;

use super::{SchedulerError, CRITICAL, LEVELS};

/// Slack for float comparisons, relative to a slot's capacity.
const EPS: f64 = 1e-9;

fn slack(cap: f64) -> f64 {
    EPS * cap.max(1.0)
}

/// How the slot for a task is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    FirstFit,
    BestFit,
    /// Best fit, with `critical_reserve` of every slot usable by CRITICAL tasks only.
    Priority,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Self, SchedulerError> {
        match s {
            "first_fit" => Ok(Self::FirstFit),
            "best_fit" => Ok(Self::BestFit),
            "priority" => Ok(Self::Priority),
            other => Err(SchedulerError::BadOption {
                option: "strategy",
                expected: "\"first_fit\", \"best_fit\" or \"priority\"",
                got: format!("{other:?}"),
            }),
        }
    }
}

/// How ties between equally good slots are broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balancing {
    LeastLoaded,
    RoundRobin,
    Weighted,
}

impl Balancing {
    pub fn parse(s: &str) -> Result<Self, SchedulerError> {
        match s {
            "least_loaded" => Ok(Self::LeastLoaded),
            "round_robin" => Ok(Self::RoundRobin),
            "weighted" => Ok(Self::Weighted),
            other => Err(SchedulerError::BadOption {
                option: "balancing",
                expected: "\"least_loaded\", \"round_robin\" or \"weighted\"",
                got: format!("{other:?}"),
            }),
        }
    }
}

/// A running task on a slot, ordered by (level, start sequence); iterating in reverse gives
/// the preferred victims first: lowest priority, then most recently started.
pub type RunKey = (u8, u64, u64);

/// What a task asks for.
#[derive(Clone, Copy, Debug)]
pub struct Demand {
    pub level: u8,
    pub mem: f64,
    pub cpu: f64,
}

impl Demand {
    fn is_zero(&self) -> bool {
        self.mem <= 0.0 && self.cpu <= 0.0
    }
}

/// A worker slot and what runs on it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub id: String,
    pub memory_mb: f64,
    pub cpu_cores: f64,
    pub weight: f64,
    pub mem_used: f64,
    pub cpu_used: f64,
    pub running: BTreeSet<RunKey>,
}

impl SlotState {
    pub fn new(id: String, memory_mb: f64, cpu_cores: f64, weight: f64) -> Self {
        Self {
            id,
            memory_mb,
            cpu_cores,
            weight,
            mem_used: 0.0,
            cpu_used: 0.0,
            running: BTreeSet::new(),
        }
    }

    /// Capacity usable by a task, with `reserve` (a fraction) held back.
    pub fn cap(&self, reserve: f64) -> (f64, f64) {
        (
            self.memory_mb * (1.0 - reserve),
            self.cpu_cores * (1.0 - reserve),
        )
    }

    /// Would `d` fit now, with `reserve` held back?
    pub fn fits(&self, d: &Demand, reserve: f64) -> bool {
        let (cm, cc) = self.cap(reserve);
        self.mem_used + d.mem <= cm + slack(self.memory_mb)
            && self.cpu_used + d.cpu <= cc + slack(self.cpu_cores)
    }

    /// Would `d` fit on this slot when it is empty?
    pub fn could_ever_fit(&self, d: &Demand, reserve: f64) -> bool {
        let (cm, cc) = self.cap(reserve);
        d.mem <= cm + slack(self.memory_mb) && d.cpu <= cc + slack(self.cpu_cores)
    }

    /// Utilisation: the larger of the memory and CPU fractions in use.
    pub fn utilisation(&self) -> f64 {
        let m = if self.memory_mb > 0.0 {
            self.mem_used / self.memory_mb
        } else {
            0.0
        };
        let c = if self.cpu_cores > 0.0 {
            self.cpu_used / self.cpu_cores
        } else {
            0.0
        };
        m.max(c)
    }

    pub fn add(&mut self, key: RunKey, mem: f64, cpu: f64) {
        self.running.insert(key);
        self.mem_used += mem;
        self.cpu_used += cpu;
    }

    pub fn release(&mut self, key: &RunKey, mem: f64, cpu: f64) {
        self.running.remove(key);
        if self.running.is_empty() {
            // Reset exactly, so float drift never accumulates across many tasks.
            self.mem_used = 0.0;
            self.cpu_used = 0.0;
        } else {
            self.mem_used = (self.mem_used - mem).max(0.0);
            self.cpu_used = (self.cpu_used - cpu).max(0.0);
        }
    }
}

/// The placement policy and its small mutable state (round-robin cursor, scratch buffer).
#[derive(Debug, Clone)]
pub struct Placer {
    pub strategy: Strategy,
    pub balancing: Balancing,
    pub critical_reserve: f64,
    rr: usize,
    scratch: Vec<(usize, f64)>,
}

impl Placer {
    pub fn new(strategy: Strategy, balancing: Balancing, critical_reserve: f64) -> Self {
        Self {
            strategy,
            balancing,
            critical_reserve,
            rr: 0,
            scratch: Vec::new(),
        }
    }

    /// The fraction of each slot held back from a task of `level`.
    pub fn reserve_for(&self, level: u8) -> f64 {
        if self.strategy == Strategy::Priority && level != CRITICAL {
            self.critical_reserve
        } else {
            0.0
        }
    }

    /// Leftover room after placing `d` (best-fit score), normalised by the pool's largest
    /// capacity per resource; only resources the task asks for count.
    fn leftover(s: &SlotState, d: &Demand, reserve: f64, scale: (f64, f64)) -> f64 {
        let (cm, cc) = s.cap(reserve);
        let mut score = 0.0;
        if d.mem > 0.0 {
            score += (cm - s.mem_used - d.mem) / scale.0;
        }
        if d.cpu > 0.0 {
            score += (cc - s.cpu_used - d.cpu) / scale.1;
        }
        score
    }

    /// The slot for `d` now, skipping `blocked` slots; `None` if it fits nowhere.
    pub fn choose(
        &mut self,
        slots: &[SlotState],
        blocked: &[bool],
        d: &Demand,
        affinity: Option<usize>,
        scale: (f64, f64),
    ) -> Option<usize> {
        let reserve = self.reserve_for(d.level);
        let mut cands = std::mem::take(&mut self.scratch);
        cands.clear();
        let mut best = f64::INFINITY;
        for (i, s) in slots.iter().enumerate() {
            if blocked[i] || !s.fits(d, reserve) {
                continue;
            }
            if self.strategy == Strategy::FirstFit && !d.is_zero() {
                self.scratch = cands;
                return Some(i);
            }
            let score = match self.strategy {
                Strategy::FirstFit => 0.0,
                _ => Self::leftover(s, d, reserve, scale),
            };
            best = best.min(score);
            cands.push((i, score));
        }
        cands.retain(|&(_, sc)| sc <= best + EPS);
        let chosen = if cands.is_empty() {
            None
        } else if let Some(a) = affinity.filter(|a| cands.iter().any(|&(i, _)| i == *a)) {
            Some(a)
        } else {
            Some(self.balance(slots, &cands))
        };
        self.scratch = cands;
        chosen
    }

    fn balance(&mut self, slots: &[SlotState], cands: &[(usize, f64)]) -> usize {
        let idx = cands.iter().map(|&(i, _)| i);
        match self.balancing {
            Balancing::LeastLoaded => idx
                .min_by(|&a, &b| {
                    let (sa, sb) = (&slots[a], &slots[b]);
                    sa.utilisation()
                        .total_cmp(&sb.utilisation())
                        .then(sa.running.len().cmp(&sb.running.len()))
                        .then(a.cmp(&b))
                })
                .expect("candidates are not empty"),
            Balancing::RoundRobin => {
                let n = slots.len();
                let rr = self.rr % n.max(1);
                let c = idx
                    .min_by_key(|&i| (i + n - rr) % n)
                    .expect("candidates are not empty");
                self.rr = (c + 1) % n;
                c
            }
            Balancing::Weighted => idx
                .min_by(|&a, &b| {
                    let (sa, sb) = (&slots[a], &slots[b]);
                    let la = (sa.running.len() as f64 + 1.0) / sa.weight;
                    let lb = (sb.running.len() as f64 + 1.0) / sb.weight;
                    la.total_cmp(&lb)
                        .then(sa.utilisation().total_cmp(&sb.utilisation()))
                        .then(a.cmp(&b))
                })
                .expect("candidates are not empty"),
        }
    }

    /// Keep the round-robin cursor valid after slot `removed` left the pool.
    pub fn slot_removed(&mut self, removed: usize, remaining: usize) {
        if self.rr > removed {
            self.rr -= 1;
        }
        if self.rr >= remaining {
            self.rr = 0;
        }
    }

    /// The fewest strictly-lower-priority tasks to evict on one slot so that `d` fits.
    /// `victim` gives (memory, cpu) of a running task that may be evicted, `None` if it
    /// may not (the caller's aging rule).
    pub fn preempt_plan(
        &self,
        slots: &[SlotState],
        blocked: &[bool],
        d: &Demand,
        victim: impl Fn(u64) -> Option<(f64, f64)>,
    ) -> Option<(usize, Vec<RunKey>)> {
        let reserve = self.reserve_for(d.level);
        let mut best: Option<(usize, usize, usize, Vec<RunKey>)> = None;
        for (i, s) in slots.iter().enumerate() {
            if blocked[i] || !s.could_ever_fit(d, reserve) {
                continue;
            }
            let (cm, cc) = s.cap(reserve);
            let need_m = s.mem_used + d.mem - cm - slack(s.memory_mb);
            let need_c = s.cpu_used + d.cpu - cc - slack(s.cpu_cores);
            let done = |fm: f64, fc: f64| fm >= need_m && fc >= need_c;
            let (mut fm, mut fc) = (0.0, 0.0);
            let mut victims: Vec<(RunKey, f64, f64)> = Vec::new();
            for &rk in s.running.iter().rev() {
                if done(fm, fc) || rk.0 <= d.level {
                    break;
                }
                let Some((vm, vc)) = victim(rk.2) else {
                    continue;
                };
                let helps = (need_m > fm && vm > 0.0) || (need_c > fc && vc > 0.0);
                if helps {
                    fm += vm;
                    fc += vc;
                    victims.push((rk, vm, vc));
                }
            }
            if !done(fm, fc) || victims.is_empty() {
                continue;
            }
            // Drop victims that turned out unnecessary, higher priorities first.
            let mut j = victims.len();
            while j > 0 {
                j -= 1;
                let (_, vm, vc) = victims[j];
                if done(fm - vm, fc - vc) {
                    fm -= vm;
                    fc -= vc;
                    victims.remove(j);
                }
            }
            // Fewer victims first, then victims of lower priority.
            let weight: usize = victims
                .iter()
                .map(|(rk, _, _)| LEVELS - usize::from(rk.0))
                .sum();
            let better = match &best {
                None => true,
                Some((_, n, w, _)) => (victims.len(), weight) < (*n, *w),
            };
            if better {
                let n = victims.len();
                let keys = victims.into_iter().map(|(rk, _, _)| rk).collect();
                best = Some((i, n, weight, keys));
            }
        }
        best.map(|(i, _, _, v)| (i, v))
    }

    /// The slot a starving task reserves: one it fits when empty, closest to fitting now.
    pub fn reservation(
        &self,
        slots: &[SlotState],
        blocked: &[bool],
        d: &Demand,
        scale: (f64, f64),
    ) -> Option<usize> {
        let reserve = self.reserve_for(d.level);
        slots
            .iter()
            .enumerate()
            .filter(|(i, s)| !blocked[*i] && s.could_ever_fit(d, reserve))
            .map(|(i, s)| {
                let (cm, cc) = s.cap(reserve);
                let short = (s.mem_used + d.mem - cm).max(0.0) / scale.0
                    + (s.cpu_used + d.cpu - cc).max(0.0) / scale.1;
                (i, short)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(spec: &[(f64, f64)]) -> Vec<SlotState> {
        spec.iter()
            .enumerate()
            .map(|(i, &(m, c))| SlotState::new(format!("s{i}"), m, c, 1.0))
            .collect()
    }

    const D: fn(f64, f64) -> Demand = |mem, cpu| Demand { level: 2, mem, cpu };

    #[test]
    fn first_fit_and_best_fit() {
        let mut slots = pool(&[(100.0, 4.0), (50.0, 4.0)]);
        slots[0].mem_used = 20.0;
        let blocked = [false, false];
        let mut ff = Placer::new(Strategy::FirstFit, Balancing::LeastLoaded, 0.0);
        assert_eq!(
            ff.choose(&slots, &blocked, &D(40.0, 0.0), None, (100.0, 4.0)),
            Some(0)
        );
        let mut bf = Placer::new(Strategy::BestFit, Balancing::LeastLoaded, 0.0);
        assert_eq!(
            bf.choose(&slots, &blocked, &D(40.0, 0.0), None, (100.0, 4.0)),
            Some(1)
        );
        assert_eq!(
            bf.choose(&slots, &blocked, &D(60.0, 0.0), None, (100.0, 4.0)),
            Some(0)
        );
        assert_eq!(
            bf.choose(&slots, &blocked, &D(90.0, 0.0), None, (100.0, 4.0)),
            None
        );
        assert_eq!(
            bf.choose(&slots, &[true, false], &D(60.0, 0.0), None, (100.0, 4.0)),
            None
        );
    }

    #[test]
    fn priority_reserve_only_for_critical() {
        let slots = pool(&[(100.0, 1.0)]);
        let mut p = Placer::new(Strategy::Priority, Balancing::LeastLoaded, 0.2);
        let normal = D(90.0, 0.0);
        let critical = Demand { level: 0, ..normal };
        assert_eq!(
            p.choose(&slots, &[false], &normal, None, (100.0, 1.0)),
            None
        );
        assert_eq!(
            p.choose(&slots, &[false], &critical, None, (100.0, 1.0)),
            Some(0)
        );
    }

    #[test]
    fn round_robin_and_weighted() {
        let mut slots = pool(&[(1.0, 1.0), (1.0, 1.0), (1.0, 1.0)]);
        let b = [false; 3];
        let mut rr = Placer::new(Strategy::BestFit, Balancing::RoundRobin, 0.0);
        let got: Vec<_> = (0..6)
            .map(|_| {
                rr.choose(&slots, &b, &D(0.0, 0.0), None, (1.0, 1.0))
                    .unwrap()
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
        slots[0].weight = 2.0;
        let mut w = Placer::new(Strategy::BestFit, Balancing::Weighted, 0.0);
        let mut n = [0usize; 3];
        for k in 0..40u64 {
            let i = w
                .choose(&slots, &b, &D(0.0, 0.0), None, (1.0, 1.0))
                .unwrap();
            slots[i].running.insert((2, k, k));
            n[i] += 1;
        }
        assert_eq!(n, [20, 10, 10]);
    }

    #[test]
    fn preemption_prefers_lowest_then_newest() {
        let mut slots = pool(&[(100.0, 10.0)]);
        // (level, start, id): two batch tasks and one low, 30 MB each.
        for (lvl, start, id) in [(4u8, 1u64, 1u64), (4, 2, 2), (3, 3, 3)] {
            slots[0].add((lvl, start, id), 30.0, 0.0);
        }
        let p = Placer::new(Strategy::BestFit, Balancing::LeastLoaded, 0.0);
        let high = Demand {
            level: 1,
            mem: 40.0,
            cpu: 0.0,
        };
        let (slot, v) = p
            .preempt_plan(&slots, &[false], &high, |_| Some((30.0, 0.0)))
            .unwrap();
        assert_eq!(slot, 0);
        assert_eq!(v, vec![(4, 2, 2)]); // newest batch task; 10 free + 30 freed >= 40
        let batch = Demand {
            level: 4,
            mem: 40.0,
            cpu: 0.0,
        };
        assert!(p
            .preempt_plan(&slots, &[false], &batch, |_| Some((30.0, 0.0)))
            .is_none());
    }
}
