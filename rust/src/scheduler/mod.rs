//! Scheduler: a priority queue of tasks with aging, and their placement on a pool of worker
//! slots (memory MB + CPU cores each), decided in O(log n) per decision.
//!
//! # Ordering: virtual deadlines (aging)
//! Every queued task has a *virtual deadline* `enqueue_time + level * aging_s`, where
//! `level` is its priority (CRITICAL=0 … BATCH=4). The queue is a B-tree ordered by
//! (deadline, submission sequence), so the next task is the one with the earliest deadline
//! and ties go to the earlier submission. A fresh CRITICAL task precedes a fresh BATCH one,
//! but a BATCH task that has waited `4 * aging_s` longer precedes it: nothing starves.
//! A requeued or preempted task keeps its original enqueue time and sequence.
//!
//! # Placement
//! [`placement`] picks a slot: `first_fit` (first slot with room, in slot order),
//! `best_fit` (least leftover room after placing, normalised per resource) or `priority`
//! (best fit, but a fraction `critical_reserve` of every slot is usable by CRITICAL tasks
//! only). Among equally good slots, or as the primary choice for tasks without demands,
//! load balancing decides: `least_loaded`, `round_robin` or `weighted` (by slot weight).
//! Tasks with a non-zero `group` prefer the slot their group last ran on among equals.
//!
//! # Head of line
//! A task that does not fit is skipped and the scan goes on, so smaller tasks behind it are
//! placed; at most [`LOOKAHEAD`] tasks are skipped per `schedule` call (then the call
//! ends). A skipped task that is *starving* — it has waited `(level + 1) * aging_s`, i.e.
//! `now >= deadline + aging_s` — reserves the slot where it is closest to fitting: no task
//! behind it is placed on that slot (nor preempts there) until it is placed, so the slot
//! drains for it. Every task ahead of a starving task is starving too, so reservations are
//! taken oldest first, and a call ends when every slot is reserved.
//!
//! # Preemption
//! A task that fits nowhere may evict running tasks of strictly lower priority (higher
//! level) that would also queue behind it (a later virtual deadline: a task that aged past
//! it is not evicted, so preemption cannot undo aging) on one slot: on each slot, victims are taken lowest priority first, then most
//! recently started, until the task fits, then any victim not needed is dropped; the slot
//! needing the fewest victims wins. Victims go back to the queue with their original
//! enqueue time and are not re-placed in the same `schedule` call. Because victims always
//! have a strictly lower priority, preemption cannot cycle.
//!
//! # Latency
//! Each placement decision is timed with `Instant` (time since the previous decision in the
//! same call, so skipped tasks are charged to the next placement) into a log-linear
//! histogram ([`latency`]) that gives p50/p99 with ~3% resolution.

pub mod core;
pub mod latency;
pub mod placement;
pub mod py;
pub mod queue;

pub use self::core::{Config, Scheduler, TaskSpec};
pub use placement::{Balancing, Strategy};

/// Priority levels: CRITICAL=0, HIGH=1, NORMAL=2, LOW=3, BATCH=4.
pub const LEVELS: usize = 5;
/// Names of the levels, lowercase, by level.
pub const LEVEL_NAMES: [&str; LEVELS] = ["critical", "high", "normal", "low", "batch"];
/// The CRITICAL level (the only one that may use the critical reserve).
pub const CRITICAL: u8 = 0;
/// Tasks skipped (not placeable) per `schedule` call before the call gives up.
pub const LOOKAHEAD: usize = 64;

/// Everything that can go wrong in the scheduler module. All are caller errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SchedulerError {
    /// A constructor option is out of range or unknown.
    #[error("invalid scheduler option `{option}`: expected {expected}, got {got}")]
    BadOption {
        option: &'static str,
        expected: &'static str,
        got: String,
    },
    /// A slot definition is unusable.
    #[error("invalid slot {slot:?}: `{field}` must be {expected}, got {got}")]
    BadSlot {
        slot: String,
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    /// `add_slot` with an id already in the pool.
    #[error("slot {0:?} is already in the pool; remove it first or use another id")]
    DuplicateSlot(String),
    /// `remove_slot` with an id not in the pool.
    #[error("no slot {0:?} in the pool; status().slots lists the slot ids")]
    UnknownSlot(String),
    /// A task id that is not a non-negative 64-bit integer.
    #[error("task id must be an int in 0..2**64, got {0}")]
    BadTaskId(String),
    /// A task id that is already queued or running.
    #[error("task {0} is already queued or running; use a fresh id, or cancel it first")]
    DuplicateTask(u64),
    /// An unknown priority level.
    #[error("priority must be 0 (critical) .. 4 (batch), got {0}; use symbi.scheduler.Priority")]
    BadPriority(String),
    /// A negative or non-finite resource demand.
    #[error("task {task_id}: `{field}` must be a finite number >= 0, got {got}")]
    BadDemand {
        task_id: u64,
        field: &'static str,
        got: String,
    },
    /// A demand no slot in the pool could ever hold.
    #[error(
        "task {task_id} asks for {memory_mb} MB and {cpu_cores} cores, more than any slot \
         can give a {level} task; lower the demand or add a larger slot"
    )]
    Impossible {
        task_id: u64,
        memory_mb: f64,
        cpu_cores: f64,
        level: &'static str,
    },
    /// The task is not in the state the call needs.
    #[error("task {task_id} is {state}, not {needed}; {hint}")]
    WrongState {
        task_id: u64,
        state: &'static str,
        needed: &'static str,
        hint: &'static str,
    },
    /// A malformed entry in a batch.
    #[error("tasks[{index}]: {message}")]
    BadBatch { index: usize, message: String },
}

pub type Result<T> = std::result::Result<T, SchedulerError>;
