from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

import symbi
from symbi import Agent, Config, Priority, ResourceLimits, RuntimeConfig, handler
from symbi.errors import (
    DeliveryError,
    InvalidArgument,
    PolicyDenied,
    RequestTimeout,
    ResourceLimitExceeded,
)
from symbi.lifecycle import AgentState

pytestmark = pytest.mark.anyio
EXAMPLE_AGENTS = Path(__file__).resolve().parents[2] / "examples" / "agents"


class Task(symbi.Message):
    text: str


class Urgent(Task):
    pass


class Sleep(symbi.Message):
    seconds: float


class Echo(Agent):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    @handler
    async def on_task(self, msg: Task, ctx: symbi.Context) -> Task:
        self.seen.append(msg.text)
        return Task(text=msg.text.upper())

    @handler
    async def on_sleep(self, msg: Sleep, ctx: symbi.Context) -> str:
        await anyio.sleep(msg.seconds)
        return f"slept {msg.seconds}"


def config(**runtime: object) -> Config:
    base = {"gc_interval_ms": 50, "shutdown_grace_s": 1.0, **runtime}
    return Config().replace(runtime=RuntimeConfig(**base))  # type: ignore[arg-type]


async def test_request_runs_the_handler_for_the_type_and_its_subclasses():
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(Echo, name="echo", priority=Priority.HIGH)
        assert rt.state_of(a.id) is AgentState.READY
        assert await rt.request(a.id, Task(text="hi"), timeout=2) == Task(text="HI")
        # Urgent has no handler of its own: the nearest base class's handles it.
        assert await rt.request("echo", Urgent(text="x"), timeout=2) == Task(text="X")
        assert rt.usage(a.id).tasks == 2


async def test_a_function_is_an_agent():
    async def double(msg: Task, ctx: symbi.Context) -> str:
        return msg.text * 2

    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(double, name="double")
        assert await rt.request(a.id, Task(text="ab"), timeout=2) == "abab"


async def test_messages_to_one_agent_are_handled_in_order():
    agent = Echo()
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(agent, name="echo")
        for i in range(50):
            await rt.send(Task(text=str(i)), to=a.id, timeout=2)
        await rt.request(a.id, Task(text="last"), timeout=5)
    assert agent.seen == [*map(str, range(50)), "last"]


async def test_lifecycle_of_a_task_is_observed_and_audited():
    async with symbi.Runtime(config()) as rt:
        seen: list[tuple[str, str]] = []
        rt.lifecycle.subscribe(lambda t: seen.append((t.from_state.value, t.to_state.value)))
        a = await rt.spawn(Echo, name="echo")
        await rt.request(a.id, Task(text="x"), timeout=2)
        assert seen == [("initializing", "ready"), ("ready", "running"), ("running", "ready")]
        assert rt.audit is not None
        await rt.audit.flush()
        kinds = [(e.event_type, e.details.get("to")) for e in rt.audit.query(agent=a.id)]
        assert ("agent.spawn", None) in kinds
        assert ("agent.lifecycle", "running") in kinds and ("agent.lifecycle", "ready") in kinds


@pytest.mark.parametrize(("quantum", "periods"), [(1, 10), (4, 3), (64, 1)])
async def test_queued_mail_is_handled_in_dispatches_of_the_quantum(quantum, periods):
    """Mail that queued up while the agent was busy is handled in Running periods of at
    most ``dispatch_quantum`` messages each, in order, each message answered."""
    async with symbi.Runtime(config(dispatch_quantum=quantum)) as rt:
        agent = Echo()
        a = await rt.spawn(agent, name="echo")
        ran: list[str] = []
        rt.lifecycle.subscribe(
            lambda t: ran.append(t.reason) if t.to_state is AgentState.RUNNING else None
        )
        replies: list[object] = []

        async def ask(i: int) -> None:
            replies.append(await rt.request(a.id, Task(text=str(i)), timeout=5))

        async with anyio.create_task_group() as tg:
            # Queue all ten before the agent runs: the requests are sealed as one batch.
            for i in range(10):
                tg.start_soon(ask, i)
        assert agent.seen == [str(i) for i in range(10)]
        assert sorted(r.text for r in replies) == [str(i) for i in range(10)]  # type: ignore[attr-defined]
        assert len(ran) == periods
        assert rt.status().tasks_completed == 10
        assert rt.state_of(a.id) is AgentState.READY


