"""The agent host: spawns agents, keeps their mailboxes, and runs their tasks in the order
and on the capacity the Rust scheduler decides.

A *task* is one message handled by one agent. An agent handles its messages one at a time
(actor semantics), so it has at most one task queued or running; when that task ends and
more mail is waiting, the next one is submitted. Placement and preemption come from
:class:`symbi.scheduler.Scheduler`: a preempted task is cancelled, its agent goes
Running -> Suspended, the message goes back to the front of the mailbox, and the task runs
again when the scheduler places it (Suspended -> Running).

Enforcement points wired here: agent creation and resource requests (policy engine),
execution timeouts, CPU share, memory caps and I/O buckets (resource manager), and
lifecycle transitions (audited). Messages reach the host only through the secure bus
(``symbi.bus``): it checks the policy, seals, verifies and opens every message, then calls
:meth:`AgentHost.deliver`; each agent gets its bus identity at spawn and loses it at
terminate. The one other way in is a task the application assigns to its own agent
(``Runtime.run_tasks``, :meth:`AgentHost.run_tasks`): admitted by the same policy and rate
limit, but not sealed, because it crosses no key boundary (both ends are this process).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping
from contextlib import suppress
from typing import Any, Callable, Literal, Optional, Protocol, Union

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import TaskGroup

from .agent import Agent, Context, FunctionAgent
from .components import ComponentHealth
from .deadlines import Deadlines
from .errors import (
    DeliveryError,
    IllegalTransition,
    InvalidArgument,
    RequestTimeout,
    ResourceLimitExceeded,
    RuntimeStateError,
    SymbiError,
)
from .latch import Latch
from .lifecycle import AgentState, LifecycleController, Transition
from .message import Message, check_message
from .policy.types import AuditSink, PolicyRequest, Principal, Resource
from .resources import AgentUsage, Metered, ResourceAccount, ResourceLimits
from .scheduler import Placement, Priority, Scheduler, SchedulerStatus, Slot

__all__ = ["AgentHandle", "AgentHost", "SpawnError", "SystemStatus"]

log = logging.getLogger("symbi.agents")

AgentFactory = Union[type[Agent], Agent, Callable[[Any, Context], Awaitable[Any]]]
OnTimeout = Literal["ready", "suspend"]


class MessageBus(Protocol):
    """What the host needs of the bus (:class:`symbi.bus.Bus`)."""

    stats: Any

    def register_agent(self, agent_id: str) -> bytes: ...

    def unregister_agent(self, agent_id: str) -> None: ...

    def subscribe(self, pattern: str, handler: Any, *, subscriber: str) -> Any: ...

    def record_dead_letter(
        self,
        msg: Optional[Message],
        *,
        sender: Optional[str],
        recipient: str,
        reason: str,
        message_id: str = "",
        attempts: int = 0,
    ) -> None: ...


class Enforcer(Protocol):
    """What the host needs of the policy engine."""

    def enforce(self, request: PolicyRequest) -> Any: ...

    def register(self, policy: Any) -> str: ...

    def remove(self, policy_id: str) -> None: ...


class SpawnError(SymbiError):
    """An agent failed while Initializing; it is left in the Failed state."""

    def __init__(self, message: str, *, agent_id: str, name: str) -> None:
        super().__init__(message)
        self.agent_id = agent_id
        self.name = name


class AgentHandle(msgspec.Struct, frozen=True, kw_only=True):
    """What ``rt.spawn`` returns: the id to address the agent by, and its spec."""

    id: str
    name: str
    priority: Priority
    limits: ResourceLimits
    capabilities: tuple[str, ...] = ()
    #: Ids of the policies registered for this agent (scoped to it; removed on terminate).
    policy_ids: tuple[str, ...] = ()
    #: Governance settings from the agent's definition (the sandbox tier is used when the
    #: agent runs untrusted code).
    sandbox: Optional[str] = None
    security: Optional[str] = None
    memory: Optional[str] = None


class SystemStatus(msgspec.Struct, frozen=True, kw_only=True):
    agents: dict[str, int]
    scheduler: SchedulerStatus
    mailbox_depth: int
    dead_letters: int
    tasks_completed: int
    late_replies: int = 0
    request_timeouts: int = 0


#: Limits that are time budgets (the task's, an I/O wait's): hitting one suspends the agent
#: only with on_timeout="suspend". Past any other limit (memory) the agent is suspended.
_TIME_BUDGETS = frozenset({"execution_timeout", "disk_io", "network_io"})


class _Reply(Latch):
    """The outcome of one request, itself the latch that says it is known: a waiter
    (``wait_reply``) or a callback (the bus's ``on_reply``, no task per request) learns
    it when ``finish`` is called."""

    __slots__ = ("callback", "error", "timed_out", "value")

    def __init__(self) -> None:
        super().__init__()
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.timed_out = False
        self.callback: Optional[Callable[[Any, Optional[BaseException]], None]] = None

    @property
    def done(self) -> Latch:
        """Itself (``symbi.deadlines.Expirable``)."""
        return self

    def finish(self) -> None:
        self.set()
        cb, self.callback = self.callback, None
        if cb is not None:
            try:
                cb(self.value, self.error)
            except Exception:
                log.exception("a reply callback failed")

    def expire(self) -> None:
        self.timed_out = True
        self.set()


class _Envelope:
    __slots__ = ("msg", "reply", "sender", "size")

    def __init__(self, msg: Message, sender: Optional[str], reply: Optional[_Reply], size: int):
        self.msg = msg
        self.sender = sender
        self.reply = reply
        self.size = size


class _Record:
    """One live agent. Kept small: 100k idle agents must fit in a few MB."""

    __slots__ = (
        "account",
        "agent",
        "capabilities",
        "handle",
        "id",
        "mailbox",
        "name",
        "on_timeout",
        "placed",
        "priority",
        "running",
        "scope",
        "space",
        "task_id",
    )

    def __init__(self, handle: AgentHandle, agent: Agent, on_timeout: OnTimeout) -> None:
        self.handle = handle
        self.id = handle.id
        self.name = handle.name
        self.agent = agent
        self.priority = handle.priority
        self.capabilities = handle.capabilities
        self.account = ResourceAccount(handle.id, handle.limits)
        self.on_timeout = on_timeout
        self.mailbox: deque[_Envelope] = deque()
        self.task_id: Optional[int] = None  # queued or running in the scheduler
        self.running: Optional[_Envelope] = None
        self.scope: Optional[anyio.CancelScope] = None
        # Its worker (_run): None when it has none; True when one exists (started or
        # about to) with no placement waiting; a Placement waiting for that worker to
        # take it. One worker per agent, so a task is never run twice at once.
        self.placed: Union[bool, Placement, None] = None
        # Senders waiting for room in a full mailbox, first come first served: a freed
        # slot wakes one of them, not all (which cost O(waiters) per message).
        self.space: Optional[deque[anyio.Event]] = None


_PRIORITY_NAMES = {p.name.lower(): p for p in Priority}
#: Messages a dispatch handles between yields to the event loop. Replies finished between
#: two yields are sealed as one batch (one signature, one verification), so a larger
#: interval means cheaper replies; handlers that never await still let the loop run
#: every few hundred µs.
_YIELD_EVERY = 64
#: How long a topic copy waits for space in a full mailbox before it is dead-lettered.
_TOPIC_DELIVERY_S = 5.0


def _priority(value: Any) -> Priority:
    if isinstance(value, Priority):
        return value
    if isinstance(value, str) and value.lower() in _PRIORITY_NAMES:
        return _PRIORITY_NAMES[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Priority(value)
        except ValueError:
            pass
    raise InvalidArgument(
        f"unknown priority {value!r}; use symbi.Priority or one of {sorted(_PRIORITY_NAMES)}",
        argument="priority",
        expected=f"one of {sorted(_PRIORITY_NAMES)}",
        got=value,
    )


def _strings(name: str, value: Any, what: str) -> list[str]:
    """One str (a single item, not its characters) or an iterable of non-empty strs."""
    if isinstance(value, str):
        items: list[Any] = [value]
    else:
        try:
            items = list(value)
        except TypeError:
            items = [value]
    if not all(isinstance(v, str) and v for v in items):
        raise InvalidArgument(
            f"{name} must be {what}: one non-empty string or an iterable of them, got {value!r}",
            argument=name,
            expected="str | iterable of str",
            got=value,
        )
    return items


def _timeout(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgument(
            f"{name} must be a positive number of seconds, got {value!r}",
            argument=name,
            expected="> 0 seconds",
            got=value,
        )
    return float(value)


def default_slots(workers: int) -> list[Slot]:
    """One worker slot per scheduler thread (or core), sharing physical memory."""
    n = workers or os.cpu_count() or 1
    try:
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        total_mb = 4096.0
    return [Slot(id=f"worker-{i}", memory_mb=total_mb / n, cpu_cores=1.0) for i in range(n)]


class AgentHost:
    """The runtime component that owns agents (``name = "agents"``)."""

    name = "agents"

    def __init__(
        self,
        *,
        max_agents: int,
        mailbox_size: int,
        scheduler: Scheduler,
        bus: MessageBus,
        policy: Optional[Enforcer] = None,
        audit: Optional[AuditSink] = None,
        full_mailbox: Literal["wait", "fail"] = "wait",
        dispatch_quantum: int = 64,
    ) -> None:
        self.max_agents = max_agents
        self.mailbox_size = mailbox_size
        self.scheduler = scheduler
        self.lifecycle = LifecycleController()
        self._policy = policy
        self._audit = audit
        self._full_mailbox = full_mailbox
        self._quantum = dispatch_quantum
        self._agents: dict[str, _Record] = {}
        self._by_name: dict[str, str] = {}
        self._by_task: dict[int, _Record] = {}
        self._task_ids = itertools.count(1)
        self._tg: Optional[TaskGroup] = None
        self._bus = bus
        self._completed = 0
        self._late_replies = 0
        self._task_timeouts = 0
        self._inboxes: dict[str, Callable[[Any, Any], Awaitable[None]]] = {}
        # A message's size in the mailbox is its msgpack size: one encoder and one scratch
        # buffer per host (one event loop, so one thread) measure it without allocating.
        self._encoder = msgspec.msgpack.Encoder()
        self._size_buf = bytearray()
        self._stopping = False
        self._deadlines = Deadlines()
        # anyio.Event() looks up the running backend on every call (~2 µs, per request);
        # start() resolves the backend's own class once.
        self._event: Callable[[], anyio.Event] = anyio.Event
        if audit is not None:
            self.lifecycle.subscribe(self._audit_transition)

    # -------------------------------------------------------------- component
    async def start(self, task_group: TaskGroup) -> None:
        self._tg = task_group
        self._event = type(anyio.Event())
        task_group.start_soon(self._deadlines.run, name="symbi.agents.deadlines")

    async def stop(self) -> None:
        # Cancel running tasks, then terminate every agent.
        self._stopping = True
        for rec in list(self._agents.values()):
            if rec.scope is not None:
                rec.scope.cancel()
        for rec in list(self._agents.values()):
            await self._terminate(rec, "runtime shutdown", force=True)
        self._tg = None

    def health(self) -> ComponentHealth:
        counts = self.lifecycle.counts()
        detail = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        status: Literal["ok", "degraded"] = "degraded" if counts["failed"] else "ok"
        return ComponentHealth(status=status, detail=detail or "no agents")

    # ----------------------------------------------------------------- audit
    def _record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        if self._audit is not None:
            self._audit.record(event_type, agent_id, details)

    def _audit_transition(self, t: Transition) -> None:
        self._record(
            "agent.lifecycle",
            t.agent_id,
            {"from": t.from_state.value, "to": t.to_state.value, "reason": t.reason},
        )

    # ------------------------------------------------------------------ spawn
    async def spawn(
        self,
        agent: AgentFactory,
        *,
        name: Optional[str] = None,
        priority: Any = Priority.NORMAL,
        limits: Any = None,
        capabilities: Iterable[str] = (),
        on_timeout: OnTimeout = "ready",
        start_timeout: float = 10.0,
        policies: Iterable[Any] = (),
        sandbox: Optional[str] = None,
        security: Optional[str] = None,
        memory: Optional[str] = None,
        topics: Iterable[str] = (),
    ) -> AgentHandle:
        if self._tg is None:
            raise RuntimeStateError("spawn needs a running runtime: `async with symbi.Runtime()`")
        prio = _priority(priority)
        lim = ResourceLimits.parse(limits)
        start_s = _timeout("start_timeout", start_timeout)
        self._check_schedulable(prio, lim)
        caps = tuple(_strings("capabilities", capabilities, "capability names such as 'search'"))
        patterns = _strings("topics", topics, "topic patterns such as 'orders.>'")
        if on_timeout not in ("ready", "suspend"):
            raise InvalidArgument(
                "on_timeout must be 'ready' or 'suspend'",
                argument="on_timeout",
                expected="'ready' | 'suspend'",
                got=on_timeout,
            )
        instance = self._instantiate(agent)
        name = name or type(instance).__name__.lower()
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(
                "name must be a non-empty string", argument="name", expected="str", got=name
            )
        if name in self._by_name:
            raise InvalidArgument(
                f"an agent named {name!r} is already running; names are unique",
                argument="name",
                expected="a unique name",
                got=name,
            )
        live = len(self._agents)
        if live >= self.max_agents:
            raise ResourceLimitExceeded(
                f"the runtime holds {live} agents, its max_concurrent_agents; terminate some "
                "or raise [runtime] max_concurrent_agents",
                resource="agents",
                limit=float(self.max_agents),
                used=float(live),
            )
        # Enforcement points: creating the agent, and the resources it asks for.
        if self._policy is not None:
            principal = Principal(
                id=name, attrs={"capabilities": list(caps), "priority": prio.name.lower()}
            )
            self._policy.enforce(
                PolicyRequest(
                    principal=principal,
                    action="create_agent",
                    resource=Resource(id=name, attrs={"kind": type(instance).__name__}),
                )
            )
            requested = {k: v for k, v in msgspec.structs.asdict(lim).items() if v is not None}
            if requested:
                self._policy.enforce(
                    PolicyRequest(
                        principal=principal,
                        action="request_resources",
                        resource=Resource(id=name, attrs=requested),
                        context=requested,
                    )
                )
        for label, v in (("sandbox", sandbox), ("security", security), ("memory", memory)):
            if v is not None and not (isinstance(v, str) and v):
                raise InvalidArgument(
                    f"{label} must be a non-empty string or None",
                    argument=label,
                    expected="str | None",
                    got=v,
                )
        agent_id = f"{name}-{uuid.uuid4().hex[:12]}"
        policy_ids = self._register_agent_policies(policies, name, agent_id)
        handle = AgentHandle(
            id=agent_id,
            name=name,
            priority=prio,
            limits=lim,
            capabilities=caps,
            policy_ids=policy_ids,
            sandbox=sandbox,
            security=security,
            memory=memory,
        )
        instance.id, instance.name = agent_id, name
        rec = _Record(handle, instance, on_timeout)
        self.lifecycle.register(agent_id)
        self._agents[agent_id] = rec
        self._by_name[name] = agent_id
        # Its bus identity (Ed25519 + X25519 keys, held in Rust), then its topics; each
        # subscription is policy-checked, and a refusal fails the spawn as a whole.
        self._bus.register_agent(agent_id)
        try:
            for pattern in patterns:
                self._bus.subscribe(pattern, self._topic_inbox(agent_id), subscriber=agent_id)
        except BaseException:
            self._bus.unregister_agent(agent_id)
            self.lifecycle.transition(agent_id, AgentState.FAILED, "topic subscription refused")
            self.lifecycle.transition(agent_id, AgentState.TERMINATED, "spawn failed")
            self.lifecycle.forget(agent_id)
            del self._agents[agent_id]
            self._by_name.pop(name, None)
            for pid in policy_ids:
                with suppress(SymbiError):
                    self._policy.remove(pid)  # type: ignore[union-attr]
            raise
        self._record(
            "agent.spawn",
            agent_id,
            {
                "name": name,
                "priority": prio.name.lower(),
                "limits": msgspec.to_builtins(lim),
                "capabilities": list(caps),
            },
        )
        # rec.scope lets terminate() cancel on_start (it cancels a Running task's the same way).
        start = rec.scope = anyio.CancelScope()
        try:
            with start, anyio.fail_after(start_s):
                await instance.on_start()
        except Exception as e:
            rec.scope = None
            if self._agents.get(agent_id) is not rec:
                raise self._terminated_in_start(rec) from e
            self.lifecycle.transition(agent_id, AgentState.FAILED, f"on_start failed: {e!r}")
            raise SpawnError(
                f"agent {name!r} failed to initialise: {e!r}; it is Failed, "
                f"terminate it with rt.terminate({agent_id!r})",
                agent_id=agent_id,
                name=name,
            ) from e
        except BaseException:
            # The caller was cancelled (or interrupted): nobody gets a handle, so nothing
            # may keep its name, bus identity or policies. Failed, then terminated.
            rec.scope = None
            if self._agents.get(agent_id) is rec:
                self.lifecycle.transition(agent_id, AgentState.FAILED, "spawn cancelled")
                await self._terminate(rec, "spawn cancelled during on_start", force=False)
            raise
        rec.scope = None
        if self._agents.get(agent_id) is not rec:
            raise self._terminated_in_start(rec)
        self.lifecycle.transition(agent_id, AgentState.READY, "initialised")
        # Mail that arrived while it was initialising waits for Ready to be scheduled.
        self._submit_or_refuse(rec)
        self._pump()
        return handle

    @staticmethod
    def _terminated_in_start(rec: _Record) -> SpawnError:
        return SpawnError(
            f"agent {rec.name!r} was terminated while initialising (on_start was cancelled); "
            "it is gone, spawn it again if needed",
            agent_id=rec.id,
            name=rec.name,
        )

    def _check_schedulable(self, prio: Priority, lim: ResourceLimits) -> None:
        """Refuse limits no worker slot can hold: every task of that agent would fail."""
        memory, cpu = lim.memory_mb or 0.0, lim.cpu_cores or 0.0
        if not (memory or cpu):
            return
        probe = next(self._task_ids)
        try:
            # The scheduler's own rule (placement strategy, critical reserve) decides.
            self.scheduler.submit(probe, priority=prio, memory_mb=memory, cpu_cores=cpu)
        except InvalidArgument as e:
            slots = self.scheduler.status().slots.values()
            most_cpu = max((u.cpu_cores for u in slots), default=0.0)
            most_mb = max((u.memory_mb for u in slots), default=0.0)
            asked = ", ".join(
                f"{k}={v:g}" for k, v in (("cpu_cores", cpu), ("memory_mb", memory)) if v
            )
            raise InvalidArgument(
                f"limits {asked} fit no worker slot for a {prio.name.lower()} agent (the "
                f"largest slot has cpu_cores={most_cpu:g}, memory_mb={most_mb:.0f}), so none "
                "of its tasks could ever run; lower the limits or add a slot",
                argument="limits",
                expected=f"cpu_cores <= {most_cpu:g} and memory_mb <= {most_mb:.0f}",
                got=msgspec.to_builtins(lim),
            ) from e
        self.scheduler.cancel(probe)

    def _register_agent_policies(
        self, policies: Iterable[Any], name: str, agent_id: str
    ) -> tuple[str, ...]:
        """Register an agent's own policies, scoped to it (by name and id) unless they
        name their principals themselves. All or nothing."""
        from .policy import Policy
        from .policy.engine import to_policy

        if isinstance(policies, (str, Mapping, Policy)):
            items: list[Any] = [policies]  # one policy, not its characters or keys
        else:
            try:
                items = list(policies)
            except TypeError:
                raise InvalidArgument(
                    "policies must be a policy (DSL text, dict or symbi.Policy) or an "
                    f"iterable of them, got {type(policies).__name__}",
                    argument="policies",
                    expected="policy | iterable of policies",
                    got=type(policies).__name__,
                ) from None
        if not items:
            return ()
        if self._policy is None:
            raise InvalidArgument(
                "this agent brings policies but the runtime has no policy engine",
                argument="policies",
                expected="no policies",
            )
        ids: list[str] = []
        try:
            for item in items:
                pol = to_policy(item, "policies")
                if pol.principals is None:
                    d = pol.to_dict()
                    d["principals"] = [name, agent_id]
                    pol = Policy.from_dict(d)
                ids.append(self._policy.register(pol))
        except BaseException:
            for pid in ids:
                self._policy.remove(pid)
            raise
        return tuple(ids)

    @staticmethod
    def _instantiate(agent: AgentFactory) -> Agent:
        if isinstance(agent, Agent):
            return agent
        if inspect.isclass(agent) and issubclass(agent, Agent):
            if not agent.handled_types():
                raise InvalidArgument(
                    f"{agent.__name__} has no @symbi.handler methods, so it can receive nothing",
                    argument="agent",
                    expected="an Agent subclass with handlers",
                    got=agent.__name__,
                )
            return agent()
        if inspect.iscoroutinefunction(agent):
            return FunctionAgent(agent)
        raise InvalidArgument(
            f"cannot make an agent from {agent!r}; pass an Agent subclass, an Agent "
            "instance, or an async function (msg, ctx)",
            argument="agent",
            expected="Agent subclass | Agent | async function",
            got=type(agent).__name__,
        )

    def _topic_inbox(self, agent_id: str) -> Callable[[Any, Any], Awaitable[None]]:
        """A bus topic handler that queues each opened copy in ``agent_id``'s mailbox; a
        copy it cannot take (full, no handler, terminated) is dead-lettered. One per
        agent, so the bus sees overlapping patterns of one agent as one handler and
        queues a copy once."""
        known = self._inboxes.get(agent_id)
        if known is not None:
            return known

        async def inbox(msg: Any, meta: Any) -> None:
            try:
                await self.deliver(
                    msg, agent_id, sender=meta.sender, timeout=_TOPIC_DELIVERY_S, want_reply=False
                )
            except (DeliveryError, ResourceLimitExceeded) as e:
                # No sender waits on a topic copy; _enqueue already audited a memory refusal.
                why = (e.reason or str(e)) if isinstance(e, DeliveryError) else "memory limit"
                self._bus.record_dead_letter(
                    msg,
                    sender=meta.sender,
                    recipient=agent_id,
                    reason=f"topic {meta.recipient}: {why}",
                    message_id=meta.id,
                    attempts=1,
                )

        self._inboxes[agent_id] = inbox
        return inbox

    def describe(self, agent_id: str) -> Optional[dict[str, Any]]:
        """A local agent's attributes for policy conditions (``principal.attrs.name``,
        ``resource.attrs.capabilities``); None for an id that is not one of ours."""
        rec = self._agents.get(agent_id)
        if rec is None:
            return None
        return {
            "name": rec.name,
            "kind": "agent",
            "capabilities": list(rec.capabilities),
            "priority": rec.priority.name.lower(),
        }

    def resolve(self, ref: str) -> str:
        """The id of a local agent named or identified by ``ref``; else ``ref`` itself
        (an agent on another runtime of the bus, or unknown: the bus decides)."""
        if ref in self._agents:
            return ref
        return self._by_name.get(ref, ref)

    # ---------------------------------------------------------------- lookups
    def _rec(self, ref: str) -> _Record:
        rec = self._agents.get(ref)
        if rec is None and ref in self._by_name:
            rec = self._agents.get(self._by_name[ref])
        if rec is None:
            raise DeliveryError(
                f"no live agent {ref!r}; spawn it first, or check it was not terminated",
                recipient=ref,
                reason="unknown recipient",
            )
        return rec

    def state(self, ref: str) -> AgentState:
        return self.lifecycle.state(self._rec(ref).id)

    def usage(self, ref: str) -> AgentUsage:
        return self._rec(ref).account.usage

    def handles(self) -> list[AgentHandle]:
        return [r.handle for r in self._agents.values()]

    # -------------------------------------------------------------- messaging
    async def deliver(
        self,
        msg: Message,
        to: str,
        *,
        sender: Optional[str],
        timeout: float,
        want_reply: bool,
    ) -> Optional[_Reply]:
        if self._tg is None:
            raise RuntimeStateError("the runtime is not running")
        check_message(msg)
        timeout = _timeout("timeout", timeout)
        if not isinstance(to, str):
            raise InvalidArgument(
                "to must be an agent id or name", argument="to", expected="str", got=to
            )
        rec = self._rec(to)
        self._check_deliverable(rec, msg)
        try:
            if len(rec.mailbox) >= self.mailbox_size or rec.space:
                await self._wait_for_space(rec, timeout)
        except TimeoutError:
            raise DeliveryError(
                f"agent {rec.name!r} kept a full mailbox ({self.mailbox_size} messages) for "
                f"{timeout}s; the message was not accepted, retry or raise the timeout",
                recipient=rec.id,
                reason="mailbox full",
            ) from None
        return self._enqueue(rec, msg, sender, want_reply)

    def try_deliver(
        self,
        msg: Message,
        to: str,
        *,
        sender: Optional[str],
        want_reply: bool,
        size: Optional[int] = None,
    ) -> tuple[bool, Optional[_Reply]]:
        """``deliver`` without waiting: ``(True, reply handle)`` once ``msg`` is in the
        mailbox, ``(False, None)`` when it would have to wait for room (then call
        ``deliver``). Raises what ``deliver`` raises for an agent that cannot take it.
        The bus delivers batches opened in one call this way, with no await per message;
        it knows the message's encoded ``size`` (what the mailbox is charged), which then
        need not be measured again."""
        rec = self._agents.get(to)
        if rec is None or self._tg is None or rec.space or len(rec.mailbox) >= self.mailbox_size:
            return False, None
        self._check_deliverable(rec, msg)
        return True, self._enqueue(rec, msg, sender, want_reply, size)

    def _check_deliverable(self, rec: _Record, msg: Message) -> None:
        # A refusal raises to the caller (the bus, or run_tasks), which dead-letters it.
        state = self.lifecycle.state(rec.id)
        if state in (AgentState.TERMINATED, AgentState.FAILED):
            raise DeliveryError(
                f"agent {rec.name!r} is {state.value}; the message is in the dead-letter queue",
                recipient=rec.id,
                reason=state.value,
            )
        if rec.agent.resolve(msg) is None:
            raise DeliveryError(
                f"agent {rec.name!r} has no handler for {type(msg).__name__}; the message is "
                "in the dead-letter queue",
                recipient=rec.id,
                reason="no handler",
            )

    def _enqueue(
        self,
        rec: _Record,
        msg: Message,
        sender: Optional[str],
        want_reply: bool,
        size: Optional[int] = None,
    ) -> Optional[_Reply]:
        """Put ``msg`` in the mailbox (there is room), charged to the agent's memory."""
        if size is None:
            self._encoder.encode_into(msg, self._size_buf)  # its bytes, serialized
            size = len(self._size_buf)
        try:
            rec.account.charge_memory(size, f"{type(msg).__name__} message")
        except ResourceLimitExceeded as e:
            self._record_limit(rec.id, e)  # refused: the sender gets the error
            raise
        reply = _Reply() if want_reply else None
        env = _Envelope(msg, sender, reply, size)
        rec.mailbox.append(env)
        try:
            self._submit(rec)
        except InvalidArgument:
            # No slot can hold the agent's task: the sender gets the error, so the message
            # must not also stay queued (nor charged).
            if rec.mailbox and rec.mailbox[-1] is env:
                rec.mailbox.pop()
            rec.account.release_memory(size)
            raise
        return reply

    async def _wait_for_space(self, rec: _Record, timeout: float) -> None:
        if self._full_mailbox == "fail":
            raise DeliveryError(
                f"agent {rec.name!r} has a full mailbox ({self.mailbox_size} messages); "
                "retry later or raise [runtime] message_buffer_size",
                recipient=rec.id,
                reason="mailbox full",
            )
        if rec.space is None:
            rec.space = deque()
        waiters = rec.space
        turn = self._event()
        waiters.append(turn)
        try:
            with anyio.fail_after(timeout):
                while True:
                    await turn.wait()
                    if rec.id not in self._agents:
                        raise DeliveryError(
                            f"agent {rec.name!r} was terminated while the message waited for "
                            "room in its mailbox",
                            recipient=rec.id,
                            reason="terminated",
                        )
                    if len(rec.mailbox) < self.mailbox_size:
                        return
                    turn = self._event()  # the slot went to someone else: wait again, first
                    waiters.appendleft(turn)
        except BaseException:
            with suppress(ValueError):
                waiters.remove(turn)
            if len(rec.mailbox) < self.mailbox_size:
                self._wake_one(rec)  # pass on a wake-up this waiter no longer uses
            raise

    @staticmethod
    def _wake_one(rec: _Record) -> None:
        waiters = rec.space
        while waiters:
            turn = waiters.popleft()
            if not turn.is_set():
                turn.set()
                return

    def _submit(self, rec: _Record, *, pump: bool = True) -> None:
        """Queue the agent's next task if it is idle and has mail. Raises InvalidArgument,
        queueing nothing, when no slot can hold the agent's task (slots were removed)."""
        if rec.task_id is not None or not rec.mailbox:
            return
        if self.lifecycle.state(rec.id) is not AgentState.READY:
            return
        tid = next(self._task_ids)
        lim = rec.handle.limits
        try:
            self.scheduler.submit(
                tid,
                priority=rec.priority,
                memory_mb=lim.memory_mb or 0.0,
                cpu_cores=lim.cpu_cores or 0.0,
            )
        except InvalidArgument as e:
            raise InvalidArgument(
                f"agent {rec.name!r} cannot be scheduled: {e}",
                argument="limits",
                expected="limits that fit a worker slot",
                got=msgspec.to_builtins(lim),
            ) from e
        rec.task_id = tid
        self._by_task[tid] = rec
        if pump:
            self._pump()

    def _submit_or_refuse(self, rec: _Record) -> None:
        """``_submit`` where no sender waits on the outcome: mail that no slot can take
        any more is dead-lettered, and its requesters get DeliveryError."""
        try:
            self._submit(rec, pump=False)
        except InvalidArgument as e:
            pending = list(rec.mailbox)
            rec.mailbox.clear()
            for env in pending:
                rec.account.release_memory(env.size)
                self._bus.record_dead_letter(
                    env.msg, sender=env.sender, recipient=rec.id, reason=str(e), attempts=0
                )
                if env.reply is not None and not env.reply.is_set():
                    env.reply.error = DeliveryError(
                        str(e), recipient=rec.id, reason="unschedulable"
                    )
                    env.reply.finish()
            while rec.space:  # the mailbox is empty: room for everyone waiting
                self._wake_one(rec)

    def _pump(self) -> None:
        """Start every task the scheduler places now. An agent's placement goes to its
        worker: a new one, or the one it already has (still running the last task, or
        not started yet), which takes it next. Never a second worker for one agent."""
        if self._tg is None or self._stopping:
            return
        for p in self.scheduler.schedule():
            for victim in p.preempted:
                self._preempt(victim)
            rec = self._by_task.get(p.task_id)
            if rec is None:  # cancelled meanwhile
                self.scheduler.cancel(p.task_id)
                continue
            if rec.running is None:  # a resumed (preempted) task already holds its message
                rec.running = rec.mailbox.popleft()
                if rec.space:  # a sender waits for room in the mailbox
                    self._wake_one(rec)
            start = rec.placed is None
            rec.placed = p
            if start:
                self._tg.start_soon(self._run, rec)

    def _preempt(self, task_id: int) -> None:
        rec = self._by_task.get(task_id)
        if rec is None or not self._preemptable(rec):
            return
        placed = rec.placed
        if isinstance(placed, Placement) and placed.task_id == task_id:
            # Placed but not started: withdraw it (the scheduler requeued the task and
            # places it again later; the message stays in rec.running until then).
            rec.placed = True
            self._record("agent.preempted", rec.id, {"task": task_id, "started": False})
        if rec.scope is not None:
            rec.scope.cancel()  # _dispatch sees the cancellation and suspends the agent

    async def _run(self, rec: _Record) -> None:
        """An agent's worker: runs the placements handed to it in ``rec.placed``."""
        ran = False
        try:
            while isinstance(rec.placed, Placement):
                if ran:
                    # Handlers that never await must not starve the rest of the event
                    # loop. The placement waits in rec.placed, where a preemption can
                    # still withdraw it.
                    await anyio.lowlevel.checkpoint()
                    ran = False
                    continue
                p, rec.placed = rec.placed, True
                if p.task_id == rec.task_id:  # else stale: that task ended or was cancelled
                    await self._dispatch(rec, p)
                    ran = True
        finally:
            rec.placed = None

    def _preemptable(self, rec: _Record) -> bool:
        # Only a task that holds capacity can be evicted to free it.
        lim = rec.handle.limits
        return rec.priority is not Priority.CRITICAL and bool(lim.memory_mb or lim.cpu_cores)

    async def _dispatch(self, rec: _Record, placement: Placement) -> None:
        """One scheduled task: the agent handles its queued messages, up to the dispatch
        quantum, in one Running period. Scheduling, placement and the two lifecycle
        transitions are paid once per task, not per message, as actor runtimes batch
        mailbox work (Akka's dispatcher throughput). Limits still apply per message."""
        tid = placement.task_id
        if self._stopping or self._agents.get(rec.id) is not rec:
            return  # terminated between placement and start
        resumed = self.lifecycle.state(rec.id) is AgentState.SUSPENDED
        self.lifecycle.transition(
            rec.id,
            AgentState.RUNNING,
            f"task {tid} on {placement.slot_id}" + (" (resumed)" if resumed else ""),
        )
        handled = 0
        suspend: Optional[ResourceLimitExceeded] = None
        # Every task can be cancelled (preemption, terminate, shutdown): one scope per
        # task, not per message.
        scope = rec.scope = anyio.CancelScope()
        try:
            with scope:
                while True:
                    env = rec.running
                    assert env is not None  # set when the task was placed
                    suspend = await self._handle(rec, env)
                    if self._agents.get(rec.id) is not rec:
                        return  # terminated meanwhile; its requesters were told
                    handled += 1
                    if suspend is not None or handled >= self._quantum or self._stopping:
                        break
                    if not rec.mailbox:
                        break
                    rec.running = rec.mailbox.popleft()
                    if rec.space:  # a sender waits for room in the mailbox
                        self._wake_one(rec)
                    if handled % _YIELD_EVERY == 0:
                        await anyio.lowlevel.checkpoint()
                        if self._stopping or self._agents.get(rec.id) is not rec:
                            return
        finally:
            rec.scope = None
        if scope.cancelled_caught:
            if (
                self._stopping
                or self._agents.get(rec.id) is not rec
                or self.lifecycle.state(rec.id) is not AgentState.RUNNING
            ):
                return  # shutdown or termination in progress
            # The scheduler already requeued the task; the message waits to be redone.
            rec.account.usage.tasks += 1
            self.lifecycle.transition(
                rec.id, AgentState.SUSPENDED, "preempted by a higher priority task"
            )
            self._record("agent.preempted", rec.id, {"task": tid})
            return
        if suspend is not None:
            self.lifecycle.transition(rec.id, AgentState.SUSPENDED, f"resource limit: {suspend}")
        else:
            self.lifecycle.transition(
                rec.id, AgentState.READY, f"task {tid} done ({handled} messages)"
            )
        self._finish_task(rec, tid)

    async def _handle(self, rec: _Record, env: _Envelope) -> Optional[ResourceLimitExceeded]:
        """Run the handler for one message under the agent's limits and settle its reply.
        Returns the limit error when the agent must be suspended. A cancellation (a
        preemption) propagates with the message still in ``rec.running``, to be redone."""
        handler = rec.agent.resolve(env.msg)
        assert handler is not None  # checked at delivery
        ctx = Context(
            agent_id=rec.id,
            agent_name=rec.name,
            sender=env.sender,
            account=rec.account,
            runtime=self._runtime_api,
        )
        limit = rec.handle.limits.execution_timeout
        error: Optional[BaseException] = None
        value: Any = None
        if rec.account.cpu_owed() > 0.0:
            await rec.account.pay_cpu()  # the debt of a handler that never awaited
        try:
            if limit:
                # move_on_after, not fail_after: a TimeoutError the handler raises itself
                # is its own error, not this limit.
                with anyio.move_on_after(limit) as scope:
                    value = await Metered(handler(env.msg, ctx), rec.account)
                if scope.cancelled_caught:
                    rec.account.usage.timeouts += 1
                    raise ResourceLimitExceeded(
                        f"agent {rec.name!r} exceeded its execution_timeout of {limit}s "
                        f"handling {type(env.msg).__name__}",
                        agent_id=rec.id,
                        resource="execution_timeout",
                        limit=limit,
                    )
            else:
                # Most handlers finish without suspending: run the first step here and
                # build the awaitable only for those that do not.
                done, value = Metered.first_step(handler(env.msg, ctx), rec.account)
                if not done:
                    value = await value
        except ResourceLimitExceeded as e:
            error = e
            self._record_limit(rec.id, e)
        except Exception as e:
            error = e
            self._record(
                "agent.handler_failed",
                rec.id,
                {"type": type(env.msg).__name__, "error": repr(e), "sender": env.sender},
            )
        if self._agents.get(rec.id) is not rec:
            return None  # terminated while it ran; its requester already got DeliveryError
        if error is not None and env.reply is None:
            # Nobody waits for this outcome: keep the message, not just a log line.
            log.error("agent %s failed handling %s: %r", rec.name, type(env.msg).__name__, error)
            self._bus.record_dead_letter(
                env.msg,
                sender=env.sender,
                recipient=rec.id,
                reason=f"handler of {rec.id} raised {error!r} on a message from "
                f"{env.sender or 'the runtime'}",
                attempts=1,
            )
        rec.account.usage.tasks += 1
        rec.running = None
        rec.account.release_memory(env.size)
        reply = env.reply
        if reply is not None:
            if reply.is_set():  # the requester timed out: drop the late reply
                self._late_replies += 1
            else:
                reply.value, reply.error = value, error
                reply.finish()
        self._completed += 1
        if isinstance(error, ResourceLimitExceeded) and (
            error.resource not in _TIME_BUDGETS or rec.on_timeout == "suspend"
        ):
            return error
        return None

    def _record_limit(self, agent_id: str, e: ResourceLimitExceeded) -> None:
        self._record(
            "resource.limit_exceeded",
            agent_id,
            {"resource": e.resource, "limit": e.limit, "used": e.used},
        )

    def _finish_task(self, rec: _Record, tid: int) -> None:
        self._by_task.pop(tid, None)
        rec.task_id = None
        try:
            self.scheduler.complete(tid)
        except InvalidArgument:
            # Not running there: cancelled, or requeued (a preemption that came too late,
            # a removed slot) though it finished. Drop it so it is not placed again.
            self.scheduler.cancel(tid)
        self._submit_or_refuse(rec)
        self._pump()  # this worker takes the agent's next placement, if any

    def on_reply(
        self, reply: _Reply, callback: Callable[[Any, Optional[BaseException]], None]
    ) -> None:
        """Call ``callback(value, error)`` once the request behind ``reply`` is handled
        (at once if it already was). The bus sends replies this way, without a task per
        request."""
        if reply.is_set():
            callback(reply.value, reply.error)
        else:
            reply.callback = callback

    async def wait_reply(
        self, reply: _Reply, *, recipient: str, timeout: float, total: Optional[float] = None
    ) -> Any:
        """The handler's return value (or its exception); RequestTimeout after ``timeout``."""
        if not reply.is_set():
            self._deadlines.add(anyio.current_time() + timeout, reply)
            try:
                await reply.wait(self._event)
            finally:
                if not reply.timed_out:
                    self._deadlines.settled()
        if reply.timed_out:
            total = timeout if total is None else total
            raise RequestTimeout(
                f"no reply from {recipient!r} within {total}s; the agent may be busy, "
                "suspended or slow; raise the timeout or check rt.status()",
                recipient=recipient,
                timeout=total,
            )
        if reply.error is not None:
            raise reply.error
        return reply.value

    # ------------------------------------------------------------ management
    async def run_tasks(
        self,
        tasks: Iterable[tuple[int, Message, str]],
        *,
        deadline: float,
        timeout: float,
        out: list[Any],
        failed: list[Optional[BaseException]],
    ) -> None:
        """Assign each ``(index, message, agent id)`` to its agent as a task and wait until
        ``deadline`` (``time.monotonic``) for the results: ``out[index]`` gets the
        handler's return value, ``failed[index]`` its exception, DeliveryError (the
        message is dead-lettered: the agent is terminated, has no handler for it, or kept
        a full mailbox) or RequestTimeout. No bus message is involved: the caller is the
        application, in this process, and has already admitted the work (policy, rate)."""
        replies: list[tuple[int, str, _Reply]] = []
        try:
            waited = False  # the deadline can only pass while this loop waits for room
            for i, msg, to in tasks:
                try:
                    if waited and time.monotonic() >= deadline:
                        # Time is up: the rest is not handed over, each raises a timeout.
                        raise self._task_timeout(to, timeout)
                    # Room in the mailbox: no wait, so none of deliver()'s machinery.
                    queued, reply = self.try_deliver(msg, to, sender=None, want_reply=True)
                    if not queued:
                        waited = True
                        left = deadline - time.monotonic()
                        if left <= 0.0:
                            raise self._task_timeout(to, timeout)
                        reply = await self.deliver(
                            msg, to, sender=None, timeout=left, want_reply=True
                        )
                except DeliveryError as e:
                    self._dead_letter_task(msg, to, e)
                    failed[i] = e
                    continue
                except SymbiError as e:
                    failed[i] = e
                    continue
                assert reply is not None
                replies.append((i, to, reply))
            # One deadline for the lot: wait in order; most are done by the time we look.
            with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):
                for _i, _to, reply in replies:
                    await reply.wait(self._event)
        finally:
            # Whatever is not done now never will be for this caller (deadline passed, or
            # the caller was cancelled): a result that comes later is late, and counted.
            for i, to, reply in replies:
                if not reply.is_set():
                    reply.expire()
                    failed[i] = self._task_timeout(to, timeout)
                elif reply.error is not None:
                    failed[i] = reply.error
                else:
                    out[i] = reply.value

    async def run_task(self, msg: Message, to: str, *, deadline: float, timeout: float) -> Any:
        """``run_tasks`` for one task: its handler's return value, or its exception."""
        left = deadline - time.monotonic()
        if left <= 0.0:
            raise self._task_timeout(to, timeout)
        try:
            reply = await self.deliver(msg, to, sender=None, timeout=left, want_reply=True)
        except DeliveryError as e:
            self._dead_letter_task(msg, to, e)
            raise
        assert reply is not None
        left = deadline - time.monotonic()
        if left <= 0.0 and not reply.is_set():
            reply.expire()
            raise self._task_timeout(to, timeout)
        return await self.wait_reply(reply, recipient=to, timeout=max(left, 1e-6), total=timeout)

    def _dead_letter_task(self, msg: Message, to: str, e: DeliveryError) -> None:
        self._bus.record_dead_letter(
            msg, sender=None, recipient=to, reason=e.reason or str(e), attempts=1
        )

    def _task_timeout(self, to: str, timeout: float) -> RequestTimeout:
        """The RequestTimeout of a task, counted in ``status().request_timeouts``."""
        self._task_timeouts += 1
        rec = self._agents.get(to)
        return RequestTimeout(
            f"task for {(rec.name if rec else to)!r} not done within {timeout}s; the agent may "
            "be busy, suspended or slow; raise the timeout or check rt.status()",
            recipient=to,
            timeout=timeout,
        )

    def resume(self, ref: str, reason: str = "policy cleared") -> None:
        """Suspended -> Running for an agent suspended by a limit or a policy; its queued
        mail is then handled again."""
        rec = self._rec(ref)
        if self.lifecycle.state(rec.id) is not AgentState.SUSPENDED:
            raise IllegalTransition(
                f"agent {rec.name!r} is {self.lifecycle.state(rec.id).value}, not suspended",
                agent_id=rec.id,
                from_state=self.lifecycle.state(rec.id).value,
                to_state=AgentState.RUNNING.value,
            )
        if rec.task_id is not None:
            return  # preempted: the scheduler resumes it when capacity frees
        # Resume through Running, as the machine requires, then back to Ready for new work.
        self.lifecycle.transition(rec.id, AgentState.RUNNING, reason)
        self.lifecycle.transition(rec.id, AgentState.READY, "resumed, idle")
        self._submit_or_refuse(rec)
        self._pump()

    async def terminate(self, ref: str, reason: str = "manual override") -> None:
        """End an agent in any state. A running handler is cancelled (Running ->
        Suspended -> Terminated); its message and queued mail are dead-lettered, and
        their requesters get DeliveryError(reason="terminated")."""
        await self._terminate(self._rec(ref), reason, force=False)

    async def _terminate(self, rec: _Record, reason: str, *, force: bool) -> None:
        state = self.lifecycle.state(rec.id)
        if state is AgentState.TERMINATED:
            return
        running = state is AgentState.RUNNING
        if state is AgentState.INITIALIZING and rec.scope is not None:
            rec.scope.cancel()  # on_start: spawn sees the agent gone and raises SpawnError
        if running:
            # Running -> Terminated is illegal: cancel the handler, then go through
            # Suspended. _dispatch sees the agent gone and stops.
            if rec.scope is not None:
                rec.scope.cancel()
            why = "shutdown while running" if force else f"terminating while running: {reason}"
            self.lifecycle.transition(rec.id, AgentState.SUSPENDED, why)
        elif state is AgentState.INITIALIZING:
            self.lifecycle.transition(rec.id, AgentState.FAILED, "terminated while initialising")
        if rec.task_id is not None:
            self.scheduler.cancel(rec.task_id)
            self._by_task.pop(rec.task_id, None)
            rec.task_id = None
        self.lifecycle.transition(rec.id, AgentState.TERMINATED, reason)
        current = rec.running
        pending = ([current] if current else []) + list(rec.mailbox)
        rec.mailbox.clear()
        rec.running = None
        for env in pending:
            self._bus.record_dead_letter(
                env.msg,
                sender=env.sender,
                recipient=rec.id,
                reason=f"recipient terminated: {reason}",
            )
            if env.reply is not None:
                when = "while handling" if running and env is current else "before handling"
                env.reply.error = DeliveryError(
                    f"agent {rec.name!r} was terminated ({reason}) {when} the message",
                    recipient=rec.id,
                    reason="terminated",
                )
                env.reply.finish()
        for turn in rec.space or ():
            turn.set()  # they see the agent is gone
        self._by_name.pop(rec.name, None)
        self._inboxes.pop(rec.id, None)
        del self._agents[rec.id]
        self._bus.unregister_agent(rec.id)
        if running:
            self._pump()  # its slot capacity is free for queued tasks
        if self._policy is not None:
            for pid in rec.handle.policy_ids:
                with suppress(SymbiError):  # already removed by the application
                    self._policy.remove(pid)
        if type(rec.agent).on_stop is not Agent.on_stop:  # no scopes for the default no-op
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await rec.agent.on_stop()
                except Exception:
                    log.exception("agent %s on_stop failed", rec.name)
        self.lifecycle.forget(rec.id)

    def status(self) -> SystemStatus:
        return SystemStatus(
            agents=self.lifecycle.counts(),
            scheduler=self.scheduler.status(),
            mailbox_depth=sum(len(r.mailbox) for r in self._agents.values()),
            dead_letters=int(self._bus.stats.dead_letters),
            tasks_completed=self._completed,
            # Requests are the bus's: it times them out and drops (counts) late replies.
            late_replies=int(self._bus.stats.late_replies) + self._late_replies,
            request_timeouts=int(self._bus.stats.request_timeouts)
            + self._deadlines.expired
            + self._task_timeouts,
        )

    # Set by the runtime: what a handler's Context uses to send and request.
    _runtime_api: Any = None


#: The keyword options ``spawn`` takes (``rt.spawn(agent, **spec)`` checks against them).
SPAWN_OPTIONS: tuple[str, ...] = tuple(
    p for p in inspect.signature(AgentHost.spawn).parameters if p not in ("self", "agent")
)
