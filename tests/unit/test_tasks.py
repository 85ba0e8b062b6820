"""Tasks the application hands to its own agents (``rt.run_task`` / ``rt.run_tasks``):
scheduled, run under the agents' lifecycle and limits, admitted by the policy and rate
limit as a request would be, dead-lettered when undeliverable, but not sealed (they never
leave the process)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import symbi
from symbi.errors import (
    DeliveryError,
    InvalidArgument,
    PolicyDenied,
    RateLimited,
    RequestTimeout,
    ResourceLimitExceeded,
)

pytestmark = pytest.mark.anyio


class Job(symbi.Message):
    n: int
    text: str = ""


class Other(symbi.Message):
    text: str


class Worker(symbi.Agent):
    def __init__(self) -> None:
        super().__init__()
        self.done: list[int] = []

    @symbi.handler
    async def on_job(self, msg: Job, ctx: symbi.Context) -> int:
        if msg.text == "boom":
            raise ValueError(f"job {msg.n} failed")
        if msg.text == "slow":
            await anyio.sleep(0.5)
        assert ctx.sender is None  # the application, not an agent
        self.done.append(msg.n)
        return msg.n * 2


def _worker(rt: symbi.Runtime, agent_id: str) -> Worker:
    agent = rt._host._rec(agent_id).agent
    assert isinstance(agent, Worker)
    return agent


async def test_tasks_run_on_their_agents_in_order_and_unsealed() -> None:
    async with symbi.Runtime() as rt:
        sealed: list[bytes] = []
        rt.bus.add_wiretap(sealed.append)
        a = await rt.spawn(Worker, name="a")
        b = await rt.spawn(Worker, name="b")
        to = ["a" if i % 3 else b.id for i in range(300)]  # names and ids both resolve
        got = await rt.run_tasks(to, [Job(n=i) for i in range(300)], timeout=10)
        assert got == [i * 2 for i in range(300)]
        # Each agent handled its own share, in the order given (one mailbox per agent).
        assert _worker(rt, a.id).done == [i for i in range(300) if i % 3]
        assert _worker(rt, b.id).done == [i for i in range(300) if not i % 3]
        assert await rt.run_task("a", Job(n=21), timeout=2) == 42
        assert rt.status().tasks_completed == 301
        assert rt.state_of("a") is symbi.AgentState.READY
        assert rt.usage(a.id).tasks == 201
        # No envelope was sealed and nothing crossed the transport.
        assert sealed == [] and rt.bus.stats.requests == 0


async def test_task_failures_take_their_place_and_undeliverable_ones_are_dead_lettered() -> None:
    async with symbi.Runtime() as rt:
        await rt.spawn(Worker, name="clerk")
        gone = await rt.spawn(Worker, name="gone")
        await rt.terminate(gone.id)
        out = await rt.run_tasks(
            ["clerk", "clerk", "nobody", gone.id, "clerk", "clerk"],
            [Job(n=1), Job(n=2, text="boom"), Job(n=3), Job(n=4), Other(text="x"), Job(n=6)],
            timeout=5,
            return_exceptions=True,
        )
        assert out[0] == 2 and out[5] == 12
        assert isinstance(out[1], ValueError) and "job 2 failed" in str(out[1])
        assert isinstance(out[2], DeliveryError) and out[2].reason == "unknown recipient"
        assert isinstance(out[3], DeliveryError) and "terminated" in str(out[3])
        assert isinstance(out[4], DeliveryError) and out[4].reason == "no handler"
        letters = rt.dead_letters
        assert [(d.recipient, d.message_type) for d in letters] == [
            ("nobody", "test_tasks.Job"),
            (gone.id, "test_tasks.Job"),
            (rt._host.resolve("clerk"), "test_tasks.Other"),
        ]
        assert letters[0].message == Job(n=3)
        # Without return_exceptions the first failure is raised once all have settled.
        with pytest.raises(ValueError, match="job 8 failed"):
            await rt.run_tasks("clerk", [Job(n=7), Job(n=8, text="boom")], timeout=2)
        with pytest.raises(DeliveryError):
            await rt.run_task("nobody", Job(n=9), timeout=1)
        assert rt.dead_letters[-1].recipient == "nobody"


async def test_task_timeout_counts_the_late_result() -> None:
    async with symbi.Runtime() as rt:
        await rt.spawn(Worker, name="w")
        with pytest.raises(RequestTimeout) as ei:
            await rt.run_task("w", Job(n=1, text="slow"), timeout=0.1)
        assert ei.value.timeout == 0.1
        out = await rt.run_tasks(
            "w", [Job(n=2, text="slow"), Job(n=3)], timeout=0.2, return_exceptions=True
        )
        assert all(isinstance(x, RequestTimeout) for x in out)
        with anyio.fail_after(5):  # the handlers finish later: dropped and counted
            while rt.status().late_replies < 3:
                await anyio.sleep(0.01)
        assert rt.status().request_timeouts == 3
        assert await rt.run_task("w", Job(n=5), timeout=2) == 10


async def test_tasks_are_policy_checked_with_their_labels() -> None:
    async with symbi.Runtime() as rt:
        await rt.spawn(Worker, name="vendor")
        await rt.spawn(Worker, name="clerk")
        rt.policy.register(
            """
            policy no_pii_out {
                deny: [send] if "pii" in context.data_labels && resource.attrs.name == "vendor"
            }
            """
        )
        with pytest.raises(PolicyDenied) as ei:
            await rt.run_task("vendor", Job(n=1), labels=["pii"], timeout=2)
        assert "no_pii_out" in str(ei.value.decision)
        out = await rt.run_tasks(
            ["vendor", "clerk", "vendor"],
            [Job(n=1), Job(n=2), Job(n=3)],
            labels=("pii",),
            timeout=2,
            return_exceptions=True,
        )
        assert isinstance(out[0], PolicyDenied) and out[1] == 4 and isinstance(out[2], PolicyDenied)
        assert await rt.run_task("vendor", Job(n=4), timeout=2) == 8  # no label: allowed
        assert not rt.dead_letters  # refused by policy, not lost in delivery


async def test_tasks_pass_the_runtime_rate_limit() -> None:
    cfg = symbi.Config.from_dict({"bus": {"rate_limit": 5, "rate_limit_mode": "fail"}})
    async with symbi.Runtime(cfg) as rt:
        await rt.spawn(Worker, name="w")
        out = await rt.run_tasks(
            "w", [Job(n=i) for i in range(8)], timeout=2, return_exceptions=True
        )
        assert out[:5] == [0, 2, 4, 6, 8]  # the burst of 5 passes at once
        assert all(isinstance(x, RateLimited) for x in out[5:])
        with pytest.raises(RateLimited):
            await rt.run_task("w", Job(n=9), timeout=2)


@pytest.mark.parametrize("full_mailbox", ["wait", "fail"])
async def test_more_tasks_than_the_mailbox_holds(full_mailbox: str) -> None:
    cfg = symbi.Config().replace(
        runtime=symbi.RuntimeConfig(message_buffer_size=16, full_mailbox=full_mailbox)
    )
    async with symbi.Runtime(cfg) as rt:
        await rt.spawn(Worker, name="w")
        out = await rt.run_tasks(
            "w", [Job(n=i) for i in range(200)], timeout=10, return_exceptions=True
        )
        done = [x for x in out if isinstance(x, int)]
        refused = [x for x in out if isinstance(x, DeliveryError)]
        assert len(done) + len(refused) == 200
        if full_mailbox == "wait":
            assert done == [i * 2 for i in range(200)] and not rt.dead_letters
        else:
            assert 16 <= len(done) < 200
            assert all(e.reason == "mailbox full" for e in refused)
            assert len(rt.dead_letters) == len(refused)


async def test_a_task_over_the_agents_memory_limit_is_refused() -> None:
    async with symbi.Runtime() as rt:
        await rt.spawn(
            Worker, name="small", limits=symbi.ResourceLimits(memory_mb=0.001)
        )  # about 1 KB of buffers
        with pytest.raises(ResourceLimitExceeded) as ei:
            await rt.run_task("small", Job(n=1, text="x" * 4096), timeout=2)
        assert ei.value.resource == "memory"
        assert await rt.run_task("small", Job(n=2), timeout=2) == 4


async def test_run_tasks_refuses_bad_arguments() -> None:
    async with symbi.Runtime() as rt:
        await rt.spawn(Worker, name="w")
        bad: list[tuple[Any, Any]] = [
            ("w", Job(n=1)),
            ("w", [Job(n=1), "not a message"]),
            (["w"], [Job(n=1), Job(n=2)]),
            ([None], [Job(n=1)]),
            (42, [Job(n=1)]),
        ]
        for to, msgs in bad:
            with pytest.raises(InvalidArgument):
                await rt.run_tasks(to, msgs, timeout=1)
        with pytest.raises(InvalidArgument):
            await rt.run_tasks("w", [Job(n=1)], timeout=-1)
        with pytest.raises(InvalidArgument):
            await rt.run_tasks("w", [Job(n=1)], labels="pii", timeout=1)
        with pytest.raises(InvalidArgument):
            await rt.run_task("w", "not a message", timeout=1)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await rt.run_task(42, Job(n=1), timeout=1)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await rt.run_task("w", Job(n=1), timeout=0)
        assert await rt.run_tasks("w", [], timeout=1) == []


async def test_run_tasks_outside_a_running_runtime() -> None:
    rt = symbi.Runtime()
    with pytest.raises(symbi.errors.RuntimeStateError):
        await rt.run_task("w", Job(n=1), timeout=1)


async def test_tasks_after_the_deadline_are_not_handed_over() -> None:
    """A batch that waits for mailbox room past its deadline hands nothing more over:
    the rest raise RequestTimeout and no agent runs them."""
    cfg = symbi.Config().replace(runtime=symbi.RuntimeConfig(message_buffer_size=4))
    async with symbi.Runtime(cfg) as rt:
        w = await rt.spawn(Worker, name="w")
        jobs = [Job(n=0, text="slow")] + [Job(n=i) for i in range(1, 40)]
        out = await rt.run_tasks("w", jobs, timeout=0.2, return_exceptions=True)
        # Job 0 runs, 1-4 fill the mailbox, 5 waits for room until the deadline (refused,
        # dead-lettered), and 6-39 are never handed over.
        assert isinstance(out[5], DeliveryError) and out[5].reason == "mailbox full"
        assert all(isinstance(x, RequestTimeout) for x in out[:5] + out[6:])
        assert rt.status().request_timeouts == 39
        assert [d.message for d in rt.dead_letters] == [Job(n=5)]
        with anyio.fail_after(5):  # what was handed over still runs, late
            while rt.status().mailbox_depth or rt.state_of("w") is not symbi.AgentState.READY:
                await anyio.sleep(0.02)
        assert sorted(_worker(rt, w.id).done) == [0, 1, 2, 3, 4]
