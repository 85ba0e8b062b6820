"""The runtime: composes components inside one anyio task group.

    async with symbi.Runtime(symbi.Config.load()) as rt:
        ...

Entering starts every component in order; leaving stops them in reverse order, giving
them ``runtime.shutdown_grace_s`` seconds in all before whatever is left is cancelled.
Shutdown is shielded, so it completes even when the enclosing task is being cancelled.

Every message goes through the secure bus (``rt.bus``): ``send``, ``request``,
``publish`` and topic subscriptions are policy-checked and rate-limited, each payload is
AES-256-GCM encrypted for its recipient and Ed25519-signed by its sender, and opened
(verified, replay-checked, decrypted) before it reaches the recipient's mailbox. In
process by default; over NATS with ``[bus] nats_url``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from types import TracebackType
from typing import Any, Callable, Literal, Optional, Union

import anyio
from anyio.abc import TaskGroup

from . import _core
from .audit import AuditLog
from .bus import Bus, DeadLetter, SecureMessage, Subscription
from .bus.bus import batch_outcome, check_agent_id, check_batch
from .bus.transport import InProcTransport, Transport
from .components import Component, ComponentHealth, HealthStatus, Housekeeper
from .config import Config
from .context import ContextManager
from .deadlines import check_timeout
from .errors import ComponentError, InvalidArgument, RuntimeStateError
from .host import (
    SPAWN_OPTIONS,
    AgentFactory,
    AgentHandle,
    AgentHost,
    SystemStatus,
    default_slots,
)
from .lifecycle import AgentState, LifecycleController
from .message import Message, check_message
from .policy import PolicyEngine
from .resources import AgentUsage
from .scheduler import Scheduler

__all__ = ["Runtime", "RuntimeState"]

log = logging.getLogger("symbi.runtime")

RuntimeState = Literal["new", "starting", "running", "stopping", "closed"]

#: Registered when ``security.baseline_policy`` is on: the runtime's own operations are
#: allowed; tool calls, data access and network access need explicit policies.
BASELINE_POLICY = """
policy symbi_baseline {
    allow: [create_agent, request_resources, send, request, publish, subscribe]
}
"""

#: How long one component may take to start before the runtime gives up on it.
START_TIMEOUT_S = 30.0


class Runtime:
    """An in-process symbi runtime. Use it once, as an async context manager."""

    def __init__(
        self,
        config: Optional[Config] = None,
        *,
        components: Sequence[Component] = (),
        start_timeout: float = START_TIMEOUT_S,
        transport: Optional[Transport] = None,
    ) -> None:
        """``components`` are extra components started after the built-in ones;
        ``transport`` replaces the bus transport chosen by ``[bus]`` (any
        :class:`symbi.bus.Transport`)."""
        if config is None:
            config = Config()
        if not isinstance(config, Config):
            raise InvalidArgument(
                f"config must be a symbi.Config, got {type(config).__name__}; "
                "build one with symbi.Config.load(path) or symbi.Config()",
                argument="config",
                expected="symbi.Config",
                got=type(config).__name__,
            )
        self._config = config
        self._start_timeout = check_timeout(start_timeout, "start_timeout")
        if isinstance(components, (str, bytes)) or not isinstance(components, Iterable):
            raise InvalidArgument(
                f"components must be a sequence of components, got {type(components).__name__}",
                argument="components",
                expected="Sequence[symbi.Component]",
                got=type(components).__name__,
            )
        self.housekeeper = Housekeeper(config.runtime.gc_interval_ms / 1000)
        #: The audit trail (``security.audit_enabled``/``audit_storage``); None when disabled.
        self.audit: Optional[AuditLog] = AuditLog.from_config(config.security)
        #: Decides every guarded action; ``security.enforce_policies`` sets its default.
        self.policy = PolicyEngine(
            enforce_policies=config.security.enforce_policies, audit_sink=self.audit
        )
        rc = config.runtime
        #: Carries every message, sealed (signed + encrypted) and policy-checked.
        self.bus = Bus(
            policy=self.policy,
            audit=self.audit,
            transport=transport if transport is not None else _transport(config),
            ack_timeout=config.bus.ack_timeout_s,
            retry_attempts=config.bus.retry_attempts,
            default_rate_limit=config.bus.rate_limit,
            rate_limit_mode=config.bus.rate_limit_mode,
            replay_window_s=config.bus.replay_window_s,
            max_message_bytes=config.bus.max_message_bytes,
            handler_timeout=config.bus.handler_timeout_s,
        )
        #: Decides which agent runs next and where (Rust core).
        self.scheduler = Scheduler(
            default_slots(rc.scheduler_threads),
            strategy=rc.placement,
            balancing=rc.load_balancing,
            aging_s=rc.aging_s,
            preemption=rc.preemption,
        )
        self._host = AgentHost(
            max_agents=rc.max_concurrent_agents,
            mailbox_size=rc.message_buffer_size,
            scheduler=self.scheduler,
            bus=self.bus,
            policy=self.policy,
            audit=self.audit,
            full_mailbox=rc.full_mailbox,
            dispatch_quantum=rc.dispatch_quantum,
        )
        self._host._runtime_api = self
        self.bus.set_local_delivery(self._host)
        self.bus.set_directory(self._host.describe)
        if config.security.baseline_policy:
            self.policy.register(BASELINE_POLICY)
        #: Agent memory and shared knowledge; every shared read/write is policy-checked.
        self.context = ContextManager.from_config(
            config,
            policy=self.policy,
            audit=self.audit,
            path=config.context.storage_path,
            housekeeper=self.housekeeper,
        )
        self._components: list[Component] = [
            self.policy,
            self.context,
            self._host,
            self.bus,  # last: it stops first, so no message arrives for a stopping host
        ]
        if self.audit is not None:  # first, so it starts first and stops (flushes) last
            self._components.insert(0, self.audit)
        for c in components:
            if not isinstance(c, Component):
                raise InvalidArgument(
                    f"{c!r} is not a component: it needs name, start(task_group), stop() "
                    "and health()",
                    argument="components",
                    expected="objects implementing symbi.Component",
                    got=type(c).__name__,
                )
            self._components.append(c)
        # Very last, so it stops first: no maintenance round runs against a component
        # that is stopping (or has stopped), the application's included.
        self._components.append(self.housekeeper)
        names = [c.name for c in self._components]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidArgument(
                f"component names must be unique; {dupes} appear more than once",
                argument="components",
                expected="unique names",
                got=dupes,
            )
        self._state: RuntimeState = "new"
        self._started: list[Component] = []
        self._tg: Optional[TaskGroup] = None
        self._started_at = 0.0
        logging.getLogger("symbi").setLevel(config.runtime.log_level.upper())

    # ------------------------------------------------------------------ state
    @property
    def config(self) -> Config:
        return self._config

    @property
    def state(self) -> RuntimeState:
        return self._state

    @property
    def components(self) -> tuple[Component, ...]:
        return tuple(self._components)

    def component(self, name: str) -> Component:
        for c in self._components:
            if c.name == name:
                return c
        raise InvalidArgument(
            f"no component named {name!r}; this runtime has {[c.name for c in self._components]}",
            argument="name",
            expected="a component name",
            got=name,
        )

    @property
    def task_group(self) -> TaskGroup:
        """The runtime's task group, for components and agents. Only while running."""
        self._require_running()
        assert self._tg is not None
        return self._tg

    def _require_running(self) -> None:
        if self._state != "running":
            raise RuntimeStateError(
                f"the runtime is {self._state}; "
                "use it inside `async with symbi.Runtime(...) as rt:`"
            )

    # ----------------------------------------------------------------- agents
    @property
    def lifecycle(self) -> LifecycleController:
        """Every agent's state; ``rt.lifecycle.subscribe(fn)`` observes transitions."""
        return self._host.lifecycle

    async def spawn(self, agent: AgentFactory, **spec: Any) -> AgentHandle:
        """Create an agent: ``await rt.spawn(Planner, name="planner", priority=Priority.HIGH,
        limits=ResourceLimits(...), capabilities=[...], on_timeout="ready")``. Creation and
        the resources it asks for are checked by the policy engine."""
        self._require_running()
        unknown = sorted(k for k in spec if k not in SPAWN_OPTIONS)
        if unknown:
            raise InvalidArgument(
                f"spawn got unknown option(s) {unknown}; it accepts {list(SPAWN_OPTIONS)}",
                argument=unknown[0],
                expected=f"one of {list(SPAWN_OPTIONS)}",
                got=unknown,
            )
        return await self._host.spawn(agent, **spec)

    def _sender(self, sender: Optional[str]) -> Optional[str]:
        return None if sender is None else self._host.resolve(sender)

    async def send(
        self,
        msg: Message,
        *,
        to: str,
        timeout: float = 5.0,
        sender: Optional[str] = None,
        labels: Sequence[str] = (),
    ) -> str:
        """Seal ``msg`` for agent ``to`` (id or name; or an agent of another runtime on
        the same NATS bus) and deliver it; returns the message id once it is in the
        recipient's mailbox. ``sender`` is an agent (None: the runtime itself); ``labels``
        are data labels for data-flow policies (``context.data_labels``). Retries within
        ``timeout``; raises PolicyDenied, RateLimited, or DeliveryError (the message is
        then in ``rt.dead_letters``)."""
        self._require_running()
        return await self.bus.send(
            msg,
            sender=self._sender(sender),
            to=self._host.resolve(to),
            timeout=timeout,
            labels=labels,
        )

    async def request(
        self,
        to: str,
        msg: Message,
        *,
        timeout: float = 5.0,
        sender: Optional[str] = None,
        labels: Sequence[str] = (),
    ) -> Any:
        """Send ``msg`` and wait for the handler's return value (sealed back to the
        sender); RequestTimeout after ``timeout`` seconds in all. The handler's exception,
        if any, is raised here (RemoteError when it ran in another process)."""
        self._require_running()
        return await self.bus.request(
            msg,
            sender=self._sender(sender),
            to=self._host.resolve(to),
            timeout=timeout,
            labels=labels,
        )

    async def request_many(
        self,
        to: Union[str, Sequence[str]],
        msgs: Sequence[Message],
        *,
        timeout: float = 5.0,
        sender: Optional[str] = None,
        labels: Sequence[str] = (),
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``request`` for a batch: ``msgs`` to one agent, or ``msgs[i]`` to ``to[i]``;
        the replies come back in order. Every message is checked, sealed and answered as
        by ``request``, but the work is shared (one policy decision per recipient and
        type, one signature per sealed batch) and nothing is spawned per message, so a
        large fan-out costs far less than gathering ``request`` calls. With
        ``return_exceptions`` failures take their place in the list; without, the first
        one is raised after all have settled. ``timeout`` bounds the whole batch."""
        self._require_running()
        return await self.bus.request_many(
            msgs,
            sender=self._sender(sender),
            to=self._resolve_targets(to),
            timeout=timeout,
            labels=labels,
            return_exceptions=return_exceptions,
        )

    def _resolve_targets(self, to: Union[str, Sequence[str]]) -> Union[str, list[str]]:
        """A batch call's ``to`` with agent names made ids; anything that is not a str is
        left for ``check_batch`` to refuse."""
        if isinstance(to, str):
            return self._host.resolve(to)
        if isinstance(to, Sequence):
            return [self._host.resolve(r) if isinstance(r, str) else r for r in to]
        raise InvalidArgument(
            "to is an agent id or name, or a sequence of them",
            argument="to",
            expected="str | Sequence[str]",
            got=type(to).__name__,
        )

    async def run_task(
        self,
        to: str,
        msg: Message,
        *,
        timeout: float = 5.0,
        labels: Sequence[str] = (),
    ) -> Any:
        """Assign ``msg`` to agent ``to`` (id or name, in this runtime) as a task and return
        its handler's result. See ``run_tasks``."""
        self._require_running()
        timeout = check_timeout(timeout)
        deadline = time.monotonic() + timeout
        check_message(msg)
        to = self._host.resolve(check_agent_id(to, "to"))
        await self.bus.admit(None, msg, to, labels, deadline)
        return await self._host.run_task(msg, to, deadline=deadline, timeout=timeout)

    async def run_tasks(
        self,
        to: Union[str, Sequence[str]],
        msgs: Sequence[Message],
        *,
        timeout: float = 5.0,
        labels: Sequence[str] = (),
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Hand work from the application to its own agents: ``msgs`` to agent ``to``, or
        ``msgs[i]`` to ``to[i]``, each a task the scheduler places and the agent runs under
        its lifecycle and limits; returns the handlers' results in order. The policy
        decides as for ``request`` (one decision per recipient and type, principal the
        runtime) and the runtime's rate limit applies, but nothing is sealed: the task goes
        from this process into this process, so there is no key boundary to protect.
        Messages between agents, and to agents of other runtimes, go through
        ``request``/``send``, always signed and encrypted.

        Raises (or, with ``return_exceptions``, puts in place) PolicyDenied, RateLimited,
        DeliveryError (the agent is unknown, terminated, has no handler for the type, or
        kept a full mailbox; the message is dead-lettered), RequestTimeout when
        ``timeout`` (for the whole batch) runs out, or the handler's own exception."""
        self._require_running()
        deadline = time.monotonic() + check_timeout(timeout)
        items, targets = check_batch(msgs, self._resolve_targets(to))
        out: list[Any] = [None] * len(items)
        failed: list[Optional[BaseException]] = [None] * len(items)
        admitted = await self.bus.admit_many(None, items, targets, labels, deadline, failed)
        await self._host.run_tasks(
            ((i, items[i], targets[i]) for i, _ctype in admitted),
            deadline=deadline,
            timeout=timeout,
            out=out,
            failed=failed,
        )
        return batch_outcome(out, failed, return_exceptions)

    async def publish(
        self,
        topic: str,
        msg: Message,
        *,
        timeout: float = 5.0,
        sender: Optional[str] = None,
        labels: Sequence[str] = (),
    ) -> str:
        """Publish ``msg`` on ``topic`` (dot-separated tokens), sealed under the topic's
        group key, to every subscription whose pattern matches; returns the message id."""
        self._require_running()
        return await self.bus.publish(
            topic, msg, sender=self._sender(sender), timeout=timeout, labels=labels
        )

    def subscribe(
        self,
        pattern: str,
        target: Union[str, Callable[[Any, SecureMessage], Awaitable[None]]],
    ) -> Subscription:
        """Follow topics matching ``pattern`` (``*`` one token, ``>`` the rest).
        ``target`` is an agent (id or name: each message lands in its mailbox and goes to
        the handler for its type), or ``async fn(msg, meta)`` run by the runtime itself.
        The policy must allow the subscriber to ``subscribe``. ``await
        sub.unsubscribe()`` ends it; an agent's subscriptions end when it terminates."""
        self._require_running()
        if isinstance(target, str):
            agent = self._host.resolve(target)
            self._host.state(agent)  # DeliveryError for an unknown agent
            return self.bus.subscribe(pattern, self._host._topic_inbox(agent), subscriber=agent)
        return self.bus.subscribe(pattern, target, subscriber=self.bus.runtime_id)

    def state_of(self, agent: str) -> AgentState:
        return self._host.state(agent)

    def usage(self, agent: str) -> AgentUsage:
        return self._host.usage(agent)

    def agents(self) -> list[AgentHandle]:
        return self._host.handles()

    def resume(self, agent: str, reason: str = "policy cleared") -> None:
        self._require_running()
        self._host.resume(agent, reason)

    async def terminate(self, agent: str, reason: str = "manual override") -> None:
        self._require_running()
        await self._host.terminate(agent, reason)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Messages that could not be delivered or handled, newest last (kept in memory,
        each also an audit event)."""
        return self.bus.dead_letters

    def status(self) -> SystemStatus:
        """Agents by state, scheduler queues, utilisation and decision latency."""
        return self._host.status()

    def health(self) -> HealthStatus:
        comps: dict[str, ComponentHealth] = {}
        for c in self._components:
            if self._state != "running":
                comps[c.name] = ComponentHealth(status="down", detail=f"runtime {self._state}")
                continue
            try:
                comps[c.name] = c.health()
            except Exception as e:  # a health probe that crashes is itself a finding
                comps[c.name] = ComponentHealth(status="down", detail=f"health check raised {e!r}")
        states = {h.status for h in comps.values()}
        overall: Literal["ok", "degraded", "down"] = (
            "down" if "down" in states else "degraded" if "degraded" in states else "ok"
        )
        uptime = time.monotonic() - self._started_at if self._state == "running" else 0.0
        return HealthStatus(
            status=overall, components=comps, uptime_s=uptime, version=_core.__version__
        )

    # -------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Runtime:
        if self._state != "new":
            raise RuntimeStateError(
                f"this Runtime is {self._state}; a Runtime is entered once, create a new one"
            )
        self._state = "starting"
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            for c in self._components:
                try:
                    with anyio.fail_after(self._start_timeout):
                        await c.start(tg)
                except TimeoutError:
                    raise ComponentError(
                        f"component {c.name!r} did not start within {self._start_timeout}s; "
                        "check its backend is reachable, or raise start_timeout",
                        component=c.name,
                    ) from None
                except ComponentError:
                    raise
                except Exception as e:
                    raise ComponentError(
                        f"component {c.name!r} failed to start: {e}", component=c.name
                    ) from e
                self._started.append(c)
        except BaseException as e:
            await self._shutdown(type(e), e, e.__traceback__)
            raise
        self._started_at = time.monotonic()
        self._state = "running"
        log.debug("runtime started with components %s", [c.name for c in self._started])
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Optional[bool]:
        return await self._shutdown(exc_type, exc, tb)

    async def _shutdown(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> Optional[bool]:
        self._state = "stopping"
        grace = self._config.runtime.shutdown_grace_s
        failures: list[ComponentError] = []
        tg = self._tg
        try:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(grace) as scope:
                    for c in reversed(self._started):
                        try:
                            await c.stop()
                        except Exception as e:
                            log.exception("component %r failed to stop", c.name)
                            failures.append(
                                ComponentError(
                                    f"component {c.name!r} failed to stop: {e}", component=c.name
                                )
                            )
                if scope.cancelled_caught:
                    log.warning("components did not stop within %ss; cancelling them", grace)
                if tg is not None:
                    tg.cancel_scope.cancel()
            if tg is not None:
                # The body's own exception propagates from our __aexit__; handing it to
                # the task group would wrap it in an ExceptionGroup. The group still raises
                # for failures of its child tasks.
                await tg.__aexit__(None, None, None)
        finally:
            self._state = "closed"
            self._tg = None
        if failures and exc is None:
            raise failures[0]
        return None


def _transport(config: Config) -> Transport:
    """In process unless ``[bus] nats_url`` is set (Config requires it in distributed mode)."""
    if config.bus.nats_url is None:
        return InProcTransport()
    from .bus.nats import NatsTransport

    return NatsTransport(config.bus.nats_url, name=config.bus.client_name)
