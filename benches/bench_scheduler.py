"""Scheduling decisions: symbi's Rust scheduler against a heapq scheduler in Python.

Both order tasks by the same virtual deadline (``enqueue + priority * aging_s``, ties by
submission order) and place them first-fit over the same slot pool; the peer also skips
tasks that do not fit (bounded lookahead) as symbi does. The workload has no resource
contention (every task fits), and before timing both sides must produce the same
(task, slot) sequence.

Rows: decisions/s for submit + schedule of N tasks, and symbi's in-Rust decision latency
p50/p99 (from ``status()``) against the heapq scheduler's time per decision.
"""

from __future__ import annotations

import heapq
import random
import statistics
import time
from typing import Any

import pytest

from conftest import size
from symbi.scheduler import Placement, Priority, Scheduler, Slot

N = size(20_000, 2_000)
N_SLOTS = 16
AGING_S = 5.0
LOOKAHEAD = 64

THROUGHPUT_ROW = {
    "metric": "scheduling decision p50/p99: decisions/s, submit + schedule",
    "unit": "decisions/s",
    "items": N,
    "seed_target": "<1 ms per decision",
    "goal": "p99 <= 10 µs",
}
LATENCY_ROW = {
    "unit": "µs",
    "better": "lower",
    "seed_target": "<1 ms",
    "goal": "p99 <= 10 µs",
}


def slots() -> list[Slot]:
    # Each task asks for 1..8 MB; the pool holds all of them (no contention).
    per_slot = float(8 * N // N_SLOTS + 64)
    return [Slot(f"w{i}", per_slot, 64.0) for i in range(N_SLOTS)]


def workload(first_id: int = 0) -> list[tuple[int, int, float, float]]:
    rng = random.Random(3)
    return [(first_id + i, rng.randrange(5), float(rng.randint(1, 8)), 0.0) for i in range(N)]


class HeapqScheduler:
    """The same ordering rule and first-fit placement, with heapq."""

    def __init__(self, pool: list[Slot], aging_s: float = AGING_S) -> None:
        self.aging_s = aging_s
        self.ids = [s.id for s in pool]
        self.cap = [(s.memory_mb, s.cpu_cores) for s in pool]
        self.used = [[0.0, 0.0] for _ in pool]
        self.heap: list[tuple[float, int, int, float, float]] = []
        self.seq = 0
        self.running: dict[int, tuple[int, float, float]] = {}

    def submit_many(self, tasks: list[tuple[int, int, float, float]], now: float) -> None:
        push, heap, aging = heapq.heappush, self.heap, self.aging_s
        for tid, prio, mem, cpu in tasks:
            push(heap, (now + prio * aging, self.seq, tid, mem, cpu))
            self.seq += 1

    def schedule(self) -> list[Placement]:
        out: list[Placement] = []
        skipped: list[tuple[float, int, int, float, float]] = []
        heap, used, cap, ids = self.heap, self.used, self.cap, self.ids
        while heap and len(skipped) < LOOKAHEAD:
            entry = heapq.heappop(heap)
            _, _, tid, mem, cpu = entry
            for i, u in enumerate(used):
                if u[0] + mem <= cap[i][0] and u[1] + cpu <= cap[i][1]:
                    u[0] += mem
                    u[1] += cpu
                    self.running[tid] = (i, mem, cpu)
                    out.append(Placement(tid, ids[i], ()))
                    break
            else:
                skipped.append(entry)
        for entry in skipped:
            heapq.heappush(heap, entry)
        return out


def symbi_scheduler() -> Scheduler:
    return Scheduler(slots(), strategy="first_fit", aging_s=AGING_S)


@pytest.fixture(scope="module")
def tasks() -> list[tuple[int, int, float, float]]:
    tasks = workload()
    ours = symbi_scheduler()
    ours._set_clock(0.0)
    ours.submit_many(tasks)
    mine = [(p.task_id, p.slot_id) for p in ours.schedule()]
    peer = HeapqScheduler(slots())
    peer.submit_many(tasks, 0.0)
    theirs = [(p.task_id, p.slot_id) for p in peer.schedule()]
    assert len(mine) == N, "every task fits: no contention"
    assert mine == theirs, "symbi and the heapq scheduler disagree on the order"
    by_prio = [t[1] for t in sorted(tasks, key=lambda t: (t[1], t[0]))]
    assert [tasks[tid][1] for tid, _ in mine] == by_prio  # same clock: plain priority order
    assert min(t[1] for t in tasks) == Priority.CRITICAL
    return tasks


def test_scheduler_throughput_symbi(benchmark: Any, tag: Any, tasks: list) -> None:
    def setup() -> tuple[tuple[Scheduler], dict[str, Any]]:
        return (symbi_scheduler(),), {}

    def run(s: Scheduler) -> None:
        s.submit_many(tasks)
        s.schedule()

    tag(role="symbi", **THROUGHPUT_ROW)
    benchmark.pedantic(run, setup=setup, rounds=size(15, 5), iterations=1)


def test_scheduler_throughput_peer_heapq(benchmark: Any, tag: Any, tasks: list) -> None:
    def setup() -> tuple[tuple[HeapqScheduler], dict[str, Any]]:
        return (HeapqScheduler(slots()),), {}

    def run(s: HeapqScheduler) -> None:
        s.submit_many(tasks, time.monotonic())
        s.schedule()

    tag(role="peer", peer="heapq + first-fit in Python", **THROUGHPUT_ROW)
    benchmark.pedantic(run, setup=setup, rounds=size(15, 5), iterations=1)


ROUNDS = size(15, 5)


@pytest.mark.parametrize("q", ["p50", "p99"])
def test_scheduler_latency_symbi(benchmark: Any, tag: Any, tasks: list, q: str) -> None:
    """Rounds of schedule() on N freshly queued tasks (the previous round's tasks are
    completed in the untimed setup); the latency is what Rust measured per decision."""
    s = symbi_scheduler()
    rounds = [0]

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        r = rounds[0]
        for tid in range((r - 1) * N, r * N) if r else ():
            s.complete(tid)
        s.submit_many(workload(first_id=r * N))
        rounds[0] = r + 1
        return (), {}

    benchmark.pedantic(s.schedule, setup=setup, rounds=ROUNDS, iterations=1)
    st = s.status()
    assert st.decisions == rounds[0] * N
    value = st.decision_p50_us if q == "p50" else st.decision_p99_us
    tag(
        role="symbi",
        metric=f"scheduling decision {q} latency (in Rust)",
        value=value,
        **LATENCY_ROW,
    )


@pytest.mark.parametrize("q", ["p50", "p99"])
def test_scheduler_latency_peer_heapq(benchmark: Any, tag: Any, tasks: list, q: str) -> None:
    """The heapq scheduler's schedule() on N queued tasks: median round time / N."""
    peer = [HeapqScheduler(slots())]
    times: list[float] = []

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        peer[0] = HeapqScheduler(slots())
        peer[0].submit_many(workload(), time.monotonic())
        return (), {}

    def run() -> None:
        t0 = time.perf_counter()
        placed = peer[0].schedule()
        times.append(time.perf_counter() - t0)
        assert len(placed) == N

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    per_decision_us = statistics.median(times) / N * 1e6
    tag(
        role="peer",
        peer="heapq scheduler, time per decision",
        metric=f"scheduling decision {q} latency (in Rust)",
        value=per_decision_us,
        **LATENCY_ROW,
    )