async def test_undeliverable_messages_raise_and_are_dead_lettered():
    class Other(symbi.Message):
        n: int

    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(Echo, name="echo")
        with pytest.raises(DeliveryError) as ei:
            await rt.send(Other(n=1), to=a.id)
        assert ei.value.reason == "no handler"
        with pytest.raises(DeliveryError, match="unknown agent 'nobody'"):
            await rt.send(Task(text="x"), to="nobody")
        first, second = rt.dead_letters
        assert (first.recipient, first.message, first.reason) == (a.id, Other(n=1), "no handler")
        assert len(first.id) == 32 and first.sender == rt.bus.runtime_id
        assert (second.recipient, second.message) == ("nobody", Task(text="x"))
        assert "unknown" in second.reason
        assert rt.status().dead_letters == 2


async def test_handler_errors_reach_the_requester_and_the_agent_carries_on():
    async def picky(msg: Task, ctx: symbi.Context) -> str:
        if msg.text == "bad":
            raise ValueError("cannot handle bad")
        return "ok"

    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(picky, name="picky")
        with pytest.raises(ValueError, match="cannot handle bad"):
            await rt.request(a.id, Task(text="bad"), timeout=2)
        assert await rt.request(a.id, Task(text="good"), timeout=2) == "ok"


async def test_request_timeout_and_the_late_reply_is_dropped_and_counted():
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(Echo, name="echo")
        with pytest.raises(RequestTimeout) as ei:
            await rt.request(a.id, Sleep(seconds=0.2), timeout=0.05)
        assert ei.value.timeout == 0.05
        assert ei.value.recipient == a.id
        # Requests with other deadlines are not disturbed by the expired one.
        assert await rt.request(a.id, Task(text="next"), timeout=2) == Task(text="NEXT")
        st = rt.status()
        assert st.request_timeouts == 1
        assert st.late_replies == 1


async def test_many_concurrent_requests_with_mixed_deadlines():
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(Echo, name="echo")
        outcomes: list[str] = []

        async def ask(seconds: float, timeout: float) -> None:
            try:
                await rt.request(a.id, Sleep(seconds=seconds), timeout=timeout)
                outcomes.append("ok")
            except RequestTimeout:
                outcomes.append("timeout")

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, 0.0, 5.0)
            tg.start_soon(ask, 0.0, 5.0)
            tg.start_soon(ask, 0.5, 0.1)  # this one times out; the others queue behind it
            tg.start_soon(ask, 0.0, 5.0)
        assert sorted(outcomes) == ["ok", "ok", "ok", "timeout"]


async def test_execution_timeout_cancels_the_task_and_the_agent_returns_to_ready():
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(Echo, name="echo", limits=ResourceLimits(execution_timeout=0.05))
        with pytest.raises(ResourceLimitExceeded) as ei:
            await rt.request(a.id, Sleep(seconds=5), timeout=2)
        assert ei.value.resource == "execution_timeout"
        assert rt.state_of(a.id) is AgentState.READY
        assert rt.usage(a.id).timeouts == 1
        assert await rt.request(a.id, Task(text="after"), timeout=2) == Task(text="AFTER")


async def test_timeout_policy_suspend_then_resume():
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(
            Echo, name="echo", limits={"execution_timeout": 0.05}, on_timeout="suspend"
        )
        with pytest.raises(ResourceLimitExceeded):
            await rt.request(a.id, Sleep(seconds=5), timeout=2)
        assert rt.state_of(a.id) is AgentState.SUSPENDED
        await rt.send(Task(text="queued while suspended"), to=a.id)
        with pytest.raises(RequestTimeout):
            await rt.request(a.id, Task(text="waits"), timeout=0.1)
        rt.resume(a.id)
        assert await rt.request(a.id, Task(text="resumed"), timeout=2) == Task(text="RESUMED")


