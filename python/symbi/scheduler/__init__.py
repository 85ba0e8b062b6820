"""The scheduler: which queued task runs next, and on which worker slot. Decided in Rust.

Ordering (aging)
    Each queued task has a virtual deadline ``enqueue_time + priority * aging_s`` (CRITICAL=0
    … BATCH=4); the earliest deadline goes first, ties in submission order. A fresh CRITICAL
    task precedes a fresh BATCH one, but a BATCH task that has waited ``4 * aging_s``
    longer precedes it: nothing starves. Requeued and preempted tasks keep their enqueue
    time. Each decision is O(log n) (a B-tree) plus a scan of the slots.

Placement
    ``first_fit``: the first slot with room. ``best_fit``: the slot with the least room left
    after placing. ``priority``: best fit, with ``critical_reserve`` (a fraction) of every
    slot usable by CRITICAL tasks only. Among equally good slots, and for tasks without
    demands, ``balancing`` picks: ``least_loaded`` (lowest utilisation, then fewest running),
    ``round_robin``, or ``weighted`` (fewest running per unit of ``Slot.weight``).

Head of line
    A task that does not fit is skipped, so smaller ones behind it still run; at most 64 are
    skipped per ``schedule()`` call. A skipped task that has waited ``(priority + 1) *
    aging_s`` reserves the slot where it is closest to fitting: nothing behind it is placed
    there until it runs, so it cannot starve behind a stream of small tasks.

Preemption
    With ``preemption=True``, a task that fits nowhere evicts running tasks of strictly
    lower priority that would also queue behind it (a task that aged past it is never
    evicted, so preemption cannot undo aging) on one slot: lowest priority first, then
    most recently started, the fewest that make room. Evicted ids are in
    ``Placement.preempted``; they are back in the queue with their enqueue time, and a
    later ``schedule()`` resumes them.

Submitting a task larger than every slot (or, under ``priority``, larger than every
slot's non-reserved share, for non-CRITICAL tasks), a duplicate id or a negative demand
raises :class:`symbi.errors.InvalidArgument`.
"""

from __future__ import annotations

from .core import (
    Balancing,
    Placement,
    Priority,
    Scheduler,
    SchedulerStatus,
    Slot,
    SlotUsage,
    Strategy,
)

__all__ = [
    "Balancing",
    "Placement",
    "Priority",
    "Scheduler",
    "SchedulerStatus",
    "Slot",
    "SlotUsage",
    "Strategy",
]
