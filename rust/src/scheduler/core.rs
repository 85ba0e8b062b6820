//! The scheduler state machine: tasks (queued or running), the slot pool, the clock and the
//! decision loop. See the module docs of [`super`] for the rules.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::latency::Histogram;
use super::placement::{Balancing, Demand, Placer, RunKey, SlotState, Strategy};
use super::queue::{virtual_deadline, Key, ReadyQueue};
use super::{Result, SchedulerError, LEVELS, LEVEL_NAMES, LOOKAHEAD};

/// Scheduler options (validated by [`Scheduler::new`]).
#[derive(Clone, Debug)]
pub struct Config {
    pub strategy: Strategy,
    pub balancing: Balancing,
    pub aging_s: f64,
    pub critical_reserve: f64,
    pub preemption: bool,
}

/// A task to submit: id, level (0..=4), memory MB, CPU cores, affinity group (0 = none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskSpec {
    pub id: u64,
    pub level: i64,
    pub memory_mb: f64,
    pub cpu_cores: f64,
    pub group: u64,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Queued,
    Running { slot: usize, start: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Task {
    level: u8,
    mem: f64,
    cpu: f64,
    group: u64,
    key: Key,
    state: State,
}

impl Task {
    fn demand(&self) -> Demand {
        Demand {
            level: self.level,
            mem: self.mem,
            cpu: self.cpu,
        }
    }
}

/// One placement: the task, the slot index, and the tasks evicted to make room.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    pub task_id: u64,
    pub slot: usize,
    pub preempted: Vec<u64>,
}

/// Usage of one slot, for status.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotUsage {
    pub id: String,
    pub memory_mb_used: f64,
    pub memory_mb: f64,
    pub cpu_used: f64,
    pub cpu_cores: f64,
    pub running: usize,
}

/// A snapshot for status().
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub queued: [usize; LEVELS],
    pub running: usize,
    pub slots: Vec<SlotUsage>,
    pub decisions: u64,
    pub decision_p50_us: f64,
    pub decision_p99_us: f64,
    pub preemptions: u64,
}

pub struct Scheduler {
    cfg: Config,
    placer: Placer,
    slots: Vec<SlotState>,
    scale: (f64, f64),
    tasks: HashMap<u64, Task>,
    queue: ReadyQueue,
    running: usize,
    next_seq: u64,
    next_start: u64,
    epoch: Instant,
    clock: Option<f64>,
    hist: Histogram,
    decisions: u64,
    preemptions: u64,
    affinity: HashMap<u64, usize>,
}

