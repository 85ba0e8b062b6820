from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

import symbi
from symbi.errors import RuntimeStateError


def test_sync_runtime_in_a_script():
    with symbi.sync.Runtime() as rt:
        assert rt.state == "running"
        assert rt.health().status == "ok"
    assert rt.state == "closed"


def test_sync_runtime_can_outlive_a_notebook_cell():
    rt = symbi.sync.Runtime().start()  # cell 1
    try:
        assert rt.health().status == "ok"  # cell 2

        async def components(inner: symbi.Runtime) -> list[str]:
            await anyio.lowlevel.checkpoint()
            return [c.name for c in inner.components]

        assert "housekeeper" in rt.call(components)
    finally:
        rt.close()  # cell 3
    rt.close()  # idempotent
    with pytest.raises(RuntimeStateError):
        rt.health()


def test_sync_runtime_inside_an_already_running_loop():
    # Jupyter runs cells on a live asyncio loop; a blocking wrapper must not need that loop.
    async def cell() -> str:
        with symbi.sync.Runtime() as rt:
            return rt.health().status

    assert asyncio.run(cell()) == "ok"


def test_async_runtime_on_a_running_asyncio_loop():
    async def cell() -> str:
        async with symbi.Runtime() as rt:
            return rt.health().status

    assert asyncio.run(cell()) == "ok"


def test_sync_runtime_rejects_bad_config_in_the_callers_thread():
    with pytest.raises(symbi.errors.InvalidArgument):
        symbi.sync.Runtime("symbi.toml")  # type: ignore[arg-type]


class Ping(symbi.Message):
    text: str


class Echo(symbi.Agent):
    @symbi.handler
    async def on_ping(self, msg: Ping, ctx: symbi.Context) -> str:
        return msg.text.upper()


def test_the_blocking_twin_has_the_runtimes_api():
    seen: list[str] = []

    async def follow(msg: Ping, meta: object) -> None:
        seen.append(msg.text)

    with symbi.sync.Runtime() as rt:
        echo = rt.spawn(Echo, name="echo")
        assert rt.state_of(echo.id) is symbi.AgentState.READY
        assert rt.request(echo.id, Ping(text="a"), timeout=5) == "A"
        assert rt.request_many("echo", [Ping(text="b"), Ping(text="c")], timeout=5) == ["B", "C"]
        assert rt.run_task("echo", Ping(text="d"), timeout=5) == "D"
        assert rt.run_tasks(echo.id, [Ping(text="e")], timeout=5) == ["E"]
        assert isinstance(rt.send(Ping(text="f"), to="echo", timeout=5), str)
        rt.subscribe("news.>", follow)
        rt.publish("news.today", Ping(text="g"), timeout=5)
        for _ in range(500):  # delivered on the runtime's loop; poll from this thread
            if seen:
                break
            rt.call(lambda inner: anyio.sleep(0.01))
        assert seen == ["g"]
        assert [h.id for h in rt.agents()] == [echo.id]
        assert rt.usage(echo.id).tasks >= 5
        assert rt.status().agents["ready"] == 1
        rt.terminate(echo.id)
        with pytest.raises(symbi.errors.DeliveryError):
            rt.request(echo.id, Ping(text="h"), timeout=5)
        assert rt.dead_letters[-1].recipient == echo.id
    with pytest.raises(RuntimeStateError):
        rt.status()
