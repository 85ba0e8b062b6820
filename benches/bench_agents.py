"""Agents: how many a process holds, how fast they spawn, what idling costs, and how
close short-task throughput comes to running the same coroutines bare.

Peers, in the same run:
* held agents and spawn rate: the design most asyncio programs start from, one task
  blocked on its own ``asyncio.Queue`` per agent;
* short tasks: ``asyncio.gather`` of the very same handler coroutines, with no agent,
  scheduler, lifecycle or reply machinery around them.
The runtime runs with its audit trail in memory (every lifecycle transition is audited);
that cost is part of the measurement.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

import anyio
import pytest

import symbi
from conftest import size

N_IDLE = size(100_000, 10_000)
N_TASKS = size(100_000, 10_000)
N_WORKERS = 100


class Tick(symbi.Message):
    n: int


async def handle(msg: Tick, ctx: Any) -> int:
    return msg.n


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def config() -> symbi.Config:
    return symbi.Config().replace(
        runtime=symbi.RuntimeConfig(max_concurrent_agents=N_IDLE + 10, gc_interval_ms=1000)
    )


def measure_symbi_idle() -> dict[str, float]:
    out: dict[str, float] = {}

    async def main() -> None:
        async with symbi.Runtime(config()) as rt:
            gc.collect()
            before = rss_bytes()
            t0 = time.perf_counter()
            for i in range(N_IDLE):
                await rt.spawn(handle, name=f"idle-{i}")
            # Counted once every agent listens on the bus (its subscriptions are made in
            # the background after spawn returns), so their time and memory are included.
            await rt.bus.flush(timeout=120)
            spawn_s = time.perf_counter() - t0
            gc.collect()
            out["bytes_per_agent"] = (rss_bytes() - before) / N_IDLE
            out["spawn_per_s"] = N_IDLE / spawn_s
            out["start_latency_us"] = spawn_s / N_IDLE * 1e6
            # Runtime CPU while every agent idles: housekeeping only. The spawns' audit
            # events are made durable first, so their signing is not counted as idling.
            assert rt.audit is not None
            await rt.audit.flush(timeout=120)
            await anyio.sleep(0.2)
            c0, w0 = time.process_time(), time.perf_counter()
            await anyio.sleep(size(3.0, 1.0))
            out["idle_cpu_pct"] = (time.process_time() - c0) / (time.perf_counter() - w0) * 100

    anyio.run(main)
    return out


def measure_queue_idle() -> dict[str, float]:
    out: dict[str, float] = {}

    async def main() -> None:
        async def agent(q: asyncio.Queue[Any]) -> None:
            while True:
                await q.get()

        gc.collect()
        before = rss_bytes()
        t0 = time.perf_counter()
        tasks = []
        for _ in range(N_IDLE):
            q: asyncio.Queue[Any] = asyncio.Queue(maxsize=1024)
            tasks.append(asyncio.create_task(agent(q)))
        await asyncio.sleep(0)  # let every task start and block
        spawn_s = time.perf_counter() - t0
        gc.collect()
        out["bytes_per_agent"] = (rss_bytes() - before) / N_IDLE
        out["spawn_per_s"] = N_IDLE / spawn_s
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    return out


def measure_symbi_tasks(kind: str) -> float:
    """Seconds for N_TASKS handler calls on N_WORKERS agents, each placed by the
    scheduler and run in a Running period of its agent: handed over as tasks
    (``rt.run_tasks`` in one batch, or N_TASKS concurrent ``rt.run_task``), or as sealed
    requests answered by sealed replies (one ``rt.request_many``, or N_TASKS concurrent
    ``rt.request``)."""
    result = {}

    async def main() -> None:
        async with symbi.Runtime(config()) as rt:
            ids = [(await rt.spawn(handle, name=f"w{i}")).id for i in range(N_WORKERS)]
            msgs = [Tick(n=i) for i in range(N_TASKS)]
            to = [ids[i % N_WORKERS] for i in range(N_TASKS)]
            t0 = time.perf_counter()
            if kind == "tasks":
                got = await rt.run_tasks(to, msgs, timeout=120)
            elif kind == "task_gather":
                got = await asyncio.gather(
                    *(rt.run_task(t, m, timeout=120) for t, m in zip(to, msgs))
                )
            elif kind == "batch":
                got = await rt.request_many(to, msgs, timeout=120)
            else:
                got = await asyncio.gather(
                    *(rt.request(t, m, timeout=120) for t, m in zip(to, msgs))
                )
            result["s"] = time.perf_counter() - t0
            assert got == list(range(N_TASKS))

    anyio.run(main)
    return result["s"]


def measure_bare_tasks() -> float:
    async def main() -> float:
        t0 = time.perf_counter()
        got = await asyncio.gather(*(handle(Tick(n=i), None) for i in range(N_TASKS)))
        dt = time.perf_counter() - t0
        assert got == list(range(N_TASKS))
        return dt

    return asyncio.run(main())


_IDLE: dict[str, dict[str, float]] = {}


def idle(kind: str) -> dict[str, float]:
    if kind not in _IDLE:
        _IDLE[kind] = measure_symbi_idle() if kind == "symbi" else measure_queue_idle()
    return _IDLE[kind]


PEER_QUEUE = "asyncio task + Queue per agent"


def _value_row(benchmark: Any, tag: Any, value: float, **info: Any) -> None:
    tag(value=value, **info)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_bytes_per_idle_agent_symbi(benchmark, tag):
    _value_row(
        benchmark,
        tag,
        idle("symbi")["bytes_per_agent"],
        role="symbi",
        metric=f"bytes per idle agent ({N_IDLE} held)",
        unit="B",
        better="lower",
        seed_target="10k agents, 1-5 MB each",
        goal="100k agents, <= 20 KB each",
    )


def test_bytes_per_idle_agent_peer(benchmark, tag):
    _value_row(
        benchmark,
        tag,
        idle("queue")["bytes_per_agent"],
        role="peer",
        peer=PEER_QUEUE,
        metric=f"bytes per idle agent ({N_IDLE} held)",
        unit="B",
        better="lower",
    )


def test_spawn_rate_symbi(benchmark, tag):
    _value_row(
        benchmark,
        tag,
        idle("symbi")["spawn_per_s"],
        role="symbi",
        metric="spawn rate (policy-checked, audited)",
        unit="agents/s",
        better="higher",
        seed_target="start < 1 s",
        goal="start < 1 ms",
    )


def test_spawn_rate_peer(benchmark, tag):
    _value_row(
        benchmark,
        tag,
        idle("queue")["spawn_per_s"],
        role="peer",
        peer=PEER_QUEUE,
        metric="spawn rate (policy-checked, audited)",
        unit="agents/s",
        better="higher",
    )


def test_start_latency_symbi(benchmark, tag):
    _value_row(
        benchmark,
        tag,
        idle("symbi")["start_latency_us"],
        role="symbi",
        metric="agent start latency in-process",
        unit="µs",
        better="lower",
        seed_target="< 1 s",
        goal="< 1 ms",
    )


def test_idle_cpu_symbi(benchmark, tag):
    _value_row(
        benchmark,
        tag,
        idle("symbi")["idle_cpu_pct"],
        role="symbi",
        metric=f"runtime CPU with {N_IDLE} idle agents",
        unit="% of a core",
        better="lower",
        seed_target="< 2%",
    )


SHORT_TASKS = {
    "tasks": f"throughput of {N_TASKS} short tasks (one rt.run_tasks)",
    "task_gather": f"throughput of {N_TASKS} short tasks ({N_TASKS} concurrent rt.run_task)",
    "batch": f"throughput of {N_TASKS} short tasks (one rt.request_many, sealed)",
    "gather": f"throughput of {N_TASKS} short tasks ({N_TASKS} concurrent rt.request, sealed)",
}


def _tasks_per_s(measure: Any, *args: Any) -> float:
    """N_TASKS over the median of three timed runs. Each run times its own work only,
    from the first task handed over to the last result: starting the runtime and
    spawning its workers are measured by the spawn rows, and asyncio.run's setup is not
    the peer's work either."""
    runs = sorted(measure(*args) for _ in range(3))
    return N_TASKS / runs[1]


@pytest.mark.parametrize("kind", list(SHORT_TASKS))
def test_short_tasks_symbi(benchmark, tag, kind):
    _value_row(
        benchmark,
        tag,
        _tasks_per_s(measure_symbi_tasks, kind),
        role="symbi",
        metric=SHORT_TASKS[kind],
        unit="tasks/s",
        better="higher",
        seed_target="-",
        goal="<= 1.5x the time of bare asyncio.gather",
    )


@pytest.mark.parametrize("kind", list(SHORT_TASKS))
def test_short_tasks_peer(benchmark, tag, kind):
    _value_row(
        benchmark,
        tag,
        _tasks_per_s(measure_bare_tasks),
        role="peer",
        peer="asyncio.gather of the same coroutines",
        metric=SHORT_TASKS[kind],
        unit="tasks/s",
        better="higher",
    )
