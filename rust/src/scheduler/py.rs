//! Python binding: `SchedulerCore`, wrapped by `symbi.scheduler.Scheduler`.
//!
//! The state sits behind a mutex in a frozen pyclass, so `schedule` and `submit_many` run
//! with the GIL released while other Python threads keep going.

use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use super::core::{Config, Scheduler, Status, TaskSpec};
use super::placement::{Balancing, Strategy};
use super::SchedulerError;
use crate::gil;

/// A scheduling pass over this many tasks runs without the GIL (see gil.rs).
const DETACH_TASKS: usize = 1024;

/// The Rust scheduler. Use `symbi.scheduler.Scheduler`, which validates and types its
/// inputs and outputs.
#[pyclass(module = "symbi._core", frozen)]
pub struct SchedulerCore {
    inner: Mutex<Scheduler>,
}

fn task_id(obj: &Bound<'_, PyAny>) -> Result<u64, SchedulerError> {
    obj.extract::<u64>().map_err(|_| {
        SchedulerError::BadTaskId(
            obj.repr()
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "?".into()),
        )
    })
}

fn batch_entry(index: usize, item: &Bound<'_, PyAny>) -> Result<TaskSpec, SchedulerError> {
    let bad = |message: String| SchedulerError::BadBatch { index, message };
    let tup = item
        .cast::<PyTuple>()
        .map_err(|_| bad("expected a tuple (task_id, priority, memory_mb, cpu_cores)".into()))?;
    if tup.len() != 4 {
        return Err(bad(format!(
            "expected 4 items (task_id, priority, memory_mb, cpu_cores), got {}",
            tup.len()
        )));
    }
    let get = |i: usize| tup.get_item(i).map_err(|e| bad(e.to_string()));
    let id = task_id(&get(0)?).map_err(|e| bad(e.to_string()))?;
    let level = get(1)?
        .extract::<i64>()
        .map_err(|_| bad("priority must be an int 0..4 or a Priority".into()))?;
    let num = |i: usize, name: &str| -> Result<f64, SchedulerError> {
        get(i)?
            .extract::<f64>()
            .map_err(|_| bad(format!("{name} must be a number")))
    };
    Ok(TaskSpec {
        id,
        level,
        memory_mb: num(2, "memory_mb")?,
        cpu_cores: num(3, "cpu_cores")?,
        group: 0,
    })
}

type SlotTuple = (String, f64, f64, f64);
type SlotUsageTuple = (String, f64, f64, f64, f64, usize);
type StatusTuple = (Vec<usize>, usize, Vec<SlotUsageTuple>, u64, f64, f64, u64);

fn status_tuple(s: Status) -> StatusTuple {
    (
        s.queued.to_vec(),
        s.running,
        s.slots
            .into_iter()
            .map(|u| {
                (
                    u.id,
                    u.memory_mb_used,
                    u.memory_mb,
                    u.cpu_used,
                    u.cpu_cores,
                    u.running,
                )
            })
            .collect(),
        s.decisions,
        s.decision_p50_us,
        s.decision_p99_us,
        s.preemptions,
    )
}

