"""The Rust scheduler through its facade: ordering and aging, placement strategies, load
balancing, the critical reserve, head-of-line handling, preemption and bad input. The clock
is injected (``_set_clock``), so nothing here depends on timing."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from symbi.errors import InvalidArgument
from symbi.scheduler import Placement, Priority, Scheduler, SchedulerStatus, Slot


def make(*slots: tuple[float, float], **kw: object) -> Scheduler:
    s = Scheduler([Slot(f"s{i}", m, c) for i, (m, c) in enumerate(slots)], **kw)  # type: ignore[arg-type]
    s._set_clock(0.0)
    return s


def order(placements: list[Placement]) -> list[int]:
    return [p.task_id for p in placements]


# ----------------------------------------------------------------- ordering and aging


def test_priority_order_then_submission_order() -> None:
    s = make((1000, 8))
    for tid, prio in [
        (1, Priority.BATCH),
        (2, Priority.NORMAL),
        (3, Priority.CRITICAL),
        (4, Priority.NORMAL),
        (5, Priority.HIGH),
        (6, Priority.LOW),
    ]:
        s.submit(tid, priority=prio)
    assert order(s.schedule()) == [3, 5, 2, 4, 6, 1]


def test_max_decisions_limits_a_call() -> None:
    s = make((1000, 8))
    s.submit_many([(i, 2, 0.0, 0.0) for i in range(10)])
    assert order(s.schedule(3)) == [0, 1, 2]
    assert order(s.schedule(0)) == []
    assert order(s.schedule()) == list(range(3, 10))


def test_aging_old_batch_precedes_fresh_critical() -> None:
    s = make((100, 1), aging_s=5.0)
    s.submit(1, priority=Priority.BATCH)  # virtual deadline 0 + 4 * 5 = 20
    s._set_clock(19.0)
    s.submit(2, priority=Priority.CRITICAL)  # deadline 19: still first
    s._set_clock(21.0)
    s.submit(3, priority=Priority.CRITICAL)  # deadline 21: after the batch task
    assert order(s.schedule()) == [2, 1, 3]


def test_starvation_freedom_under_a_stream_of_urgent_work() -> None:
    """One slot fits one task at a time; HIGH tasks keep arriving every second. The BATCH
    task still runs, once its wait outweighs three priority levels (3 * aging_s)."""
    s = make((10, 1), aging_s=2.0)
    s.submit(0, priority=Priority.BATCH, memory_mb=10)
    ran_at = None
    running: list[int] = []
    for t in range(1, 40):
        s._set_clock(float(t))
        s.submit(t, priority=Priority.HIGH, memory_mb=10)
        for tid in running:
            s.complete(tid)
        running = order(s.schedule())
        assert len(running) == 1
        if running == [0]:
            ran_at = t
            break
    # Batch deadline 0 + 4*2 = 8; the HIGH task submitted at t has deadline t + 2.
    assert ran_at is not None and ran_at <= 8


def test_requeue_keeps_the_original_enqueue_time() -> None:
    s = make((10, 1))
    s.submit(1, priority=Priority.NORMAL, memory_mb=10)
    assert order(s.schedule()) == [1]
    s._set_clock(3.0)
    s.submit(2, priority=Priority.NORMAL, memory_mb=10)
    s.requeue(1)
    assert order(s.schedule()) == [1]  # enqueued at 0, before task 2
    s.complete(1)
    assert order(s.schedule()) == [2]


# ----------------------------------------------------------------- strategies


def test_first_fit_places_in_slot_order() -> None:
    s = make((100, 4), (100, 4), strategy="first_fit")
    s.submit_many([(1, 2, 30.0, 0.0), (2, 2, 30.0, 0.0), (3, 2, 50.0, 0.0)])
    assert [(p.task_id, p.slot_id) for p in s.schedule()] == [(1, "s0"), (2, "s0"), (3, "s1")]


def test_best_fit_takes_the_tightest_slot() -> None:
    s = make((100, 4), (40, 4), strategy="best_fit")
    s.submit(1, memory_mb=35)
    s.submit(2, memory_mb=60)
    assert [(p.task_id, p.slot_id) for p in s.schedule()] == [(1, "s1"), (2, "s0")]


def test_best_fit_counts_both_resources() -> None:
    s = make((100, 8), (100, 2), strategy="best_fit")
    s.submit(1, memory_mb=10, cpu_cores=2)
    assert s.schedule()[0].slot_id == "s1"


def test_priority_strategy_reserves_capacity_for_critical() -> None:
    s = make((100, 4), strategy="priority", critical_reserve=0.25)
    s.submit_many([(i, int(Priority.NORMAL), 25.0, 0.0) for i in range(4)])
    assert order(s.schedule()) == [0, 1, 2]  # 75 MB is the non-reserved share
    s.submit(9, priority=Priority.CRITICAL, memory_mb=25)
    assert order(s.schedule()) == [9]  # critical uses the reserve
    assert s.status().slots["s0"].memory_mb_used == 100


def test_priority_strategy_rejects_what_only_the_reserve_could_hold() -> None:
    s = make((100, 4), strategy="priority", critical_reserve=0.2)
    with pytest.raises(InvalidArgument, match="more than any slot"):
        s.submit(1, priority=Priority.HIGH, memory_mb=90)
    s.submit(1, priority=Priority.CRITICAL, memory_mb=90)
    # Without the priority strategy the reserve does not apply.
    make((100, 4), strategy="best_fit", critical_reserve=0.2).submit(1, memory_mb=90)


# ----------------------------------------------------------------- balancing


def slot_counts(placements: list[Placement]) -> Counter[str]:
    return Counter(p.slot_id for p in placements)


def test_round_robin_cycles_over_slots() -> None:
    s = make((10, 1), (10, 1), (10, 1), balancing="round_robin")
    s.submit_many([(i, 2, 0.0, 0.0) for i in range(6)])
    assert [p.slot_id for p in s.schedule()] == ["s0", "s1", "s2", "s0", "s1", "s2"]


def test_least_loaded_spreads_work() -> None:
    s = make((100, 4), (100, 4), balancing="least_loaded")
    s.submit(1, memory_mb=50)
    s.schedule()
    s.submit_many([(i, 2, 0.0, 0.0) for i in range(2, 8)])
    # Tasks without demands: every slot is equally good, the less utilised one wins.
    assert slot_counts(s.schedule()) == {"s1": 6}


def test_least_loaded_zero_demand_alternates() -> None:
    s = make((100, 4), (100, 4), balancing="least_loaded")
    s.submit_many([(i, 2, 0.0, 0.0) for i in range(10)])
    assert slot_counts(s.schedule()) == {"s0": 5, "s1": 5}


def test_weighted_follows_slot_weights() -> None:
    s = Scheduler(
        [Slot("big", 100, 4, weight=3.0), Slot("small", 100, 4, weight=1.0)], balancing="weighted"
    )
    s.submit_many([(i, 2, 0.0, 0.0) for i in range(40)])
    assert slot_counts(s.schedule()) == {"big": 30, "small": 10}


def test_group_prefers_its_last_slot_among_equals() -> None:
    s = make((100, 4), (100, 4), (100, 4), balancing="round_robin")
    s.submit(1, group=7)
    first = s.schedule()[0].slot_id
    s.submit(2, group=7)
    s.submit(3, group=7)
    assert {p.slot_id for p in s.schedule()} == {first}


# ----------------------------------------------------------------- head of line


def test_big_task_does_not_block_smaller_ones() -> None:
    s = make((100, 4))
    s.submit(1, memory_mb=60)
    s.schedule()
    s.submit(2, memory_mb=80)  # waits for task 1
    s.submit(3, memory_mb=20)
    s.submit(4, memory_mb=20)
    assert order(s.schedule()) == [3, 4]


def test_starving_big_task_reserves_a_slot() -> None:
    s = make((100, 4), aging_s=5.0)
    s.submit(1, memory_mb=60)
    s.schedule()
    s.submit(2, memory_mb=80)  # NORMAL at t=0: starving from t = (2 + 1) * 5 = 15
    s._set_clock(14.0)
    s.submit(3, memory_mb=10)
    assert order(s.schedule()) == [3]  # not starving yet: smaller tasks go ahead
    s._set_clock(15.0)
    s.submit(4, priority=Priority.CRITICAL, memory_mb=10)
    assert order(s.schedule()) == []  # the slot is held for task 2
    s.complete(1)
    s.complete(3)
    assert order(s.schedule()) == [2, 4]


def test_reservation_leaves_other_slots_usable() -> None:
    s = make((100, 4), (100, 4), strategy="first_fit")
    s.submit_many([(1, 2, 60.0, 0.0), (2, 2, 60.0, 0.0)])
    assert len(s.schedule()) == 2
    s.submit(3, memory_mb=90)
    s._set_clock(100.0)
    s.submit(4, memory_mb=30)
    s.submit(5, memory_mb=30)
    # Task 3 reserves s0 (first of the equally short slots); the others fill s1 only.
    got = s.schedule()
    assert [(p.task_id, p.slot_id) for p in got] == [(4, "s1")]


# ----------------------------------------------------------------- preemption


def test_preemption_evicts_lowest_priority_newest_first() -> None:
    s = make((100, 4))
    s.submit(1, priority=Priority.LOW, memory_mb=30)
    s.submit(2, priority=Priority.BATCH, memory_mb=30)
    s.submit(3, priority=Priority.BATCH, memory_mb=30)
    assert order(s.schedule()) == [1, 2, 3]
    s.submit(9, priority=Priority.HIGH, memory_mb=40)
    [p] = s.schedule()
    assert p == Placement(task_id=9, slot_id="s0", preempted=(3,))
    st = s.status()
    assert st.preemptions == 1 and st.queued["batch"] == 1 and st.running == 3


def test_preempted_task_resumes_later() -> None:
    s = make((100, 4))
    s.submit(1, priority=Priority.BATCH, memory_mb=70)
    s.schedule()
    s.submit(2, priority=Priority.CRITICAL, memory_mb=70)
    assert s.schedule() == [Placement(2, "s0", (1,))]
    assert s.schedule() == []  # still no room for the victim
    s.complete(2)
    assert s.schedule() == [Placement(1, "s0", ())]


def test_no_preemption_of_equal_or_higher_priority_or_when_disabled() -> None:
    s = make((100, 4))
    s.submit(1, priority=Priority.HIGH, memory_mb=70)
    s.schedule()
    s.submit(2, priority=Priority.HIGH, memory_mb=70)
    s.submit(3, priority=Priority.LOW, memory_mb=70)
    assert s.schedule() == []
    off = make((100, 4), preemption=False)
    off.submit(1, priority=Priority.BATCH, memory_mb=70)
    off.schedule()
    off.submit(2, priority=Priority.CRITICAL, memory_mb=70)
    assert off.schedule() == []


def test_preemption_picks_the_slot_with_fewest_victims() -> None:
    s = make((100, 4), (100, 4), strategy="first_fit")
    s.submit_many([(1, 4, 50.0, 0.0), (2, 4, 50.0, 0.0), (3, 4, 100.0, 0.0)])
    assert [p.slot_id for p in s.schedule()] == ["s0", "s0", "s1"]
    s.submit(9, priority=Priority.HIGH, memory_mb=50)
    [p] = s.schedule()
    assert p.slot_id == "s0" and p.preempted == (2,)


def test_victims_are_not_replaced_in_the_same_call() -> None:
    s = make((100, 4), (30, 4), strategy="first_fit")
    s.submit(1, priority=Priority.BATCH, memory_mb=25)
    assert [p.slot_id for p in s.schedule()] == ["s0"]
    s.submit(9, priority=Priority.CRITICAL, memory_mb=100)
    # Task 1 would fit on s1, but it is only requeued now, and placed by the next call.
    assert s.schedule() == [Placement(9, "s0", (1,))]
    assert s.status().queued["batch"] == 1
    assert s.schedule() == [Placement(1, "s1", ())]


# ----------------------------------------------------------------- lifecycle calls


def test_complete_cancel_requeue_and_len() -> None:
    s = make((100, 4))
    s.submit(1, memory_mb=10)
    s.submit(2, memory_mb=10)
    assert len(s) == 2
    s.schedule(1)
    assert s.cancel(2) is True and s.cancel(2) is False and s.cancel(99) is False
    s.complete(1)
    assert len(s) == 0
    with pytest.raises(InvalidArgument, match="not running"):
        s.complete(1)
    s.submit(1)  # a completed id may be used again
    with pytest.raises(InvalidArgument, match="queued, not running"):
        s.complete(1)
    with pytest.raises(InvalidArgument):
        s.requeue(1)
    s.schedule()
    assert s.cancel(1) is True
    assert s.status().running == 0


def test_add_and_remove_slots() -> None:
    s = make((100, 4))
    s.submit_many([(1, 2, 60.0, 0.0), (2, 2, 60.0, 0.0)])
    assert order(s.schedule()) == [1]
    s.add_slot(Slot("extra", 100, 4))
    assert s.schedule() == [Placement(2, "extra", ())]
    assert s.remove_slot("s0") == [1]
    assert s.status().queued["normal"] == 1
    assert list(s.status().slots) == ["extra"]
    s.complete(2)
    assert s.schedule() == [Placement(1, "extra", ())]
    with pytest.raises(InvalidArgument, match="no slot"):
        s.remove_slot("s0")
    with pytest.raises(InvalidArgument, match="already in the pool"):
        s.add_slot(Slot("extra", 1, 1))


def test_status_shape() -> None:
    s = make((100, 4), (50, 2))
    s.submit(1, priority=Priority.LOW, memory_mb=10, cpu_cores=1)
    s.submit(2, priority=Priority.BATCH)
    s.schedule(1)
    st = s.status()
    assert isinstance(st, SchedulerStatus)
    assert st.queued == {"critical": 0, "high": 0, "normal": 0, "low": 0, "batch": 1}
    assert st.running == 1 and st.decisions == 1
    assert st.decision_p99_us >= st.decision_p50_us > 0
    used = {k: (u.memory_mb_used, u.cpu_used) for k, u in st.slots.items()}
    assert sorted(used.values()) == [(0.0, 0.0), (10.0, 1.0)]


def test_schedule_from_threads_is_consistent() -> None:
    s = Scheduler([Slot("a", 1e6, 1e3), Slot("b", 1e6, 1e3)])
    s.submit_many([(i, i % 5, 1.0, 0.01) for i in range(20_000)])
    seen: list[list[Placement]] = []

    def worker() -> None:
        seen.append(s.schedule(2_500))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    ids = [p.task_id for batch in seen for p in batch]
    assert sorted(ids) == list(range(20_000))


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"priority": 7}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"memory_mb": -1}, "memory_mb"),
        ({"cpu_cores": float("nan")}, "cpu_cores"),
        ({"memory_mb": "big"}, "memory_mb"),
        ({"memory_mb": 1e9}, "memory_mb/cpu_cores"),
        ({"cpu_cores": 5}, "memory_mb/cpu_cores"),
        ({"group": -1}, "group"),
    ],
)
def test_submit_rejects_bad_input(kwargs: dict[str, object], argument: str) -> None:
    s = make((100, 4))
    with pytest.raises(InvalidArgument) as ei:
        s.submit(1, **kwargs)  # type: ignore[arg-type]
    assert ei.value.argument == argument
    assert len(s) == 0


def test_bad_ids_and_duplicates() -> None:
    s = make((100, 4))
    for bad in (-1, 2**64, "7", 1.5, True):
        with pytest.raises(InvalidArgument) as ei:
            s.submit(bad)  # type: ignore[arg-type]
        assert ei.value.argument == "task_id"
    s.submit(1)
    with pytest.raises(InvalidArgument, match="already queued or running"):
        s.submit(1)


def test_submit_many_is_all_or_nothing() -> None:
    s = make((100, 4))
    s.submit(5)
    for batch, where in [
        ([(1, 2, 0.0, 0.0), (1, 2, 0.0, 0.0)], "tasks\\[1\\]"),
        ([(1, 2, 0.0, 0.0), (5, 2, 0.0, 0.0)], "tasks\\[1\\]"),
        ([(1, 2, 0.0, 0.0), (2, 9, 0.0, 0.0)], "tasks\\[1\\]"),
        ([(1, 2, -3.0, 0.0)], "tasks\\[0\\]"),
        ([(1, 2, 0.0)], "tasks\\[0\\]"),
        ([(-1, 2, 0.0, 0.0)], "tasks\\[0\\]"),
        ([(1, 2, 0.0, "x")], "tasks\\[0\\]"),
        ([(1, 2, 500.0, 0.0)], "tasks\\[0\\]"),
    ]:
        with pytest.raises(InvalidArgument, match=where):
            s.submit_many(batch)  # type: ignore[arg-type]
        assert len(s) == 1


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"strategy": "worst_fit"}, "strategy"),
        ({"balancing": "random"}, "balancing"),
        ({"aging_s": 0}, "aging_s"),
        ({"aging_s": -1}, "aging_s"),
        ({"critical_reserve": 1.0}, "critical_reserve"),
        ({"critical_reserve": -0.1}, "critical_reserve"),
        ({"preemption": "yes"}, "preemption"),
    ],
)
def test_constructor_rejects_bad_options(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        Scheduler([Slot("a", 1, 1)], **kwargs)  # type: ignore[arg-type]
    assert ei.value.argument == argument


def test_bad_slots() -> None:
    for slots, argument in [
        ([Slot("a", -1, 1)], "slot.memory_mb"),
        ([Slot("a", 1, 1, weight=0)], "slot.weight"),
        ([Slot("", 1, 1)], "slot.id"),
        ([Slot("a", 1, 1), Slot("a", 2, 2)], "slot.id"),
        ([("a", 1, 1)], "slot"),
    ]:
        with pytest.raises(InvalidArgument) as ei:
            Scheduler(slots)  # type: ignore[arg-type]
        assert ei.value.argument == argument
    with pytest.raises(InvalidArgument):
        Scheduler("ab")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="more than any slot"):
        Scheduler([]).submit(1)
    s = make((1, 1))
    with pytest.raises(InvalidArgument):
        s.schedule(-1)
    with pytest.raises(InvalidArgument):
        s.remove_slot(3)  # type: ignore[arg-type]
