"""The typed facade over ``symbi._core.SchedulerCore``: validation, enums and Structs."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any, Optional

import msgspec
from typing_extensions import Literal

from .._core import SchedulerCore
from ..errors import InvalidArgument

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

Strategy = Literal["first_fit", "best_fit", "priority"]
Balancing = Literal["least_loaded", "round_robin", "weighted"]
_STRATEGIES = ("first_fit", "best_fit", "priority")
_BALANCING = ("least_loaded", "round_robin", "weighted")


class Priority(enum.IntEnum):
    """Priority levels; a lower value is more urgent."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BATCH = 4


_LEVEL_NAMES = tuple(p.name.lower() for p in Priority)


class Slot(msgspec.Struct, frozen=True):
    """A worker slot: its capacity, and its weight for ``balancing="weighted"``."""

    id: str
    memory_mb: float
    cpu_cores: float
    weight: float = 1.0


class Placement(msgspec.Struct, frozen=True):
    """``task_id`` runs on ``slot_id`` now. ``preempted`` lists the running tasks evicted to
    make room: they are back in the queue, and the caller should suspend them; a later
    ``schedule()`` places them again."""

    task_id: int
    slot_id: str
    preempted: tuple[int, ...] = ()


class SlotUsage(msgspec.Struct, frozen=True):
    memory_mb_used: float
    memory_mb: float
    cpu_used: float
    cpu_cores: float
    running: int


class SchedulerStatus(msgspec.Struct, frozen=True):
    """Queue depth by priority name, running tasks, slot usage and decision latency."""

    queued: dict[str, int]
    running: int
    slots: dict[str, SlotUsage]
    decisions: int
    decision_p50_us: float
    decision_p99_us: float
    preemptions: int


def _task_id(task_id: Any) -> int:
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < 2**64:
        raise InvalidArgument(
            f"task_id must be an int in 0..2**64, got {task_id!r}",
            argument="task_id",
            expected="an int in 0..2**64",
            got=task_id,
        )
    return task_id


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(
            f"{name} must be a number >= 0, got {value!r}",
            argument=name,
            expected="a finite number >= 0",
            got=value,
        )
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise InvalidArgument(
            f"{name} must be a finite number >= 0, got {value!r}",
            argument=name,
            expected="a finite number >= 0",
            got=value,
        )
    return v


def _priority(value: Any) -> int:
    if isinstance(value, Priority):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 4:
        return value
    raise InvalidArgument(
        f"priority must be a symbi.scheduler.Priority (or 0..4), got {value!r}",
        argument="priority",
        expected="a Priority",
        got=value,
    )


def _task(
    task_id: Any, priority: Any, memory_mb: Any, cpu_cores: Any
) -> tuple[int, int, float, float]:
    """One task's checked fields: ``submit`` and each entry of ``submit_many`` share it."""
    return (
        _task_id(task_id),
        _priority(priority),
        _number("memory_mb", memory_mb),
        _number("cpu_cores", cpu_cores),
    )


_BATCH_ENTRY = "(task_id, priority, memory_mb, cpu_cores) tuples"


def _batch(tasks: Any) -> list[tuple[int, int, float, float]]:
    if isinstance(tasks, (str, bytes)):
        items = None
    else:
        try:
            items = list(tasks)
        except TypeError:
            items = None
    if items is None:
        raise InvalidArgument(
            f"tasks must be an iterable of {_BATCH_ENTRY}, got {type(tasks).__name__}",
            argument="tasks",
            expected=_BATCH_ENTRY,
            got=tasks,
        )
    out: list[tuple[int, int, float, float]] = []
    for index, item in enumerate(items):
        where = f"tasks[{index}]: "
        try:
            if not isinstance(item, tuple) or len(item) != 4:
                raise InvalidArgument(
                    f"expected a tuple (task_id, priority, memory_mb, cpu_cores), got {item!r}",
                    argument="tasks",
                    expected=_BATCH_ENTRY,
                )
            where += f"task {_task_id(item[0])}: "
            out.append(_task(*item))
        except InvalidArgument as e:
            # Named by index, as the Rust core names the errors it finds (duplicates).
            raise InvalidArgument(
                f"{where}{e}", argument="tasks", expected=_BATCH_ENTRY, got=index
            ) from None
    return out


def _slot(slot: Any) -> tuple[str, float, float, float]:
    if not isinstance(slot, Slot):
        raise InvalidArgument(
            f"slots must be symbi.scheduler.Slot instances, got {type(slot).__name__}",
            argument="slot",
            expected="a Slot",
            got=slot,
        )
    if not isinstance(slot.id, str):
        raise InvalidArgument(
            f"Slot.id must be a str, got {slot.id!r}",
            argument="slot.id",
            expected="a non-empty str",
            got=slot.id,
        )
    return (
        slot.id,
        _number("slot.memory_mb", slot.memory_mb),
        _number("slot.cpu_cores", slot.cpu_cores),
        _number("slot.weight", slot.weight),
    )


