"""Scheduling when things go wrong: preemption races, slots that shrink under running
agents, limits no slot can hold, spawns cancelled or terminated in on_start, and bad
arguments to the lifecycle and the scheduler. The runtime survives, every message is
handled once, dead-lettered or refused to its sender, and every refusal is typed."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import symbi
from symbi import Config, Priority, ResourceLimits, RuntimeConfig
from symbi.errors import DeliveryError, InvalidArgument
from symbi.host import SpawnError
from symbi.lifecycle import AgentState, LifecycleController
from symbi.scheduler import Scheduler, Slot

pytestmark = pytest.mark.anyio

ONE_CORE = ResourceLimits(cpu_cores=1.0)


class Task(symbi.Message):
    text: str


def config(**runtime: object) -> Config:
    base = {"gc_interval_ms": 50, "shutdown_grace_s": 1.0, **runtime}
    return Config().replace(runtime=RuntimeConfig(**base))  # type: ignore[arg-type]


def idle(rt: symbi.Runtime) -> None:
    """Nothing is left queued or holding capacity in the scheduler."""
    st = rt.status().scheduler
    assert st.running == 0 and sum(st.queued.values()) == 0


# ------------------------------------------------------------------ preemption races
async def test_preempting_a_task_placed_but_not_started_runs_it_once_afterwards() -> None:
    """LOW is placed and its worker scheduled, but not started, when CRITICAL evicts it:
    it must not run alongside CRITICAL, nor get a second worker when placed again."""
    runs: list[str] = []

    async def slow(msg: Task, ctx: symbi.Context) -> str:
        runs.append("slow start")
        await anyio.sleep(0.1)
        runs.append("slow end")
        return "slow"

    async def urgent(msg: Task, ctx: symbi.Context) -> str:
        runs.append("urgent")
        await anyio.sleep(0.02)
        return "urgent"

    async with symbi.Runtime(config(scheduler_threads=1)) as rt:
        s = await rt.spawn(slow, name="slow", priority=Priority.LOW, limits=ONE_CORE)
        u = await rt.spawn(urgent, name="urgent", priority=Priority.CRITICAL, limits=ONE_CORE)
        res = await rt.run_tasks([s.id, u.id], [Task(text=""), Task(text="")], timeout=5)
        assert res == ["slow", "urgent"]
        assert runs == ["urgent", "slow start", "slow end"]  # each once, never together
        assert rt.status().scheduler.preemptions == 1
        assert rt.state_of(s.id) is AgentState.READY
        idle(rt)
        # The worker is free again: the next task runs normally.
        assert await rt.run_task(s.id, Task(text=""), timeout=5) == "slow"


async def test_a_preempted_handler_that_never_awaits_does_not_run_before_its_preemptor() -> None:
    """A cancelled scope only stops a task at its next await: the eviction of a placed,
    unstarted task must withdraw it, or a handler that never awaits still runs first."""
    runs: list[str] = []

    async def low(msg: Task, ctx: symbi.Context) -> str:
        runs.append("low")
        return "low"

    async def urgent(msg: Task, ctx: symbi.Context) -> str:
        runs.append("urgent")
        return "urgent"

    async with symbi.Runtime(config(scheduler_threads=1)) as rt:
        lo = await rt.spawn(low, name="low", priority=Priority.LOW, limits=ONE_CORE)
        u = await rt.spawn(urgent, name="urgent", priority=Priority.CRITICAL, limits=ONE_CORE)
        res = await rt.run_tasks([lo.id, u.id], [Task(text=""), Task(text="")], timeout=5)
        assert res == ["low", "urgent"]
        assert runs == ["urgent", "low"]
        idle(rt)


async def test_removing_the_slot_of_a_running_agent_does_not_crash_the_runtime() -> None:
    calls: list[str] = []

    async def work(msg: Task, ctx: symbi.Context) -> str:
        calls.append(msg.text)
        await anyio.sleep(0.2)
        return "worked"

    async def quick(msg: Task, ctx: symbi.Context) -> str:
        return "quick"

    async with symbi.Runtime(config(scheduler_threads=2)) as rt:
        a = await rt.spawn(work, name="a", limits=ONE_CORE)
        b = await rt.spawn(quick, name="b", limits=ONE_CORE)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                results: dict[str, Any] = {}

                async def ask() -> None:
                    results["a"] = await rt.run_task(a.id, Task(text="once"), timeout=5)

                tg.start_soon(ask)
                while rt.state_of(a.id) is not AgentState.RUNNING:
                    await anyio.sleep(0.01)
                (slot,) = [k for k, v in rt.status().scheduler.slots.items() if v.running]
                # The scheduler requeues a's task and places it again on the other slot.
                assert len(rt.scheduler.remove_slot(slot)) == 1
                results["b"] = await rt.run_task(b.id, Task(text=""), timeout=5)
        assert results == {"a": "worked", "b": "quick"}
        assert calls == ["once"]  # handled once, not again for the second placement
        idle(rt)
        assert await rt.run_task(a.id, Task(text="again"), timeout=5) == "worked"
        assert calls == ["once", "again"]


# --------------------------------------------------------------- unschedulable limits
async def test_spawn_refuses_limits_no_slot_can_hold() -> None:
    async with symbi.Runtime(config(scheduler_threads=2)) as rt:
        with pytest.raises(
            InvalidArgument, match=r"cpu_cores=2 .*largest slot has cpu_cores=1"
        ) as ei:
            await rt.spawn(echo, name="big", limits=ResourceLimits(cpu_cores=2.0))
        assert ei.value.argument == "limits"
        assert rt.agents() == []
        idle(rt)
        # The name was never taken, and limits that fit are fine.
        h = await rt.spawn(echo, name="big", limits=ONE_CORE)
        assert await rt.run_task(h.id, Task(text="x"), timeout=5) == Task(text="x")


async def echo(msg: Task, ctx: symbi.Context) -> Task:
    return msg


async def test_a_task_refused_by_the_scheduler_does_not_stay_queued() -> None:
    """Slots shrank under the agent: the sender gets the error, and the message is neither
    left in the mailbox (nor charged to its memory) nor handled later."""
    handled: list[str] = []

    async def work(msg: Task, ctx: symbi.Context) -> str:
        handled.append(msg.text)
        return msg.text

    async with symbi.Runtime(config(scheduler_threads=1)) as rt:
        a = await rt.spawn(work, name="a", limits=ONE_CORE)
        rt.scheduler.add_slot(Slot("tiny", memory_mb=64, cpu_cores=0.5))
        rt.scheduler.remove_slot("worker-0")
        for text in ("first", "second"):
            with pytest.raises(InvalidArgument, match="more than any slot"):
                await rt.run_task(a.id, Task(text=text), timeout=1)
        with pytest.raises(InvalidArgument):
            await rt.send(Task(text="sent"), to=a.id, timeout=1)
        assert rt.status().mailbox_depth == 0
        assert rt.usage(a.id).memory_bytes == 0
        idle(rt)
        rt.scheduler.add_slot(Slot("big", memory_mb=64, cpu_cores=1.0))
        assert await rt.run_task(a.id, Task(text="third"), timeout=5) == "third"
        assert handled == ["third"]
        assert rt.dead_letters == []


async def test_mail_queued_when_the_slots_shrink_mid_task_is_dead_lettered() -> None:
    """One message per task (quantum 1): the agent's next task, submitted as the first
    ends, fits no slot any more. Its message goes to the dead-letter queue and its
    requester gets DeliveryError; the runtime carries on."""
    rt_box: list[symbi.Runtime] = []

    async def work(msg: Task, ctx: symbi.Context) -> str:
        if msg.text == "first":
            rt = rt_box[0]
            rt.scheduler.add_slot(Slot("tiny", memory_mb=64, cpu_cores=0.5))
            rt.scheduler.remove_slot("worker-0")
        return msg.text

    async with symbi.Runtime(config(scheduler_threads=1, dispatch_quantum=1)) as rt:
        rt_box.append(rt)
        a = await rt.spawn(work, name="a", limits=ONE_CORE)
        res = await rt.run_tasks(
            [a.id, a.id],
            [Task(text="first"), Task(text="second")],
            timeout=5,
            return_exceptions=True,
        )
        assert res[0] == "first"
        assert isinstance(res[1], DeliveryError) and res[1].reason == "unschedulable"
        (letter,) = rt.dead_letters
        assert letter.message == Task(text="second") and "cannot be scheduled" in letter.reason
        assert rt.status().mailbox_depth == 0 and rt.usage(a.id).memory_bytes == 0
        assert rt.state_of(a.id) is AgentState.READY
        idle(rt)


# --------------------------------------------------------------- on_start interrupted
class SlowStart(symbi.Agent):
    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.start_s = 1.0

    @symbi.handler
    async def on_task(self, msg: Task, ctx: symbi.Context) -> str:
        return "handled " + msg.text

    async def on_start(self) -> None:
        await anyio.sleep(self.start_s)
        self.started.append(self.name)

    async def on_stop(self) -> None:
        self.stopped.append(self.name)


async def test_cancelling_spawn_during_on_start_leaves_nothing_behind() -> None:
    async with symbi.Runtime(config()) as rt:
        seen: list[tuple[str, str]] = []
        rt.lifecycle.subscribe(lambda t: seen.append((t.from_state.value, t.to_state.value)))
        policies = rt.policy.ids()
        with anyio.move_on_after(0.05) as scope:
            await rt.spawn(SlowStart, name="slow", policies=["policy p { allow: [send] }"])
        assert scope.cancelled_caught
        assert rt.agents() == []
        assert rt.lifecycle.counts()["initializing"] == 0
        assert seen == [("initializing", "failed"), ("failed", "terminated")]
        assert rt.policy.ids() == policies  # its own policies went with it
        with pytest.raises(DeliveryError):
            await rt.send(Task(text="x"), to="slow", timeout=1)
        # The name is free again.
        fast = SlowStart()
        fast.start_s = 0.0
        h = await rt.spawn(fast, name="slow")
        assert await rt.run_task(h.id, Task(text="x"), timeout=5) == "handled x"


async def test_terminate_during_on_start_cancels_it_and_spawn_says_so() -> None:
    agent = SlowStart()
    async with symbi.Runtime(config()) as rt:
        errors: list[BaseException] = []

        async def spawn() -> None:
            try:
                await rt.spawn(agent, name="slow")
            except Exception as e:
                errors.append(e)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(spawn)
                await anyio.sleep(0.05)
                await rt.terminate("slow")
        (err,) = errors
        assert isinstance(err, SpawnError) and "terminated while initialising" in str(err)
        assert err.name == "slow"
        assert agent.started == []  # on_start was cancelled, not run to its end
        assert agent.stopped == ["slow"]
        assert rt.agents() == []


async def test_mail_sent_while_the_agent_initialises_is_handled_once_it_is_ready() -> None:
    agent = SlowStart()
    agent.start_s = 0.1
    async with symbi.Runtime(config()) as rt:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                results: list[Any] = []

                async def ask() -> None:
                    while "early" not in [a.name for a in rt.agents()]:
                        await anyio.sleep(0.005)
                    results.append(await rt.run_task("early", Task(text="x"), timeout=3))

                tg.start_soon(ask)
                await rt.spawn(agent, name="early")
        assert results == ["handled x"]


# ------------------------------------------------------------------ lifecycle arguments
def test_lifecycle_transition_coerces_and_validates_the_target_state() -> None:
    lc = LifecycleController()
    seen: list[Any] = []
    lc.subscribe(lambda t: seen.append((t.to_state.value, t.to_state is AgentState.READY)))
    lc.register("a")
    for bad in ("bogus", 5, None, ["ready"]):
        with pytest.raises(InvalidArgument) as ei:
            lc.transition("a", bad, "r")  # type: ignore[arg-type]
        assert ei.value.argument == "to"
    with pytest.raises(InvalidArgument) as ei:
        lc.transition("a", AgentState.READY, 5)  # type: ignore[arg-type]
    assert ei.value.argument == "reason"
    assert lc.state("a") is AgentState.INITIALIZING  # nothing changed
    lc.transition("a", "ready", "r")  # type: ignore[arg-type]
    assert lc.state("a") is AgentState.READY
    assert seen == [("ready", True)]
    assert lc.agents("ready") == ["a"]  # type: ignore[arg-type]
    assert lc.counts()["ready"] == 1 and lc.can("a", "running")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        lc.agents("nope")  # type: ignore[arg-type]


def test_lifecycle_refuses_bad_agent_ids() -> None:
    lc = LifecycleController()
    for bad in (123, None, ["x"], ""):
        with pytest.raises(InvalidArgument) as ei:
            lc.register(bad)  # type: ignore[arg-type]
        assert ei.value.argument == "agent_id"
        with pytest.raises(InvalidArgument):
            lc.state(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        lc.forget(["x"])  # type: ignore[arg-type]
    assert lc.agents() == []


async def test_a_manual_string_transition_keeps_the_runtime_and_audit_working() -> None:
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(echo, name="a")
        rt.lifecycle.transition(a.id, "running", "manual")  # type: ignore[arg-type]
        rt.lifecycle.transition(a.id, "ready", "manual")  # type: ignore[arg-type]
        assert rt.state_of(a.id) is AgentState.READY
        assert await rt.run_task(a.id, Task(text="x"), timeout=5) == Task(text="x")
        assert rt.audit is not None
        await rt.audit.flush()
        manual = [
            e.details
            for e in rt.audit.query(agent=a.id, type="agent.lifecycle")
            if e.details["reason"] == "manual"
        ]
        assert [d["to"] for d in manual] == ["running", "ready"]


# ------------------------------------------------------------------ scheduler facade
def make() -> Scheduler:
    s = Scheduler([Slot("s0", 100, 4)])
    s._set_clock(0.0)
    return s


def test_scheduler_cancel_validates_the_id() -> None:
    s = make()
    s.submit(1)
    for bad in ("x", -1, True, 2**64, 1.0):
        with pytest.raises(InvalidArgument) as ei:
            s.cancel(bad)  # type: ignore[arg-type]
        assert ei.value.argument == "task_id"
    assert s.cancel(99) is False  # a valid id that is not queued or running
    assert s.cancel(1) is True and len(s) == 0


def test_scheduler_submit_many_checks_entries_as_submit_does() -> None:
    s = make()
    s.submit(5)
    for batch, where in [
        (5, "tasks must be an iterable"),
        ("abcd", "tasks must be an iterable"),
        ([(True, 2, 0.0, 0.0)], r"tasks\[0\]: task_id"),
        ([(1, 2, 0.0, 0.0), (2, True, 0.0, 0.0)], r"tasks\[1\]: task 2: priority"),
        ([(1, 2, True, 0.0)], r"tasks\[0\]: task 1: memory_mb"),
        ([(1, 2, float("nan"), 0.0)], r"tasks\[0\]: task 1: memory_mb"),
        ([[1, 2, 0.0, 0.0]], r"tasks\[0\]: expected a tuple"),
    ]:
        with pytest.raises(InvalidArgument, match=where) as ei:
            s.submit_many(batch)  # type: ignore[arg-type]
        assert ei.value.argument == "tasks"
        assert len(s) == 1  # all or nothing
    s.submit_many([(1, 2, 0.0, 0.0), (2, 0, 1, 1)])
    assert len(s) == 3


def test_scheduler_schedule_takes_any_large_max_decisions() -> None:
    s = make()
    s.submit_many([(i, 2, 0.0, 0.0) for i in range(3)])
    assert [p.task_id for p in s.schedule(2**70)] == [0, 1, 2]
