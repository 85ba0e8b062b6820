from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from symbi.errors import InvalidArgument, ResourceLimitExceeded
from symbi.resources import Metered, ResourceAccount, ResourceLimits, TokenBucket

pytestmark = pytest.mark.anyio


def test_limits_validate():
    assert ResourceLimits.parse(None) == ResourceLimits()
    assert ResourceLimits.parse({"memory_mb": 64}).memory_mb == 64
    for bad in ({"memory_mb": -1}, {"cpu_cores": 0}, {"execution_timeout": "soon"}, {"gpus": 1}):
        with pytest.raises(InvalidArgument) as ei:
            ResourceLimits.parse(bad)
        assert ei.value.argument == "limits"


def test_memory_is_capped_and_released():
    acc = ResourceAccount("a", ResourceLimits(memory_mb=1))
    acc.charge_memory(600_000, "state")
    with pytest.raises(ResourceLimitExceeded) as ei:
        acc.charge_memory(600_000, "state")
    assert ei.value.resource == "memory"
    assert ei.value.limit == 1024 * 1024
    assert acc.usage.memory_bytes == 600_000  # the refused charge was not recorded
    acc.release_memory(600_000)
    acc.charge_memory(600_000, "state")


async def test_token_bucket_throttles_to_its_rate():
    bucket = TokenBucket(rate=1000.0, capacity=100.0)
    eps = 1e-3
    t0 = time.monotonic()
    assert await bucket.take(100) == 0  # the burst is free
    t1 = time.monotonic()
    await anyio.sleep(0.02)  # refills about 20 tokens
    t2 = time.monotonic()
    waited = await bucket.take(50)  # 50 tokens at 1000/s: 50 ms of debt, less the refill
    t3 = time.monotonic()
    # At least t2 - t1 passed between the takes; its refill is credited, not charged.
    assert 0 <= waited <= max(0.0, 0.05 - (t2 - t1)) + eps
    # It slept what it reported, and the 50 tokens past the burst took 50 ms in all.
    assert t3 - t2 >= waited - eps
    assert t3 - t0 >= 0.05 - eps
    with pytest.raises(TimeoutError):
        await bucket.take(10_000, timeout=0.01)
    with pytest.raises(InvalidArgument):
        await bucket.take(-1)
    with pytest.raises(InvalidArgument):
        TokenBucket(rate=0)


async def test_io_accounting_goes_through_the_buckets():
    acc = ResourceAccount("a", ResourceLimits(disk_io_mbps=1.0))
    await acc.disk_io(1024 * 1024)  # the first MB is burst
    await acc.disk_io(100 * 1024)
    assert acc.usage.disk_bytes == 1124 * 1024
    assert acc.usage.throttled_s > 0.05
    await acc.network_io(10)  # unlimited: counted, never throttled
    assert acc.usage.network_bytes == 10


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def test_metered_charges_only_the_coroutines_own_cpu():
    busy = ResourceAccount("busy", ResourceLimits())
    idle = ResourceAccount("idle", ResourceLimits())

    async def worker() -> str:
        for _ in range(5):
            burn(0.01)
            await anyio.lowlevel.checkpoint()
        return "done"

    async def sleeper() -> str:
        await anyio.sleep(0.1)
        return "slept"

    async with anyio.create_task_group() as tg:
        out: dict[str, str] = {}

        async def run(name: str, coro, acc) -> None:
            out[name] = await Metered(coro, acc)

        tg.start_soon(run, "w", worker(), busy)
        tg.start_soon(run, "s", sleeper(), idle)
    assert out == {"w": "done", "s": "slept"}
    assert busy.usage.cpu_s >= 0.045
    assert idle.usage.cpu_s < 0.01  # interleaved work was not charged to the sleeper


async def test_metered_throttles_past_the_cpu_share():
    acc = ResourceAccount("a", ResourceLimits(cpu_cores=0.25))

    async def hog() -> None:
        for _ in range(6):
            burn(0.02)
            await anyio.lowlevel.checkpoint()

    await Metered(hog(), acc)
    # 120 ms of CPU at a quarter core takes ~0.25 s of pauses beyond the 25 ms burst and
    # the refill while it runs; unthrottled it would pause 0 s. Leave room for load.
    assert acc.usage.cpu_s >= 0.1
    assert acc.usage.throttled_s > 0.1


async def test_metered_propagates_exceptions_and_cancellation():
    acc = ResourceAccount("a", ResourceLimits())

    async def fails() -> None:
        await anyio.lowlevel.checkpoint()
        raise KeyError("x")

    with pytest.raises(KeyError):
        await Metered(fails(), acc)

    cleaned = []

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cleaned.append(True)

    with anyio.move_on_after(0.02):
        await Metered(forever(), acc)
    assert cleaned == [True]