class Scheduler:
    """Priority scheduler with aging, resource-aware placement and preemption, in Rust.

    Tasks are queued by virtual deadline ``enqueue_time + priority * aging_s`` (ties by
    submission order), so a task that has waited long enough precedes fresher, more urgent
    ones. ``schedule()`` places as many as fit; see :mod:`symbi.scheduler` for the rules.
    Not async: every call is short (``schedule`` and ``submit_many`` release the GIL).
    """

    __slots__ = ("_core",)

    def __init__(
        self,
        slots: Sequence[Slot],
        *,
        strategy: Strategy = "best_fit",
        balancing: Balancing = "least_loaded",
        aging_s: float = 5.0,
        critical_reserve: float = 0.1,
        preemption: bool = True,
    ) -> None:
        if isinstance(slots, (str, bytes)) or not isinstance(slots, Sequence):
            raise InvalidArgument(
                "slots must be a sequence of symbi.scheduler.Slot",
                argument="slots",
                expected="a sequence of Slot",
                got=slots,
            )
        if strategy not in _STRATEGIES:
            raise InvalidArgument(
                f"unknown placement strategy {strategy!r}; use one of {', '.join(_STRATEGIES)}",
                argument="strategy",
                expected=" | ".join(_STRATEGIES),
                got=strategy,
            )
        if balancing not in _BALANCING:
            raise InvalidArgument(
                f"unknown load balancing {balancing!r}; use one of {', '.join(_BALANCING)}",
                argument="balancing",
                expected=" | ".join(_BALANCING),
                got=balancing,
            )
        if not isinstance(preemption, bool):
            raise InvalidArgument(
                f"preemption must be a bool, got {preemption!r}",
                argument="preemption",
                expected="True or False",
                got=preemption,
            )
        self._core = SchedulerCore(
            [_slot(s) for s in slots],
            strategy,
            balancing,
            _number("aging_s", aging_s),
            _number("critical_reserve", critical_reserve),
            preemption,
        )

    def submit(
        self,
        task_id: int,
        *,
        priority: Priority = Priority.NORMAL,
        memory_mb: float = 0.0,
        cpu_cores: float = 0.0,
        group: int = 0,
    ) -> None:
        """Queue a task. ``group`` (non-zero) makes tasks of a group prefer the slot the
        group last ran on. Raises InvalidArgument for a duplicate id, a bad priority, a
        negative demand or one no slot can ever hold."""
        if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < 2**64:
            raise InvalidArgument(
                f"group must be an int in 0..2**64, got {group!r}",
                argument="group",
                expected="an int in 0..2**64",
                got=group,
            )
        self._core.submit(*_task(task_id, priority, memory_mb, cpu_cores), group)

    def submit_many(self, tasks: Sequence[tuple[int, int, float, float]]) -> None:
        """Queue ``(task_id, priority, memory_mb, cpu_cores)`` tuples in one Rust call,
        all or nothing; each entry is checked as ``submit`` checks its arguments, and
        errors name the index of the bad entry."""
        self._core.submit_many(_batch(tasks))

    def schedule(self, max_decisions: Optional[int] = None) -> list[Placement]:
        """Place queued tasks, earliest virtual deadline first, until nothing more fits
        (or ``max_decisions`` placements)."""
        if max_decisions is not None and (
            isinstance(max_decisions, bool)
            or not isinstance(max_decisions, int)
            or max_decisions < 0
        ):
            raise InvalidArgument(
                f"max_decisions must be None or an int >= 0, got {max_decisions!r}",
                argument="max_decisions",
                expected="None or an int >= 0",
                got=max_decisions,
            )
        if max_decisions is not None:
            # More decisions than tasks is the same as no limit; the core takes a usize.
            max_decisions = min(max_decisions, 2**63 - 1)
        return [Placement(t, s, p) for t, s, p in self._core.schedule(max_decisions)]

    def complete(self, task_id: int) -> None:
        """A running task finished: free its resources."""
        self._core.complete(_task_id(task_id))

    def cancel(self, task_id: int) -> bool:
        """Drop a queued or running task. A valid id that is not queued or running
        (unknown, completed or already cancelled) returns False; an id that is not an int
        in 0..2**64 raises InvalidArgument."""
        return self._core.cancel(_task_id(task_id))

    def requeue(self, task_id: int) -> None:
        """Put a running task back in the queue, keeping its original enqueue time."""
        self._core.requeue(_task_id(task_id))

    def add_slot(self, slot: Slot) -> None:
        self._core.add_slot(*_slot(slot))

    def remove_slot(self, slot_id: str) -> list[int]:
        """Remove a slot; its running tasks go back to the queue and are returned."""
        if not isinstance(slot_id, str):
            raise InvalidArgument(
                f"slot_id must be a str, got {slot_id!r}",
                argument="slot_id",
                expected="a slot id",
                got=slot_id,
            )
        return self._core.remove_slot(slot_id)

    def status(self) -> SchedulerStatus:
        queued, running, slots, decisions, p50, p99, preemptions = self._core.status()
        return SchedulerStatus(
            queued=dict(zip(_LEVEL_NAMES, queued)),
            running=running,
            slots={s[0]: SlotUsage(*s[1:]) for s in slots},
            decisions=decisions,
            decision_p50_us=p50,
            decision_p99_us=p99,
            preemptions=preemptions,
        )

    def __len__(self) -> int:
        return len(self._core)

    # -------------------------------------------------------------- test hooks
    def _set_clock(self, now: Optional[float]) -> None:
        """Fix the scheduler clock at ``now`` seconds (deterministic tests), or ``None``
        to go back to the monotonic clock."""
        self._core.set_clock(now)

    def _now(self) -> float:
        return self._core.now()