impl SchedulerCore {
    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        // A panic cannot leave the state half-updated in a way later calls trip over
        // (every mutation completes before it could panic), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl SchedulerCore {
    #[new]
    #[pyo3(signature = (slots, strategy="best_fit", balancing="least_loaded", aging_s=5.0,
                        critical_reserve=0.1, preemption=true))]
    fn new(
        slots: Vec<SlotTuple>,
        strategy: &str,
        balancing: &str,
        aging_s: f64,
        critical_reserve: f64,
        preemption: bool,
    ) -> PyResult<Self> {
        let cfg = Config {
            strategy: Strategy::parse(strategy)?,
            balancing: Balancing::parse(balancing)?,
            aging_s,
            critical_reserve,
            preemption,
        };
        Ok(Self {
            inner: Mutex::new(Scheduler::new(slots, cfg)?),
        })
    }

    #[pyo3(signature = (task_id, priority=2, memory_mb=0.0, cpu_cores=0.0, group=0))]
    fn submit(
        &self,
        task_id: &Bound<'_, PyAny>,
        priority: i64,
        memory_mb: f64,
        cpu_cores: f64,
        group: u64,
    ) -> PyResult<()> {
        let id = self::task_id(task_id)?;
        self.lock().submit(TaskSpec {
            id,
            level: priority,
            memory_mb,
            cpu_cores,
            group,
        })?;
        Ok(())
    }

    /// Submit (task_id, priority, memory_mb, cpu_cores) tuples, all or nothing.
    fn submit_many(&self, py: Python<'_>, tasks: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut batch = Vec::with_capacity(tasks.len().unwrap_or(0));
        for (index, item) in tasks.try_iter()?.enumerate() {
            let item = item?;
            // Fast path for well-formed tuples; the slow path explains what is wrong.
            let spec = match item.extract::<(u64, i64, f64, f64)>() {
                Ok((id, level, memory_mb, cpu_cores)) => TaskSpec {
                    id,
                    level,
                    memory_mb,
                    cpu_cores,
                    group: 0,
                },
                Err(_) => batch_entry(index, &item)?,
            };
            batch.push(spec);
        }
        py.detach(|| self.lock().submit_many(&batch))?;
        Ok(())
    }

    /// Place what fits: a list of (task_id, slot_id, preempted ids).
    #[pyo3(signature = (max_decisions=None))]
    fn schedule<'py>(
        &self,
        py: Python<'py>,
        max_decisions: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        // A pass is microseconds unless the queue is long: only then is it worth a GIL
        // hand-off (see gil.rs).
        let heavy = self.lock().len() >= DETACH_TASKS;
        let placed = gil::detach_if(py, heavy, || {
            let mut s = self.lock();
            let placed = s.schedule(max_decisions);
            placed
                .into_iter()
                .map(|p| {
                    let slot = s.slot_id(p.slot).to_owned();
                    (p, slot)
                })
                .collect::<Vec<_>>()
        });
        let out = PyList::empty(py);
        for (p, slot) in placed {
            let pre = PyTuple::new(py, &p.preempted)?;
            out.append((p.task_id, PyString::new(py, &slot), pre))?;
        }
        Ok(out)
    }

    fn complete(&self, task_id: &Bound<'_, PyAny>) -> PyResult<()> {
        let id = self::task_id(task_id)?;
        Ok(self.lock().complete(id)?)
    }

    fn cancel(&self, task_id: &Bound<'_, PyAny>) -> bool {
        match self::task_id(task_id) {
            Ok(id) => self.lock().cancel(id),
            Err(_) => false,
        }
    }

    fn requeue(&self, task_id: &Bound<'_, PyAny>) -> PyResult<()> {
        let id = self::task_id(task_id)?;
        Ok(self.lock().requeue(id)?)
    }

    fn add_slot(&self, id: String, memory_mb: f64, cpu_cores: f64, weight: f64) -> PyResult<()> {
        Ok(self.lock().add_slot(id, memory_mb, cpu_cores, weight)?)
    }

    fn remove_slot(&self, id: &str) -> PyResult<Vec<u64>> {
        Ok(self.lock().remove_slot(id)?)
    }

    /// (queued by level, running, slot usages, decisions, p50 µs, p99 µs, preemptions).
    fn status(&self) -> StatusTuple {
        status_tuple(self.lock().status())
    }

    /// Fix the scheduler clock at `now` seconds (tests), or `None` for the monotonic clock.
    #[pyo3(signature = (now=None))]
    fn set_clock(&self, now: Option<f64>) -> PyResult<()> {
        if let Some(t) = now {
            if !t.is_finite() {
                return Err(SchedulerError::BadOption {
                    option: "now",
                    expected: "a finite number of seconds",
                    got: t.to_string(),
                }
                .into());
            }
        }
        self.lock().set_clock(now);
        Ok(())
    }

    /// Seconds on the scheduler clock.
    fn now(&self) -> f64 {
        self.lock().now()
    }

    fn __len__(&self) -> usize {
        self.lock().len()
    }
}
