from __future__ import annotations

import sys

import anyio
import pytest
from anyio.abc import TaskGroup

import symbi
from symbi import ComponentHealth, Config, RuntimeConfig
from symbi.errors import ComponentError, InvalidArgument, RuntimeStateError

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio


def fast_config(grace: float = 1.0) -> Config:
    return Config().replace(runtime=RuntimeConfig(gc_interval_ms=20, shutdown_grace_s=grace))


class Recorder:
    """A real component that records its lifecycle into a shared journal."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        *,
        fail_start: bool = False,
        hang_stop: bool = False,
        hang_start: bool = False,
    ) -> None:
        self.name = name
        self.journal = journal
        self.fail_start = fail_start
        self.hang_stop = hang_stop
        self.hang_start = hang_start
        self.ticks = 0
        self.background_cancelled = False

    async def _background(self) -> None:
        try:
            while True:
                self.ticks += 1
                await anyio.sleep(0.001)
        except anyio.get_cancelled_exc_class():
            self.background_cancelled = True
            raise

    async def start(self, task_group: TaskGroup) -> None:
        if self.hang_start:
            await anyio.sleep_forever()
        if self.fail_start:
            raise OSError("backend unreachable")
        task_group.start_soon(self._background)
        self.journal.append(f"start {self.name}")

    async def stop(self) -> None:
        self.journal.append(f"stop {self.name}")
        if self.hang_stop:
            await anyio.sleep_forever()

    def health(self) -> ComponentHealth:
        return ComponentHealth(status="ok", detail=f"{self.ticks} ticks")


async def test_components_start_in_order_and_stop_in_reverse():
    journal: list[str] = []
    a, b = Recorder("a", journal), Recorder("b", journal)
    async with symbi.Runtime(fast_config(), components=[a, b]) as rt:
        assert rt.state == "running"
        assert journal == ["start a", "start b"]
        assert rt.component("b") is b
        await anyio.sleep(0.01)
        assert b.ticks > 0  # background tasks run in the runtime's task group
        assert rt.health().status == "ok"
    assert journal == ["start a", "start b", "stop b", "stop a"]
    assert rt.state == "closed"
    assert a.background_cancelled and b.background_cancelled


async def test_failed_start_stops_what_started_and_names_the_component():
    journal: list[str] = []
    ok, bad = Recorder("ok", journal), Recorder("bad", journal, fail_start=True)
    with pytest.raises(ComponentError) as ei:
        async with symbi.Runtime(fast_config(), components=[ok, bad]):
            pytest.fail("the body must not run")
    assert ei.value.component == "bad"
    assert "backend unreachable" in str(ei.value)
    assert journal == ["start ok", "stop ok"]


async def test_start_timeout_is_a_component_error():
    journal: list[str] = []
    slow = Recorder("slow", journal, hang_start=True)
    with pytest.raises(ComponentError, match="did not start within"):
        async with symbi.Runtime(fast_config(), components=[slow], start_timeout=0.05):
            pass


async def test_stop_that_hangs_is_cancelled_after_the_grace_period():
    journal: list[str] = []
    stuck = Recorder("stuck", journal, hang_stop=True)
    with anyio.fail_after(10):  # the property under test: shutdown never hangs
        async with symbi.Runtime(fast_config(grace=0.05), components=[stuck]):
            pass
    assert journal[-1] == "stop stuck"
    assert stuck.background_cancelled


async def test_shutdown_completes_when_the_caller_is_cancelled():
    journal: list[str] = []
    comp = Recorder("c", journal)
    with anyio.move_on_after(0.05):
        async with symbi.Runtime(fast_config(), components=[comp]):
            await anyio.sleep_forever()
    assert journal == ["start c", "stop c"]


async def test_body_exception_propagates_after_clean_shutdown():
    journal: list[str] = []
    with pytest.raises(KeyError):
        async with symbi.Runtime(fast_config(), components=[Recorder("c", journal)]):
            raise KeyError("boom")
    assert journal == ["start c", "stop c"]


async def test_runtime_is_entered_once():
    rt = symbi.Runtime(fast_config())
    async with rt:
        pass
    with pytest.raises(RuntimeStateError, match="create a new one"):
        async with rt:
            pass
    with pytest.raises(RuntimeStateError):
        _ = rt.task_group


async def test_health_is_down_when_not_running_and_when_a_probe_crashes():
    class Crashing(Recorder):
        def health(self) -> ComponentHealth:
            raise RuntimeError("probe exploded")

    rt = symbi.Runtime(fast_config(), components=[Crashing("x", [])])
    assert rt.health().status == "down"
    async with rt:
        h = rt.health()
        assert h.status == "down"
        assert "probe exploded" in h.components["x"].detail
        assert h.components["housekeeper"].status == "ok"


async def test_housekeeper_runs_tasks_and_reports_persistent_failures():
    calls = 0

    async def compact() -> None:
        nonlocal calls
        calls += 1

    async def broken() -> None:
        raise RuntimeError("disk gone")

    async with symbi.Runtime(fast_config()) as rt:
        rt.housekeeper.register("compact", compact)
        rt.housekeeper.register("broken", broken)
        with anyio.fail_after(5):
            while rt.housekeeper.rounds < 4:
                await anyio.sleep(0.01)
        assert calls >= 3
        assert rt.health().status == "degraded"
        assert "broken" in rt.health().components["housekeeper"].detail
        rt.housekeeper.unregister("broken")
        assert rt.health().status == "ok"


async def test_housekeeping_ends_before_any_component_stops():
    """The housekeeper stops first and waits until a round in progress is cancelled, so
    no maintenance task runs against a stopping component (the context store, an
    application's)."""
    journal: list[str] = []

    class SlowStop(Recorder):
        async def stop(self) -> None:
            await super().stop()
            await anyio.sleep(0.2)  # a round left running would finish in here

    app = SlowStop("app", journal)
    round_started = anyio.Event()

    async def maintain() -> None:
        journal.append("round")
        round_started.set()
        await anyio.sleep(10)  # still running when shutdown begins: only a cancel ends it
        journal.append("round done")

    async with symbi.Runtime(fast_config(), components=[app]) as rt:
        rt.housekeeper.register("app", maintain)
        with anyio.fail_after(5):
            await round_started.wait()
    # The round in progress was cancelled with the housekeeper, before "app" stopped.
    stopped = journal.index("stop app")
    assert journal.index("round") < stopped
    assert "round done" not in journal
    assert not any(e.startswith("round") for e in journal[stopped:])


async def test_a_runtime_left_at_once_does_not_wait_for_a_housekeeping_round():
    slow = Config().replace(runtime=RuntimeConfig(gc_interval_ms=60_000, shutdown_grace_s=30))
    with anyio.fail_after(10):  # a hang, not a speed check: the round is a minute away
        async with symbi.Runtime(slow):
            pass


def test_bad_arguments_are_invalid_argument():
    with pytest.raises(InvalidArgument) as ei:
        symbi.Runtime({"runtime": {}})  # type: ignore[arg-type]
    assert ei.value.argument == "config"
    with pytest.raises(InvalidArgument, match="not a component"):
        symbi.Runtime(components=[object()])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="unique"):
        symbi.Runtime(components=[Recorder("x", []), Recorder("x", [])])
    with pytest.raises(InvalidArgument):
        symbi.Runtime(start_timeout=0)
    with pytest.raises(InvalidArgument, match="no component named"):
        symbi.Runtime().component("nope")


async def test_a_crashing_background_task_surfaces_and_stops_the_runtime():
    class Crasher(Recorder):
        async def _background(self) -> None:
            raise RuntimeError("worker died")

    journal: list[str] = []
    with pytest.raises(BaseExceptionGroup) as ei:
        async with symbi.Runtime(fast_config(), components=[Crasher("w", journal)]):
            await anyio.sleep_forever()  # cancelled by the crash, not left hanging
    assert ei.group_contains(RuntimeError, match="worker died")
    assert journal == ["start w", "stop w"]