async def test_memory_cap_refuses_messages_past_the_limit():
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(Echo, name="echo", limits=ResourceLimits(memory_mb=0.01))
        with pytest.raises(ResourceLimitExceeded) as ei:
            await rt.send(Task(text="x" * 20_000), to=a.id)
        assert ei.value.resource == "memory"
        assert await rt.request(a.id, Task(text="small"), timeout=2) == Task(text="SMALL")
        assert await limit_events(rt, a.id) == [("memory", float(int(0.01 * 1024 * 1024)))]


async def limit_events(rt: symbi.Runtime, agent: str) -> list[tuple[str, object]]:
    assert rt.audit is not None
    await rt.audit.flush()
    return [
        (e.details["resource"], e.details["limit"])
        for e in rt.audit.query(agent=agent)
        if e.event_type == "resource.limit_exceeded"
    ]


class Flaky(Agent):
    """Raises its own TimeoutError (an upstream call that timed out, say)."""

    @handler
    async def on_task(self, msg: Task, ctx: symbi.Context) -> None:
        if msg.text == "await":
            await anyio.sleep(0.001)
        raise TimeoutError(f"upstream timed out ({msg.text})")


@pytest.mark.parametrize("limits", [None, ResourceLimits(execution_timeout=30)])
async def test_a_handlers_own_timeout_error_is_not_a_limit(limits):
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(Flaky, name="flaky", limits=limits, on_timeout="suspend")
        for text in ("at once", "await"):
            with pytest.raises(TimeoutError, match="upstream") as ei:
                await rt.request(a.id, Task(text=text), timeout=5)
            assert not isinstance(ei.value, ResourceLimitExceeded)
        assert rt.usage(a.id).timeouts == 0
        assert rt.state_of(a.id) is AgentState.READY  # not suspended
        assert await limit_events(rt, a.id) == []


class Writer(Agent):
    @handler
    async def on_task(self, msg: Task, ctx: symbi.Context) -> str:
        await ctx.disk_io(int(msg.text), timeout=0.05)
        return "written"


@pytest.mark.parametrize("on_timeout", ["ready", "suspend"])
async def test_an_io_budget_that_cannot_be_met_in_time_is_a_limit(on_timeout):
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(
            Writer, name="w", limits=ResourceLimits(disk_io_mbps=1), on_timeout=on_timeout
        )
        assert await rt.request(a.id, Task(text="1000"), timeout=5) == "written"
        with pytest.raises(ResourceLimitExceeded) as ei:  # 10 MB at 1 MB/s: not in 50 ms
            await rt.request(a.id, Task(text=str(10 * 1024 * 1024)), timeout=5)
        assert (ei.value.resource, ei.value.limit) == ("disk_io", 1.0)
        assert rt.usage(a.id).timeouts == 0  # not the task's execution_timeout
        assert await limit_events(rt, a.id) == [("disk_io", 1.0)]
        want = AgentState.SUSPENDED if on_timeout == "suspend" else AgentState.READY
        assert rt.state_of(a.id) is want


async def test_cpu_debt_of_a_handler_that_never_awaits_is_paid_before_its_next_message():
    cores = 0.25

    async def burn(msg: Task, ctx: symbi.Context) -> None:
        end = time.thread_time() + 0.03  # 30 ms of CPU in one step: no await to pause at
        while time.thread_time() < end:
            pass

    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(burn, name="burn", limits=ResourceLimits(cpu_cores=cores))
        t0 = time.monotonic()
        await rt.run_tasks(a.id, [Task(text=str(i)) for i in range(10)], timeout=30)
        elapsed = time.monotonic() - t0
        usage = rt.usage(a.id)
    # Within its share: cores x elapsed, plus the bucket's burst (0.1 s of cores) and the
    # last message, whose debt is owed until the next one. Unthrottled, cpu_s ~ elapsed.
    assert usage.cpu_s >= 0.3
    assert usage.cpu_s <= cores * elapsed + cores * 0.1 + 0.03 + 0.01
    assert usage.throttled_s > 0


