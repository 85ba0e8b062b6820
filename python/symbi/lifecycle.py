"""The agent lifecycle: exactly the seed's state machine, with observers.

    Initializing -> Ready        valid configuration
    Initializing -> Failed       invalid configuration
    Ready        -> Running      a task was assigned
    Ready        -> Terminated   shutdown
    Running      -> Suspended    policy violation, resource limit, or preemption
    Running      -> Ready        task complete
    Suspended    -> Running      policy cleared / rescheduled
    Suspended    -> Terminated   manual override
    Failed       -> Terminated

Any other transition raises :class:`~symbi.errors.IllegalTransition`. Every transition is
reported to the observers (the runtime's audit trail is one) in the order it happened.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

import msgspec

from .callbacks import is_async_callable
from .errors import IllegalTransition, InvalidArgument

__all__ = ["TRANSITIONS", "AgentState", "LifecycleController", "Transition"]

log = logging.getLogger("symbi.lifecycle")


class AgentState(str, enum.Enum):
    INITIALIZING = "initializing"
    READY = "ready"
    RUNNING = "running"
    SUSPENDED = "suspended"
    FAILED = "failed"
    TERMINATED = "terminated"


S = AgentState
TRANSITIONS: Mapping[AgentState, frozenset[AgentState]] = {
    S.INITIALIZING: frozenset({S.READY, S.FAILED}),
    S.READY: frozenset({S.RUNNING, S.TERMINATED}),
    S.RUNNING: frozenset({S.SUSPENDED, S.READY}),
    S.SUSPENDED: frozenset({S.RUNNING, S.TERMINATED}),
    S.FAILED: frozenset({S.TERMINATED}),
    S.TERMINATED: frozenset(),
}


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    from_state: AgentState
    to_state: AgentState
    reason: str
    timestamp: float


Observer = Callable[[Transition], None]


def _agent_id(agent_id: Any) -> str:
    if not isinstance(agent_id, str) or not agent_id:
        raise InvalidArgument(
            f"agent_id must be a non-empty string, got {agent_id!r}",
            argument="agent_id",
            expected="a non-empty str",
            got=agent_id,
        )
    return agent_id


def _state(value: Any, name: str = "to") -> AgentState:
    """An AgentState, or its value (``"running"``): stored states are always the enum,
    so ``is AgentState.X`` checks and observers reading ``.value`` hold."""
    if type(value) is AgentState:
        return value
    try:
        return AgentState(value)
    except (ValueError, TypeError):
        raise InvalidArgument(
            f"{name} must be an AgentState or one of "
            f"{[s.value for s in AgentState]}, got {value!r}",
            argument=name,
            expected="AgentState",
            got=value,
        ) from None


class LifecycleController:
    """Holds every agent's state and enforces the machine."""

    def __init__(self) -> None:
        self._states: dict[str, AgentState] = {}
        self._observers: list[Observer] = []
        self._counts: dict[AgentState, int] = dict.fromkeys(AgentState, 0)

    def register(self, agent_id: str) -> None:
        """A new agent starts in Initializing."""
        _agent_id(agent_id)
        if agent_id in self._states:
            raise InvalidArgument(
                f"agent {agent_id!r} is already registered; agent ids are unique",
                argument="agent_id",
                expected="a new id",
                got=agent_id,
            )
        self._states[agent_id] = AgentState.INITIALIZING
        self._counts[AgentState.INITIALIZING] += 1

    def state(self, agent_id: str) -> AgentState:
        try:
            return self._states[agent_id]
        except (KeyError, TypeError):  # TypeError: an unhashable id, never registered
            raise InvalidArgument(
                f"no agent {agent_id!r}; spawn it first",
                argument="agent_id",
                expected="a spawned agent's id",
                got=agent_id,
            ) from None

    def can(self, agent_id: str, to: AgentState) -> bool:
        return _state(to) in TRANSITIONS[self.state(agent_id)]

    def transition(self, agent_id: str, to: AgentState, reason: str) -> Transition:
        """Move ``agent_id`` to ``to`` (an AgentState or its value); IllegalTransition if
        the machine does not allow it, InvalidArgument for a bad argument."""
        current = self.state(agent_id)
        to = _state(to)
        if not isinstance(reason, str):
            raise InvalidArgument(
                f"reason must be a string, got {reason!r}",
                argument="reason",
                expected="str",
                got=reason,
            )
        if to not in TRANSITIONS[current]:
            allowed = sorted(s.value for s in TRANSITIONS[current]) or ["none: it is final"]
            raise IllegalTransition(
                f"agent {agent_id!r} cannot go from {current.value} to {to.value}; "
                f"from {current.value} it may go to {', '.join(allowed)}",
                agent_id=agent_id,
                from_state=current.value,
                to_state=to.value,
            )
        self._states[agent_id] = to
        self._counts[current] -= 1
        self._counts[to] += 1
        t = Transition(
            agent_id=agent_id, from_state=current, to_state=to, reason=reason, timestamp=time.time()
        )
        for obs in list(self._observers):
            try:
                obs(t)
            except Exception:  # an observer must never corrupt the state machine
                log.exception("lifecycle observer %r failed", obs)
        return t

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer`` on every transition; returns a function that unsubscribes.

        Observers are called synchronously, in the order transitions happen, so
        ``observer`` must be a plain function (not ``async def``) taking a Transition."""
        if not callable(observer):
            raise InvalidArgument(
                f"observer must be a function taking a Transition, got {type(observer).__name__}",
                argument="observer",
                expected="Callable[[Transition], None]",
                got=type(observer).__name__,
            )
        if is_async_callable(observer):
            raise InvalidArgument(
                "observer is an async function, but observers are called synchronously on "
                "every transition and its coroutine would never run; use a plain function "
                "(hand slow work to a task or a memory stream from there)",
                argument="observer",
                expected="a synchronous Callable[[Transition], None]",
                got=getattr(observer, "__qualname__", type(observer).__name__),
            )
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def counts(self) -> dict[str, int]:
        return {s.value: n for s, n in self._counts.items()}

    def forget(self, agent_id: str) -> None:
        """Drop a terminated agent's record (keeps memory flat over long runs)."""
        if self._states.get(_agent_id(agent_id)) is AgentState.TERMINATED:
            del self._states[agent_id]
            self._counts[AgentState.TERMINATED] -= 1

    def agents(self, state: Optional[AgentState] = None) -> list[str]:
        if state is not None:
            state = _state(state, "state")
        return [a for a, s in self._states.items() if state is None or s is state]

    def snapshot(self) -> dict[str, Any]:
        return {a: s.value for a, s in self._states.items()}
