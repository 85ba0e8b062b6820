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