async def test_full_mailbox_fails_or_waits_by_config():
    async with symbi.Runtime(config(message_buffer_size=2, full_mailbox="fail")) as rt:
        a = await rt.spawn(Echo, name="echo")
        await rt.send(Sleep(seconds=0.3), to=a.id)  # running
        await rt.send(Task(text="1"), to=a.id)
        await rt.send(Task(text="2"), to=a.id)
        with pytest.raises(DeliveryError) as ei:
            await rt.send(Task(text="3"), to=a.id)
        assert ei.value.reason == "mailbox full"
    async with symbi.Runtime(config(message_buffer_size=1, full_mailbox="wait")) as rt:
        agent = Echo()
        a = await rt.spawn(agent, name="echo")
        await rt.send(Sleep(seconds=0.05), to=a.id)
        await rt.send(Task(text="1"), to=a.id)
        await rt.send(Task(text="2"), to=a.id, timeout=2)  # waits for space, then succeeds
        await rt.request(a.id, Task(text="3"), timeout=2)
        assert agent.seen == ["1", "2", "3"]


async def test_senders_waiting_on_a_full_mailbox_get_in_first_come_first_served():
    async with symbi.Runtime(config(message_buffer_size=1, full_mailbox="wait")) as rt:
        agent = Echo()
        a = await rt.spawn(agent, name="echo")
        await rt.send(Sleep(seconds=1.0), to=a.id)  # running while the senders line up
        await rt.send(Task(text="0"), to=a.id)  # fills the mailbox
        rec = rt._host._rec(a.id)
        async with anyio.create_task_group() as tg:
            for i in range(1, 30):
                tg.start_soon(lambda i=i: rt.send(Task(text=str(i)), to=a.id, timeout=10))
                with anyio.fail_after(5):  # each sender is waiting before the next comes
                    while len(rec.space or ()) < i:
                        await anyio.sleep(0.001)
        await rt.request(a.id, Task(text="end"), timeout=5)
        assert agent.seen == [str(i) for i in range(30)] + ["end"]
        # a waiter that gives up does not swallow the wake-up meant for the next one
        await rt.send(Sleep(seconds=0.2), to=a.id)
        await rt.send(Task(text="fill"), to=a.id)
        async with anyio.create_task_group() as tg:

            async def impatient() -> None:
                with pytest.raises(DeliveryError):
                    await rt.send(Task(text="gave up"), to=a.id, timeout=0.05)

            tg.start_soon(impatient)
            await anyio.sleep(0.01)
            tg.start_soon(lambda: rt.send(Task(text="patient"), to=a.id, timeout=5))
        await rt.request(a.id, Task(text="last"), timeout=5)
        assert agent.seen[-3:] == ["fill", "patient", "last"]


async def test_higher_priority_runs_first_when_capacity_is_short():
    order: list[str] = []

    def make(tag: str):
        async def work(msg: Task, ctx: symbi.Context) -> None:
            order.append(tag)
            await anyio.sleep(0.01)

        return work

    # One worker slot, and each agent reserves the whole core: one task at a time.
    async with symbi.Runtime(config(scheduler_threads=1, preemption=False)) as rt:
        one_core = ResourceLimits(cpu_cores=1.0)
        blocker = await rt.spawn(make("blocker"), name="blocker", limits=one_core)
        low = await rt.spawn(make("low"), name="low", priority=Priority.LOW, limits=one_core)
        high = await rt.spawn(make("high"), name="high", priority=Priority.HIGH, limits=one_core)
        await rt.send(Task(text=""), to=blocker.id)
        await rt.send(Task(text=""), to=low.id)
        await rt.send(Task(text=""), to=high.id)
        with anyio.fail_after(5):
            while len(order) < 3:
                await anyio.sleep(0.01)
    assert order == ["blocker", "high", "low"]


