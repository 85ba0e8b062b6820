"""The bus delivering into the runtime's real agent host (the LocalDelivery contract)."""

from __future__ import annotations

import anyio
import pytest

import symbi
from symbi.bus import Bus, LocalDelivery
from symbi.errors import DeliveryError, RequestTimeout

pytestmark = pytest.mark.anyio


class Ask(symbi.Message):
    text: str


class Echo(symbi.Agent):
    @symbi.handler
    async def on_ask(self, msg: Ask, ctx: symbi.Context) -> Ask:
        if msg.text == "slow":
            await anyio.sleep(0.5)
        return Ask(text=msg.text.upper())


async def test_bus_delivers_into_agent_host_mailboxes() -> None:
    bus = Bus()
    async with symbi.Runtime(components=[bus]) as rt:
        host = rt._host  # the lead wires this in the runtime; the contract is tested here
        assert isinstance(host, LocalDelivery)
        bus.set_local_delivery(host)
        a = await rt.spawn(Echo, name="echo")
        bus.register_agent(a.id)
        assert await bus.request(Ask(text="hi"), sender=None, to=a.id, timeout=2) == Ask(text="HI")
        await bus.send(Ask(text="fire"), sender=None, to=a.id, timeout=2)
        with pytest.raises(RequestTimeout):
            await bus.request(Ask(text="slow"), sender=None, to=a.id, timeout=0.1)
        with anyio.fail_after(3):  # the late reply arrives, is dropped and counted
            while bus.stats.late_replies < 1:
                await anyio.sleep(0.01)
        await rt.terminate(a.id)
        with pytest.raises(DeliveryError):
            await bus.send(Ask(text="late"), sender=None, to=a.id, timeout=0.5)
        assert bus.dead_letters[-1].recipient == a.id
        assert rt.health().components["bus"].status == "ok"
