"""The agent host when things go wrong: handler errors, stuck handlers, refused topic copies
and bad spawn arguments. Nothing is silently dropped, every refusal is a SymbiError."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import symbi
from symbi.errors import DeliveryError, InvalidArgument, PolicyDenied
from symbi.lifecycle import AgentState

pytestmark = pytest.mark.anyio


class T(symbi.Message):
    text: str


async def boom(msg: T, ctx: symbi.Context) -> None:
    raise RuntimeError("exploded on " + msg.text)


async def echo(msg: T, ctx: symbi.Context) -> T:
    return msg


async def wait_for_dead_letters(rt: symbi.Runtime, n: int) -> list[Any]:
    with anyio.fail_after(5):
        while len(rt.dead_letters) < n:
            await anyio.sleep(0.01)
    return rt.dead_letters


async def events(rt: symbi.Runtime, agent: str, kind: str) -> list[dict[str, Any]]:
    assert rt.audit is not None
    await rt.audit.flush()
    return [e.details for e in rt.audit.query(agent=agent, type=kind)]


async def test_handler_error_without_a_reply_is_dead_lettered_and_audited() -> None:
    async with symbi.Runtime() as rt:
        a = await rt.spawn(boom, name="boom", topics=["t.a"])
        await rt.send(T(text="sent"), to="boom")
        await rt.publish("t.a", T(text="published"))
        letters = await wait_for_dead_letters(rt, 2)
        assert sorted(d.message.text for d in letters) == ["published", "sent"]
        for d in letters:
            assert d.recipient == a.id
            assert "RuntimeError" in d.reason and "exploded on" in d.reason
            assert a.id in d.reason and "runtime" in d.reason  # recipient and sender
        failed = await events(rt, a.id, "agent.handler_failed")
        assert len(failed) == 2
        assert all(f["type"] == "T" and "RuntimeError('exploded on" in f["error"] for f in failed)
        assert rt.state_of(a.id) is AgentState.READY  # it carries on


async def test_handler_error_on_a_request_goes_to_the_requester_and_is_audited() -> None:
    async with symbi.Runtime() as rt:
        a = await rt.spawn(boom, name="boom")
        with pytest.raises(RuntimeError, match="exploded on asked"):
            await rt.request(a.id, T(text="asked"), timeout=2)
        (failed,) = await events(rt, a.id, "agent.handler_failed")
        assert failed["type"] == "T" and "exploded on asked" in failed["error"]
        assert rt.dead_letters == []  # the requester got the error


async def test_one_string_is_one_capability_and_bad_ones_are_refused() -> None:
    async with symbi.Runtime() as rt:
        rt.policy.register(
            'policy quarantine { deny: [send] if "untrusted" in principal.attrs.capabilities }'
        )
        await rt.spawn(echo, name="target")
        h = await rt.spawn(echo, name="mal", capabilities="untrusted")
        assert h.capabilities == ("untrusted",)
        with pytest.raises(PolicyDenied):
            await rt.send(T(text="x"), to="target", sender=h.id)
        for bad in (5, ["ok", 3], [""], None):
            with pytest.raises(InvalidArgument) as ei:
                await rt.spawn(echo, name="bad", capabilities=bad)
            assert ei.value.argument == "capabilities"
        with pytest.raises(InvalidArgument) as ei:
            await rt.spawn(echo, name="bad", topics=5)
        assert ei.value.argument == "topics"
        with pytest.raises(InvalidArgument) as ei:
            await rt.spawn(echo, name="bad", policies=5)
        assert ei.value.argument == "policies"
        assert [h.name for h in rt.agents()] == ["target", "mal"]


async def test_terminating_a_running_agent_cancels_its_handler() -> None:
    cancelled: list[str] = []

    async def stuck(msg: T, ctx: symbi.Context) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(msg.text)
            raise

    async with symbi.Runtime() as rt:
        seen: list[tuple[str, str, str]] = []
        rt.lifecycle.subscribe(
            lambda t: seen.append((t.from_state.value, t.to_state.value, t.reason))
        )
        a = await rt.spawn(stuck, name="stuck")
        errors: list[BaseException] = []

        async def ask() -> None:
            try:
                await rt.request(a.id, T(text="asked"), timeout=5)
            except DeliveryError as e:
                errors.append(e)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            with anyio.fail_after(5):
                while rt.state_of(a.id) is not AgentState.RUNNING:
                    await anyio.sleep(0.01)
            await rt.send(T(text="queued"), to=a.id)
            await rt.terminate(a.id, "operator kill")
        assert [type(e) for e in errors] == [DeliveryError]
        assert errors[0].reason == "terminated"  # type: ignore[attr-defined]
        assert cancelled == ["asked"]
        assert [(d.message.text, d.reason) for d in rt.dead_letters] == [
            ("asked", "recipient terminated: operator kill"),
            ("queued", "recipient terminated: operator kill"),
        ]
        assert [(f, t) for f, t, _ in seen[-2:]] == [
            ("running", "suspended"),
            ("suspended", "terminated"),
        ]
        assert "operator kill" in seen[-2][2]
        audited = [(d["from"], d["to"]) for d in await events(rt, a.id, "agent.lifecycle")]
        assert audited[-2:] == [("running", "suspended"), ("suspended", "terminated")]
        with pytest.raises(DeliveryError):
            rt.state_of(a.id)
        # The runtime carries on: a new agent runs on the freed capacity.
        await rt.spawn(echo, name="after")
        assert await rt.request("after", T(text="ok"), timeout=2) == T(text="ok")


async def test_topic_copy_over_the_memory_cap_is_dead_lettered() -> None:
    async with symbi.Runtime() as rt:
        a = await rt.spawn(echo, name="small", limits={"memory_mb": 0.01}, topics=["t.x"])
        big = T(text="x" * 20000)
        await rt.publish("t.x", big)
        (dl,) = await wait_for_dead_letters(rt, 1)
        assert dl.recipient == a.id and dl.message == big
        assert dl.reason == "topic t.x: memory limit"
        (limit,) = await events(rt, a.id, "resource.limit_exceeded")
        assert limit["resource"] == "memory"
        assert rt.state_of(a.id) is AgentState.READY


async def test_an_invalid_resource_limits_instance_is_invalid_argument() -> None:
    async with symbi.Runtime() as rt:
        for kw in ({"memory_mb": -1}, {"execution_timeout": 0}, {"memory_mb": "lots"}):
            with pytest.raises(InvalidArgument) as ei:
                await rt.spawn(echo, name="a", limits=symbi.ResourceLimits(**kw))  # type: ignore[arg-type]
            assert ei.value.argument == "limits"
        with pytest.raises(InvalidArgument):
            symbi.ResourceLimits.parse(symbi.ResourceLimits(memory_mb=object()))  # type: ignore[arg-type]
        assert rt.agents() == []


async def test_unknown_spawn_options_and_bad_runtime_arguments_are_invalid() -> None:
    async with symbi.Runtime() as rt:
        with pytest.raises(InvalidArgument, match=r"unknown option.*bogus.*capabilities") as ei:
            await rt.spawn(echo, bogus=1)
        assert ei.value.argument == "bogus"
        assert rt.agents() == []
    for kw in ({"start_timeout": "x"}, {"start_timeout": float("nan")}, {"components": 5}):
        with pytest.raises(InvalidArgument) as ei:
            symbi.Runtime(**kw)  # type: ignore[arg-type]
        assert ei.value.argument == next(iter(kw))