async def test_preemption_suspends_the_lower_priority_agent_and_resumes_it():
    runs: list[str] = []

    async def slow(msg: Task, ctx: symbi.Context) -> str:
        runs.append("slow start")
        await anyio.sleep(0.3)
        runs.append("slow end")
        return "slow done"

    async def urgent(msg: Task, ctx: symbi.Context) -> str:
        runs.append("urgent")
        return "urgent done"

    async with symbi.Runtime(config(scheduler_threads=1)) as rt:
        one_core = ResourceLimits(cpu_cores=1.0)
        s = await rt.spawn(slow, name="slow", priority=Priority.LOW, limits=one_core)
        u = await rt.spawn(urgent, name="urgent", priority=Priority.CRITICAL, limits=one_core)
        states: list[tuple[str, str]] = []
        rt.lifecycle.subscribe(
            lambda t: states.append((t.agent_id, t.to_state.value)) if t.agent_id == s.id else None
        )
        async with anyio.create_task_group() as tg:
            results: dict[str, str] = {}

            async def ask(ref: str, key: str) -> None:
                results[key] = await rt.request(ref, Task(text=""), timeout=5)

            tg.start_soon(ask, s.id, "slow")
            await anyio.sleep(0.05)  # slow is running
            tg.start_soon(ask, u.id, "urgent")
        assert results == {"slow": "slow done", "urgent": "urgent done"}
        assert rt.status().scheduler.preemptions == 1
    # slow was preempted (its first run cancelled), urgent ran, then slow ran again whole.
    assert runs == ["slow start", "urgent", "slow start", "slow end"]
    assert (s.id, "suspended") in states


async def test_policy_decides_agent_creation_and_resource_requests():
    async with symbi.Runtime(config()) as rt:
        rt.policy.register(
            'policy guard { deny: [create_agent] if principal == "rogue"  '
            "deny: [request_resources] if context.memory_mb > 512 }"
        )
        with pytest.raises(PolicyDenied):
            await rt.spawn(Echo, name="rogue")
        with pytest.raises(PolicyDenied):
            await rt.spawn(Echo, name="greedy", limits=ResourceLimits(memory_mb=4096))
        ok = await rt.spawn(Echo, name="modest", limits=ResourceLimits(memory_mb=64))
        assert rt.state_of(ok.id) is AgentState.READY


async def test_failed_start_leaves_the_agent_failed():
    class Broken(Echo):
        async def on_start(self) -> None:
            raise RuntimeError("no model")

    async with symbi.Runtime(config()) as rt:
        with pytest.raises(symbi.SpawnError) as ei:
            await rt.spawn(Broken, name="broken")
        aid = ei.value.agent_id
        assert rt.state_of(aid) is AgentState.FAILED
        with pytest.raises(DeliveryError):
            await rt.send(Task(text="x"), to=aid)
        await rt.terminate(aid)
        with pytest.raises(DeliveryError):
            rt.state_of(aid)


async def test_terminate_dead_letters_pending_mail_and_fails_its_requests():
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(
            Echo, name="echo", limits={"execution_timeout": 0.05}, on_timeout="suspend"
        )
        with pytest.raises(ResourceLimitExceeded):
            await rt.request(a.id, Sleep(seconds=1), timeout=2)
        async with anyio.create_task_group() as tg:
            errors: list[BaseException] = []

            async def ask() -> None:
                try:
                    await rt.request(a.id, Task(text="never"), timeout=2)
                except DeliveryError as e:
                    errors.append(e)

            tg.start_soon(ask)
            await anyio.sleep(0.05)
            await rt.terminate(a.id)
        assert len(errors) == 1 and errors[0].reason == "terminated"
        assert any(
            d.recipient == a.id
            and d.message == Task(text="never")
            and d.reason == "recipient terminated: manual override"
            for d in rt.dead_letters
        )