fn finite_nonneg(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

fn check_slot(id: &str, memory_mb: f64, cpu_cores: f64, weight: f64) -> Result<()> {
    let bad = |field, expected, got: String| SchedulerError::BadSlot {
        slot: id.to_string(),
        field,
        expected,
        got,
    };
    if id.is_empty() {
        return Err(bad("id", "a non-empty string", "\"\"".into()));
    }
    if !finite_nonneg(memory_mb) {
        return Err(bad(
            "memory_mb",
            "a finite number >= 0",
            memory_mb.to_string(),
        ));
    }
    if !finite_nonneg(cpu_cores) {
        return Err(bad(
            "cpu_cores",
            "a finite number >= 0",
            cpu_cores.to_string(),
        ));
    }
    if !(weight.is_finite() && weight > 0.0) {
        return Err(bad("weight", "a finite number > 0", weight.to_string()));
    }
    Ok(())
}

impl Scheduler {
    /// A scheduler over `slots` (id, memory MB, CPU cores, weight).
    pub fn new(slots: Vec<(String, f64, f64, f64)>, cfg: Config) -> Result<Self> {
        if !(cfg.aging_s.is_finite() && cfg.aging_s > 0.0) {
            return Err(SchedulerError::BadOption {
                option: "aging_s",
                expected: "a finite number of seconds > 0",
                got: cfg.aging_s.to_string(),
            });
        }
        if !(cfg.critical_reserve.is_finite() && (0.0..1.0).contains(&cfg.critical_reserve)) {
            return Err(SchedulerError::BadOption {
                option: "critical_reserve",
                expected: "a fraction in [0, 1)",
                got: cfg.critical_reserve.to_string(),
            });
        }
        let mut s = Self {
            placer: Placer::new(cfg.strategy, cfg.balancing, cfg.critical_reserve),
            cfg,
            slots: Vec::new(),
            scale: (1.0, 1.0),
            tasks: HashMap::new(),
            queue: ReadyQueue::default(),
            running: 0,
            next_seq: 0,
            next_start: 0,
            epoch: Instant::now(),
            clock: None,
            hist: Histogram::default(),
            decisions: 0,
            preemptions: 0,
            affinity: HashMap::new(),
        };
        for (id, m, c, w) in slots {
            s.add_slot(id, m, c, w)?;
        }
        Ok(s)
    }

    // ------------------------------------------------------------ clock

    /// Seconds on the scheduler clock: monotonic since creation, or the injected value.
    pub fn now(&self) -> f64 {
        self.clock
            .unwrap_or_else(|| self.epoch.elapsed().as_secs_f64())
    }

    /// Fix the clock at `now` seconds (tests), or go back to the monotonic clock (`None`).
    pub fn set_clock(&mut self, now: Option<f64>) {
        self.clock = now;
    }

    // ------------------------------------------------------------ slots

    fn rescale(&mut self) {
        let m = self.slots.iter().map(|s| s.memory_mb).fold(0.0, f64::max);
        let c = self.slots.iter().map(|s| s.cpu_cores).fold(0.0, f64::max);
        self.scale = (m.max(1e-9), c.max(1e-9));
    }

    pub fn add_slot(
        &mut self,
        id: String,
        memory_mb: f64,
        cpu_cores: f64,
        weight: f64,
    ) -> Result<()> {
        check_slot(&id, memory_mb, cpu_cores, weight)?;
        if self.slots.iter().any(|s| s.id == id) {
            return Err(SchedulerError::DuplicateSlot(id));
        }
        self.slots
            .push(SlotState::new(id, memory_mb, cpu_cores, weight));
        self.rescale();
        Ok(())
    }

    /// Remove a slot; its running tasks go back to the queue (oldest start first), and
    /// their ids are returned. Queued tasks stay queued even if no slot can hold them now.
    pub fn remove_slot(&mut self, id: &str) -> Result<Vec<u64>> {
        let idx = self
            .slots
            .iter()
            .position(|s| s.id == id)
            .ok_or_else(|| SchedulerError::UnknownSlot(id.to_string()))?;
        let mut on_slot: Vec<RunKey> = self.slots[idx].running.iter().copied().collect();
        on_slot.sort_by_key(|rk| rk.1);
        let ids: Vec<u64> = on_slot.iter().map(|rk| rk.2).collect();
        for &tid in &ids {
            self.unrun(tid);
        }
        self.slots.remove(idx);
        for t in self.tasks.values_mut() {
            if let State::Running { slot, .. } = &mut t.state {
                if *slot > idx {
                    *slot -= 1;
                }
            }
        }
        self.affinity.retain(|_, s| *s != idx);
        for s in self.affinity.values_mut() {
            if *s > idx {
                *s -= 1;
            }
        }
        self.placer.slot_removed(idx, self.slots.len());
        self.rescale();
        Ok(ids)
    }

    pub fn slot_id(&self, idx: usize) -> &str {
        &self.slots[idx].id
    }

    #[cfg(test)]
    pub fn slot_ids(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.id.clone()).collect()
    }

    // ------------------------------------------------------------ tasks

    fn check(&self, t: &TaskSpec) -> Result<u8> {
        if self.tasks.contains_key(&t.id) {
            return Err(SchedulerError::DuplicateTask(t.id));
        }
        let level = u8::try_from(t.level)
            .ok()
            .filter(|l| usize::from(*l) < LEVELS)
            .ok_or_else(|| SchedulerError::BadPriority(t.level.to_string()))?;
        for (field, v) in [("memory_mb", t.memory_mb), ("cpu_cores", t.cpu_cores)] {
            if !finite_nonneg(v) {
                return Err(SchedulerError::BadDemand {
                    task_id: t.id,
                    field,
                    got: v.to_string(),
                });
            }
        }
        let d = Demand {
            level,
            mem: t.memory_mb,
            cpu: t.cpu_cores,
        };
        let reserve = self.placer.reserve_for(level);
        if !self.slots.iter().any(|s| s.could_ever_fit(&d, reserve)) {
            return Err(SchedulerError::Impossible {
                task_id: t.id,
                memory_mb: t.memory_mb,
                cpu_cores: t.cpu_cores,
                level: LEVEL_NAMES[usize::from(level)],
            });
        }
        Ok(level)
    }

    fn enqueue(&mut self, t: &TaskSpec, level: u8, now: f64) {
        let key = Key {
            deadline: virtual_deadline(now, level, self.cfg.aging_s),
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.queue.insert(key, t.id, level);
        self.tasks.insert(
            t.id,
            Task {
                level,
                mem: t.memory_mb,
                cpu: t.cpu_cores,
                group: t.group,
                key,
                state: State::Queued,
            },
        );
    }

    pub fn submit(&mut self, t: TaskSpec) -> Result<()> {
        let level = self.check(&t)?;
        let now = self.now();
        self.enqueue(&t, level, now);
        Ok(())
    }

    /// Submit a batch, all or nothing: every entry is checked before any is queued.
    pub fn submit_many(&mut self, batch: &[TaskSpec]) -> Result<()> {
        let mut levels = Vec::with_capacity(batch.len());
        let mut seen = HashSet::with_capacity(batch.len());
        for (index, t) in batch.iter().enumerate() {
            let wrap = |e: SchedulerError| SchedulerError::BadBatch {
                index,
                message: e.to_string(),
            };
            if !seen.insert(t.id) {
                return Err(wrap(SchedulerError::DuplicateTask(t.id)));
            }
            levels.push(self.check(t).map_err(wrap)?);
        }
        let now = self.now();
        for (t, level) in batch.iter().zip(levels) {
            self.enqueue(t, level, now);
        }
        Ok(())
    }

    fn state_name(&self, id: u64) -> &'static str {
        match self.tasks.get(&id).map(|t| t.state) {
            None => "unknown (never submitted, completed or cancelled)",
            Some(State::Queued) => "queued",
            Some(State::Running { .. }) => "running",
        }
    }

    /// Take a running task off its slot (resources freed); it stays in `tasks`.
    fn unrun(&mut self, id: u64) {
        let t = self.tasks.get_mut(&id).expect("running task is known");
        if let State::Running { slot, start } = t.state {
            self.slots[slot].release(&(t.level, start, id), t.mem, t.cpu);
            t.state = State::Queued;
            self.running -= 1;
            self.queue.insert(t.key, id, t.level);
        }
    }

    fn is_running(&self, id: u64) -> bool {
        matches!(
            self.tasks.get(&id).map(|t| t.state),
            Some(State::Running { .. })
        )
    }

    /// A running task finished: free its resources and forget it.
    pub fn complete(&mut self, id: u64) -> Result<()> {
        if !self.is_running(id) {
            return Err(SchedulerError::WrongState {
                task_id: id,
                state: self.state_name(id),
                needed: "running",
                hint: "complete() takes a task that schedule() placed",
            });
        }
        self.unrun(id);
        let t = self.tasks.remove(&id).expect("known");
        self.queue.remove(&t.key, t.level);
        Ok(())
    }

    /// Remove a task, queued or running. False if it is unknown.
    pub fn cancel(&mut self, id: u64) -> bool {
        let Some(t) = self.tasks.get(&id).copied() else {
            return false;
        };
        if let State::Running { .. } = t.state {
            self.unrun(id);
        }
        self.queue.remove(&t.key, t.level);
        self.tasks.remove(&id);
        true
    }

    /// A running task goes back to the queue with its original enqueue time.
    pub fn requeue(&mut self, id: u64) -> Result<()> {
        if !self.is_running(id) {
            return Err(SchedulerError::WrongState {
                task_id: id,
                state: self.state_name(id),
                needed: "running",
                hint: "requeue() takes a task that schedule() placed",
            });
        }
        self.unrun(id);
        Ok(())
    }

    fn start(&mut self, id: u64, slot: usize) {
        let start = self.next_start;
        self.next_start += 1;
        let t = self.tasks.get_mut(&id).expect("queued task is known");
        self.queue.remove(&t.key, t.level);
        t.state = State::Running { slot, start };
        self.slots[slot].add((t.level, start, id), t.mem, t.cpu);
        if t.group != 0 {
            self.affinity.insert(t.group, slot);
        }
        self.running += 1;
    }

    // ------------------------------------------------------------ deciding

    /// Place queued tasks, earliest virtual deadline first, up to `max` placements.
    pub fn schedule(&mut self, max: Option<usize>) -> Vec<Placed> {
        let max = max.unwrap_or(usize::MAX);
        let now = self.now();
        let mut out = Vec::new();
        if self.slots.is_empty() {
            return out;
        }
        let mut blocked = vec![false; self.slots.len()];
        let mut cursor: Option<Key> = None;
        let mut skipped = 0usize;
        let mut evicted: HashSet<u64> = HashSet::new();
        let mut mark = Instant::now();
        while out.len() < max {
            let Some((key, id)) = self.queue.next_after(cursor) else {
                break;
            };
            cursor = Some(key);
            if evicted.contains(&id) {
                continue;
            }
            let t = self.tasks[&id];
            let d = t.demand();
            let affinity = if t.group != 0 {
                self.affinity.get(&t.group).copied()
            } else {
                None
            };
            let mut placed = self
                .placer
                .choose(&self.slots, &blocked, &d, affinity, self.scale)
                .map(|slot| (slot, Vec::new()));
            if placed.is_none() && self.cfg.preemption {
                let tasks = &self.tasks;
                // Only tasks that would queue behind this one may be evicted: a task that
                // aged past it keeps its place (and tasks placed in this call are ahead).
                let plan = self.placer.preempt_plan(&self.slots, &blocked, &d, |v| {
                    tasks
                        .get(&v)
                        .filter(|vt| vt.key > key)
                        .map(|vt| (vt.mem, vt.cpu))
                });
                if let Some((slot, victims)) = plan {
                    let ids: Vec<u64> = victims.iter().map(|rk| rk.2).collect();
                    for &v in &ids {
                        self.unrun(v);
                        evicted.insert(v);
                    }
                    self.preemptions += ids.len() as u64;
                    placed = Some((slot, ids));
                }
            }
            match placed {
                Some((slot, preempted)) => {
                    self.start(id, slot);
                    let now_i = Instant::now();
                    self.hist
                        .record(u64::try_from((now_i - mark).as_nanos()).unwrap_or(u64::MAX));
                    mark = now_i;
                    self.decisions += 1;
                    out.push(Placed {
                        task_id: id,
                        slot,
                        preempted,
                    });
                }
                None => {
                    skipped += 1;
                    if now >= key.deadline + self.cfg.aging_s {
                        if let Some(r) =
                            self.placer
                                .reservation(&self.slots, &blocked, &d, self.scale)
                        {
                            blocked[r] = true;
                            if blocked.iter().all(|b| *b) {
                                break;
                            }
                        }
                    }
                    if skipped >= LOOKAHEAD {
                        break;
                    }
                }
            }
        }
        out
    }

    // ------------------------------------------------------------ status

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn status(&self) -> Status {
        Status {
            queued: self.queue.by_level(),
            running: self.running,
            slots: self
                .slots
                .iter()
                .map(|s| SlotUsage {
                    id: s.id.clone(),
                    memory_mb_used: s.mem_used,
                    memory_mb: s.memory_mb,
                    cpu_used: s.cpu_used,
                    cpu_cores: s.cpu_cores,
                    running: s.running.len(),
                })
                .collect(),
            decisions: self.decisions,
            decision_p50_us: self.hist.quantile(0.5) / 1000.0,
            decision_p99_us: self.hist.quantile(0.99) / 1000.0,
            preemptions: self.preemptions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(strategy: Strategy) -> Config {
        Config {
            strategy,
            balancing: Balancing::LeastLoaded,
            aging_s: 5.0,
            critical_reserve: 0.1,
            preemption: true,
        }
    }

    fn sched(slots: &[(f64, f64)], strategy: Strategy) -> Scheduler {
        let slots = slots
            .iter()
            .enumerate()
            .map(|(i, &(m, c))| (format!("s{i}"), m, c, 1.0))
            .collect();
        let mut s = Scheduler::new(slots, cfg(strategy)).unwrap();
        s.set_clock(Some(0.0));
        s
    }

    fn task(id: u64, level: i64, mem: f64) -> TaskSpec {
        TaskSpec {
            id,
            level,
            memory_mb: mem,
            cpu_cores: 0.0,
            group: 0,
        }
    }

    fn ids(p: &[Placed]) -> Vec<u64> {
        p.iter().map(|p| p.task_id).collect()
    }

    #[test]
    fn priority_order_then_fifo() {
        let mut s = sched(&[(100.0, 1.0)], Strategy::BestFit);
        for (id, lvl) in [(1, 4), (2, 2), (3, 0), (4, 2), (5, 1)] {
            s.submit(task(id, lvl, 0.0)).unwrap();
        }
        assert_eq!(ids(&s.schedule(None)), vec![3, 5, 2, 4, 1]);
        assert_eq!(s.status().decisions, 5);
    }

    #[test]
    fn aging_beats_fresh_high_priority() {
        let mut s = sched(&[(100.0, 1.0)], Strategy::BestFit);
        s.submit(task(1, 4, 0.0)).unwrap(); // deadline 20
        s.set_clock(Some(21.0));
        s.submit(task(2, 0, 0.0)).unwrap(); // deadline 21
        assert_eq!(ids(&s.schedule(None)), vec![1, 2]);
    }

    #[test]
    fn preemption_evicts_and_resumes() {
        let mut s = sched(&[(100.0, 1.0)], Strategy::BestFit);
        s.submit(task(1, 4, 60.0)).unwrap();
        assert_eq!(ids(&s.schedule(None)), vec![1]);
        s.submit(task(2, 1, 60.0)).unwrap();
        let p = s.schedule(None);
        assert_eq!(
            p,
            vec![Placed {
                task_id: 2,
                slot: 0,
                preempted: vec![1]
            }]
        );
        assert_eq!(s.status().queued[4], 1);
        s.complete(2).unwrap();
        assert_eq!(ids(&s.schedule(None)), vec![1]);
        assert_eq!(s.status().preemptions, 1);
    }

    #[test]
    fn aged_task_is_not_preempted_by_a_fresher_one() {
        let mut s = sched(&[(100.0, 1.0)], Strategy::BestFit);
        s.submit(task(1, 4, 60.0)).unwrap(); // deadline 20
        s.set_clock(Some(19.0));
        s.submit(task(2, 1, 60.0)).unwrap(); // deadline 24, after task 1
        assert_eq!(ids(&s.schedule(None)), vec![1]);
        assert!(s.schedule(None).is_empty());
        assert_eq!(s.status().preemptions, 0);
    }

    #[test]
    fn no_preemption_of_equal_priority() {
        let mut s = sched(&[(100.0, 1.0)], Strategy::BestFit);
        s.submit(task(1, 2, 60.0)).unwrap();
        s.schedule(None);
        s.submit(task(2, 2, 60.0)).unwrap();
        assert!(s.schedule(None).is_empty());
    }

    #[test]
    fn head_of_line_skip_then_reserve() {
        let mut s = sched(&[(100.0, 1.0)], Strategy::BestFit);
        s.submit(task(1, 2, 50.0)).unwrap();
        s.schedule(None);
        s.submit(task(2, 2, 80.0)).unwrap(); // does not fit yet
        s.submit(task(3, 2, 10.0)).unwrap(); // jumps ahead
        assert_eq!(ids(&s.schedule(None)), vec![3]);
        // Starving: waited (2 + 1) * 5 s; now it reserves the slot.
        s.set_clock(Some(16.0));
        s.submit(task(4, 0, 10.0)).unwrap();
        assert!(s.schedule(None).is_empty());
        s.complete(1).unwrap();
        s.complete(3).unwrap();
        assert_eq!(ids(&s.schedule(None)), vec![2, 4]);
    }

    #[test]
    fn bad_input() {
        let mut s = sched(&[(100.0, 2.0)], Strategy::Priority);
        s.submit(task(1, 2, 0.0)).unwrap();
        assert_eq!(
            s.submit(task(1, 2, 0.0)),
            Err(SchedulerError::DuplicateTask(1))
        );
        assert!(matches!(
            s.submit(task(2, 5, 0.0)),
            Err(SchedulerError::BadPriority(_))
        ));
        assert!(matches!(
            s.submit(task(2, 2, -1.0)),
            Err(SchedulerError::BadDemand { .. })
        ));
        assert!(matches!(
            s.submit(task(2, 2, f64::NAN)),
            Err(SchedulerError::BadDemand { .. })
        ));
        // 95 MB fits only a critical task under a 10% reserve.
        assert!(matches!(
            s.submit(task(2, 2, 95.0)),
            Err(SchedulerError::Impossible { .. })
        ));
        s.submit(task(2, 0, 95.0)).unwrap();
        assert!(matches!(
            s.complete(1),
            Err(SchedulerError::WrongState { .. })
        ));
        assert!(matches!(
            s.requeue(9),
            Err(SchedulerError::WrongState { .. })
        ));
        let batch = [task(3, 2, 0.0), task(3, 2, 0.0)];
        assert!(matches!(
            s.submit_many(&batch),
            Err(SchedulerError::BadBatch { index: 1, .. })
        ));
        assert_eq!(s.len(), 2);
        assert!(matches!(
            s.add_slot("s0".into(), 1.0, 1.0, 1.0),
            Err(SchedulerError::DuplicateSlot(_))
        ));
        assert!(matches!(
            s.add_slot("x".into(), 1.0, 1.0, 0.0),
            Err(SchedulerError::BadSlot { .. })
        ));
        assert!(matches!(
            s.remove_slot("nope"),
            Err(SchedulerError::UnknownSlot(_))
        ));
    }

    #[test]
    fn remove_slot_requeues_and_reindexes() {
        let mut s = sched(&[(100.0, 1.0), (100.0, 1.0)], Strategy::FirstFit);
        s.submit(task(1, 2, 60.0)).unwrap();
        s.submit(task(2, 2, 60.0)).unwrap();
        let p = s.schedule(None);
        assert_eq!(p.iter().map(|p| p.slot).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(s.remove_slot("s0").unwrap(), vec![1]);
        s.complete(2).unwrap();
        let p = s.schedule(None);
        assert_eq!(
            p,
            vec![Placed {
                task_id: 1,
                slot: 0,
                preempted: vec![]
            }]
        );
        assert_eq!(s.slot_ids(), vec!["s1".to_string()]);
    }

    #[test]
    fn scale_many_tasks() {
        let mut s = sched(&[(1e9, 1e6); 4], Strategy::BestFit);
        let batch: Vec<TaskSpec> = (0..100_000u64)
            .map(|i| TaskSpec {
                id: i,
                level: (i % 5) as i64,
                memory_mb: 1.0,
                cpu_cores: 0.01,
                group: 0,
            })
            .collect();
        s.submit_many(&batch).unwrap();
        assert_eq!(s.schedule(None).len(), 100_000);
        for i in 0..100_000u64 {
            s.complete(i).unwrap();
        }
        assert!(s.is_empty());
        let st = s.status();
        assert!(st
            .slots
            .iter()
            .all(|u| u.memory_mb_used == 0.0 && u.running == 0));
    }
}
