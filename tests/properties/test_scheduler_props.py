"""A hypothesis state machine drives the scheduler through submits, schedules, completions,
cancels, requeues, clock moves and slot changes, against a model of where each task is.

Invariants: each submitted task is exactly one of queued / running / completed / cancelled
(and the scheduler's counts agree), no slot is over-committed, per-slot usage equals the sum
of the demands of the tasks placed there, and a placement only ever takes a queued task and
evicts running ones of strictly lower priority."""

from __future__ import annotations

import math
from typing import Optional

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from symbi.errors import InvalidArgument
from symbi.scheduler import Priority, Scheduler, Slot

LEVEL_NAMES = [p.name.lower() for p in Priority]
demands = st.sampled_from([0.0, 0.5, 1.0, 8.0, 10.0, 25.0, 40.0, 64.0, 100.0, 150.0])
cpus = st.sampled_from([0.0, 0.25, 1.0, 2.0, 4.0])


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s: Optional[Scheduler] = None
        self.state: dict[int, str] = {}  # queued | running | completed | cancelled
        self.spec: dict[int, tuple[int, float, float]] = {}  # priority, memory, cpu
        self.where: dict[int, str] = {}  # running task -> slot id
        self.slots: dict[str, Slot] = {}
        self.next_id = 0
        self.next_slot = 0
        self.clock = 0.0
        self.strategy = "best_fit"
        self.reserve = 0.0

    @initialize(
        strategy=st.sampled_from(["first_fit", "best_fit", "priority"]),
        balancing=st.sampled_from(["least_loaded", "round_robin", "weighted"]),
        preemption=st.booleans(),
        reserve=st.sampled_from([0.0, 0.1, 0.25]),
        sizes=st.lists(
            st.tuples(st.sampled_from([50.0, 100.0, 128.0]), st.sampled_from([1.0, 4.0])),
            min_size=1,
            max_size=4,
        ),
    )
    def setup(
        self,
        strategy: str,
        balancing: str,
        preemption: bool,
        reserve: float,
        sizes: list[tuple[float, float]],
    ) -> None:
        slots = []
        for m, c in sizes:
            slots.append(Slot(f"s{self.next_slot}", m, c, weight=1.0 + self.next_slot % 3))
            self.next_slot += 1
        self.slots = {sl.id: sl for sl in slots}
        self.strategy, self.reserve = strategy, reserve
        self.s = Scheduler(
            slots,
            strategy=strategy,
            balancing=balancing,  # type: ignore[arg-type]
            aging_s=2.0,
            critical_reserve=reserve,
            preemption=preemption,
        )
        self.s._set_clock(self.clock)

    # ------------------------------------------------------------ helpers
    def ids(self, state: str) -> list[int]:
        return sorted(t for t, s in self.state.items() if s == state)

    def could_fit(self, prio: int, mem: float, cpu: float) -> bool:
        held = self.reserve if self.strategy == "priority" and prio != 0 else 0.0
        return any(
            mem <= sl.memory_mb * (1 - held) + 1e-6 and cpu <= sl.cpu_cores * (1 - held) + 1e-6
            for sl in self.slots.values()
        )

    # ------------------------------------------------------------ rules
    @rule(prio=st.sampled_from(list(Priority)), mem=demands, cpu=cpus)
    def submit(self, prio: Priority, mem: float, cpu: float) -> None:
        assert self.s is not None
        tid = self.next_id
        self.next_id += 1
        if self.could_fit(int(prio), mem, cpu):
            self.s.submit(tid, priority=prio, memory_mb=mem, cpu_cores=cpu)
            self.state[tid] = "queued"
            self.spec[tid] = (int(prio), mem, cpu)
        else:
            try:
                self.s.submit(tid, priority=prio, memory_mb=mem, cpu_cores=cpu)
            except InvalidArgument:
                pass
            else:
                raise AssertionError(f"impossible demand {mem} MB / {cpu} cores accepted")

    @rule(batch=st.lists(st.tuples(st.integers(0, 4), demands, cpus), min_size=1, max_size=20))
    def submit_many(self, batch: list[tuple[int, float, float]]) -> None:
        assert self.s is not None
        ok = [b for b in batch if self.could_fit(*b)]
        tasks = []
        for prio, mem, cpu in ok:
            tasks.append((self.next_id, prio, mem, cpu))
            self.state[self.next_id] = "queued"
            self.spec[self.next_id] = (prio, mem, cpu)
            self.next_id += 1
        self.s.submit_many(tasks)

    @rule(max_decisions=st.one_of(st.none(), st.integers(0, 5)))
    def schedule(self, max_decisions: Optional[int]) -> None:
        assert self.s is not None
        placements = self.s.schedule(max_decisions)
        if max_decisions is not None:
            assert len(placements) <= max_decisions
        for p in placements:
            assert self.state[p.task_id] == "queued", p
            assert p.slot_id in self.slots
            for v in p.preempted:
                assert self.state[v] == "running" and self.where[v] == p.slot_id, (p, v)
                assert self.spec[v][0] > self.spec[p.task_id][0], "victim must rank lower"
                self.state[v] = "queued"
                del self.where[v]
            self.state[p.task_id] = "running"
            self.where[p.task_id] = p.slot_id

    @precondition(lambda self: any(s == "running" for s in self.state.values()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        assert self.s is not None
        tid = data.draw(st.sampled_from(self.ids("running")))
        self.s.complete(tid)
        self.state[tid] = "completed"
        del self.where[tid]

    @rule(data=st.data())
    def complete_not_running(self, data: st.DataObject) -> None:
        assert self.s is not None
        others = [t for t, s in self.state.items() if s != "running"] + [10**9]
        tid = data.draw(st.sampled_from(others))
        try:
            self.s.complete(tid)
        except InvalidArgument:
            pass
        else:
            raise AssertionError(f"complete({tid}) of a {self.state.get(tid)} task succeeded")

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        assert self.s is not None
        tid = data.draw(st.sampled_from([*self.state, 10**9]))
        live = self.state.get(tid) in ("queued", "running")
        assert self.s.cancel(tid) is live
        if live:
            self.state[tid] = "cancelled"
            self.where.pop(tid, None)

    @precondition(lambda self: any(s == "running" for s in self.state.values()))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        assert self.s is not None
        tid = data.draw(st.sampled_from(self.ids("running")))
        self.s.requeue(tid)
        self.state[tid] = "queued"
        del self.where[tid]

    @rule(dt=st.sampled_from([0.5, 2.0, 7.0, 30.0]))
    def tick(self, dt: float) -> None:
        assert self.s is not None
        self.clock += dt
        self.s._set_clock(self.clock)

    @rule(mem=st.sampled_from([50.0, 200.0]), cpu=st.sampled_from([1.0, 8.0]))
    def add_slot(self, mem: float, cpu: float) -> None:
        assert self.s is not None
        sl = Slot(f"s{self.next_slot}", mem, cpu)
        self.next_slot += 1
        self.s.add_slot(sl)
        self.slots[sl.id] = sl

    @precondition(lambda self: len(self.slots) > 1)
    @rule(data=st.data())
    def remove_slot(self, data: st.DataObject) -> None:
        assert self.s is not None
        sid = data.draw(st.sampled_from(sorted(self.slots)))
        back = self.s.remove_slot(sid)
        assert sorted(back) == sorted(t for t, w in self.where.items() if w == sid)
        for t in back:
            self.state[t] = "queued"
            del self.where[t]
        del self.slots[sid]

    # ------------------------------------------------------------ invariants
    @invariant()
    def counts_agree(self) -> None:
        if self.s is None:
            return
        st_ = self.s.status()
        queued = self.ids("queued")
        running = self.ids("running")
        assert len(self.s) == len(queued) + len(running)
        assert st_.running == len(running)
        by_level = dict.fromkeys(LEVEL_NAMES, 0)
        for t in queued:
            by_level[LEVEL_NAMES[self.spec[t][0]]] += 1
        assert st_.queued == by_level
        assert set(self.state.values()) <= {"queued", "running", "completed", "cancelled"}

    @invariant()
    def never_overcommitted(self) -> None:
        if self.s is None:
            return
        st_ = self.s.status()
        assert set(st_.slots) == set(self.slots)
        for sid, u in st_.slots.items():
            on = [t for t, w in self.where.items() if w == sid]
            mem = sum(self.spec[t][1] for t in on)
            cpu = sum(self.spec[t][2] for t in on)
            assert u.running == len(on)
            assert math.isclose(u.memory_mb_used, mem, abs_tol=1e-6)
            assert math.isclose(u.cpu_used, cpu, abs_tol=1e-6)
            assert u.memory_mb_used <= u.memory_mb + 1e-6
            assert u.cpu_used <= u.cpu_cores + 1e-6
            if self.strategy == "priority":
                # Non-critical tasks alone never reach into the critical reserve.
                non_crit = sum(self.spec[t][1] for t in on if self.spec[t][0] != 0)
                assert non_crit <= u.memory_mb * (1 - self.reserve) + 1e-6


SchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestSchedulerMachine = SchedulerMachine.TestCase