async def test_max_concurrent_agents_is_enforced():
    async with symbi.Runtime(config(max_concurrent_agents=2)) as rt:
        await rt.spawn(Echo, name="a")
        await rt.spawn(Echo, name="b")
        with pytest.raises(ResourceLimitExceeded) as ei:
            await rt.spawn(Echo, name="c")
        assert ei.value.resource == "agents"


async def test_bad_spawn_arguments():
    class NoHandlers(Agent):
        pass

    async with symbi.Runtime(config()) as rt:
        with pytest.raises(InvalidArgument, match=r"no @symbi\.handler"):
            await rt.spawn(NoHandlers)
        with pytest.raises(InvalidArgument, match="priority"):
            await rt.spawn(Echo, priority="urgent-ish")
        with pytest.raises(InvalidArgument, match="cannot make an agent"):
            await rt.spawn(print)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await rt.spawn(Echo, limits={"memory_mb": -5})
        await rt.spawn(Echo, name="dup")
        with pytest.raises(InvalidArgument, match="already running"):
            await rt.spawn(Echo, name="dup")
        a = await rt.spawn(Echo, name="x")
        with pytest.raises(InvalidArgument):
            await rt.send("not a message", to=a.id)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await rt.send(Task(text="x"), to=a.id, timeout=-1)


def test_handler_declarations_are_checked():
    with pytest.raises(InvalidArgument, match="async def"):

        @handler  # type: ignore[type-var]
        def not_async(self, msg: Task, ctx: symbi.Context) -> None: ...

    with pytest.raises(InvalidArgument, match="Message subclass"):

        class Bad(Agent):
            @handler
            async def on(self, msg: int, ctx: symbi.Context) -> None: ...


async def test_status_counts_agents_by_state():
    class Broken(Echo):
        async def on_start(self) -> None:
            raise RuntimeError("no database")

    async with symbi.Runtime(config()) as rt:
        handles = [await rt.spawn(Echo, name=f"e{i}") for i in range(5)]
        assert rt.status().agents["ready"] == 5
        await rt.terminate(handles[0].id)
        with pytest.raises(symbi.SpawnError):
            await rt.spawn(Broken, name="broken")
        decisions = rt.status().scheduler.decisions
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.request, handles[1].id, Sleep(seconds=0.5))
            with anyio.fail_after(5):  # until the scheduler has started it
                while rt.lifecycle.state(handles[1].id) is not AgentState.RUNNING:
                    await anyio.sleep(0.005)
            st = rt.status()
        # A terminated agent's record is dropped (memory stays flat), so it is not counted.
        counts = {k: v for k, v in st.agents.items() if v}
        assert counts == {"ready": 3, "running": 1, "failed": 1}
        assert st.scheduler.decisions > decisions


async def test_spawn_from_a_dsl_definition_scopes_its_policies_to_the_agent():
    import symbi.dsl

    definition = symbi.dsl.parse_file(EXAMPLE_AGENTS / "log_auditor.symbi").agent("log_auditor")
    async with symbi.Runtime(config()) as rt:
        a = await rt.spawn(Echo, **definition.spec())
        assert a.sandbox == "Tier2" and a.security == "high" and a.memory == "persistent"
        assert a.limits.memory_mb == 1024 and a.limits.execution_timeout == 300
        assert set(a.capabilities) == {"read_logs", "write_report"}
        (pid,) = a.policy_ids
        assert rt.policy.get(pid).principals == ["log_auditor", a.id]

        def decide(principal: str) -> symbi.Decision:
            return rt.policy.evaluate(
                symbi.PolicyRequest(principal=principal, action="write_report", resource="r")
            )

        assert decide(a.id).allowed
        assert not decide("someone-else").allowed  # scoped: it does not allow others
        await rt.terminate(a.id)
        assert pid not in rt.policy.ids()
        assert not decide(a.id).allowed
