"""``symbi.PolicyEngine``: the runtime component that decides every guarded action."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from anyio.abc import TaskGroup

from .._core import PolicyEngineCore
from ..components import ComponentHealth
from ..errors import InvalidArgument, PolicyDenied
from .loader import load_file, parse
from .types import AuditSink, Decision, Deny, Policy, PolicyRequest

__all__ = ["PolicyEngine", "PolicyLike"]

log = logging.getLogger("symbi.policy")

#: What ``register`` accepts: DSL text with one policy block, the dict form, or a Policy.
PolicyLike = Union[str, Mapping[str, Any], Policy]

#: The audit event type of a denial.
DENIED_EVENT = "policy.denied"


def to_policy(policy: PolicyLike, argument: str = "policy") -> Policy:
    """One :class:`Policy` from DSL text, the dict form, or a Policy."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        found = parse(policy)
        if len(found) != 1:
            raise InvalidArgument(
                f"{argument} text holds {len(found)} policy blocks; register one at a time, "
                "or use register_all() for several",
                argument=argument,
                expected="text with exactly one policy block",
                got=len(found),
            )
        return found[0]
    if isinstance(policy, Mapping):
        return Policy.from_dict(dict(policy))
    raise InvalidArgument(
        f"{argument} must be DSL text, a dict or a symbi.Policy, got {type(policy).__name__}",
        argument=argument,
        expected="str | dict | symbi.Policy",
        got=type(policy).__name__,
    )


def _policy_list(policies: Any, argument: str) -> list[Policy]:
    """Policies from a list (or other iterable) of policy-likes, else InvalidArgument."""
    if isinstance(policies, (str, bytes, bytearray, Mapping, Policy)) or not isinstance(
        policies, Iterable
    ):
        raise InvalidArgument(
            f"{argument} must be a list of policies (DSL text, dicts or symbi.Policy), "
            f"got {type(policies).__name__}; wrap a single policy in a list",
            argument=argument,
            expected="list[str | dict | symbi.Policy]",
            got=type(policies).__name__,
        )
    return [to_policy(p, f"{argument}[{i}]") for i, p in enumerate(policies)]


def _path_arg(path: Any) -> Union[str, Path]:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument(
            f"path must be the path of a .symbi/.policy/.toml/.json policy file, "
            f"got {type(path).__name__}",
            argument="path",
            expected="str | os.PathLike",
            got=type(path).__name__,
        )
    return path if isinstance(path, str) else Path(path)


class PolicyEngine:
    """Decides requests against registered policies. Deny overrides allow; with
    ``enforce_policies`` on, an action no policy allows is denied; a condition that cannot
    be evaluated, a malformed request or an internal error denies (fail closed). Every
    denial is recorded to ``audit_sink`` when one is set.

    Replacing, removing or reloading policies is atomic and takes effect for the next
    decision. A runtime component named ``"policy"`` (``rt.policy``).
    """

    name = "policy"

    def __init__(
        self,
        *,
        enforce_policies: bool = True,
        audit_sink: Optional[AuditSink] = None,
        policies: Iterable[PolicyLike] = (),
    ) -> None:
        if not isinstance(enforce_policies, bool):
            raise InvalidArgument(
                "enforce_policies must be a bool",
                argument="enforce_policies",
                expected="bool",
                got=type(enforce_policies).__name__,
            )
        self._core = PolicyEngineCore(enforce_policies)
        self._sink: Optional[AuditSink] = None
        self.audit_sink = audit_sink
        self._decisions = 0
        self._denials = 0
        self._sink_failures = 0
        self._core.register_all(_policy_list(policies, "policies"))

    # ---------------------------------------------------------------- settings
    @property
    def enforce_policies(self) -> bool:
        return self._core.enforce

    @enforce_policies.setter
    def enforce_policies(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise InvalidArgument(
                "enforce_policies must be a bool",
                argument="enforce_policies",
                expected="bool",
                got=type(on).__name__,
            )
        self._core.enforce = on

    @property
    def audit_sink(self) -> Optional[AuditSink]:
        return self._sink

    @audit_sink.setter
    def audit_sink(self, sink: Optional[AuditSink]) -> None:
        if sink is not None and not callable(getattr(sink, "record", None)):
            raise InvalidArgument(
                "audit_sink needs a record(event_type, agent_id, details) method",
                argument="audit_sink",
                expected="an AuditSink",
                got=type(sink).__name__,
            )
        self._sink = sink

    # ---------------------------------------------------------------- policies
    def register(self, policy: PolicyLike) -> str:
        """Add a policy; returns its id. Takes effect for the next decision."""
        return self._core.register(to_policy(policy))

    def register_all(self, policies: Union[str, Iterable[PolicyLike]]) -> list[str]:
        """Add several policies (or every block of one DSL text) in one atomic swap; returns
        their ids."""
        items = parse(policies) if isinstance(policies, str) else _policy_list(policies, "policies")
        return self._core.register_all(items)

    def load_file(self, path: Union[str, Path]) -> list[str]:
        """Register every policy in a .symbi/.policy/.toml/.json file; returns their ids."""
        return self._core.register_all(load_file(_path_arg(path)))

    def replace(self, policy_id: str, policy: PolicyLike) -> None:
        """Swap the policy under ``policy_id`` atomically; it keeps its id and place."""
        self._core.replace(self._id(policy_id), to_policy(policy))

    def remove(self, policy_id: str) -> None:
        self._core.remove(self._id(policy_id))

    def reload(self, policies: Iterable[PolicyLike]) -> list[str]:
        """Replace every registered policy with ``policies`` in one atomic swap."""
        return self._core.reload(_policy_list(policies, "policies"))

    def get(self, policy_id: str) -> Policy:
        return self._core.get(self._id(policy_id))

    def ids(self) -> list[str]:
        return self._core.ids()

    def __len__(self) -> int:
        return len(self._core)

    @staticmethod
    def _id(policy_id: str) -> str:
        if not isinstance(policy_id, str):
            raise InvalidArgument(
                "a policy id is the str register() returned",
                argument="policy_id",
                expected="str",
                got=type(policy_id).__name__,
            )
        return policy_id

    # --------------------------------------------------------------- decisions
    def evaluate(self, request: PolicyRequest) -> Decision:
        """Decide one request. Never raises for a bad request: that is a Deny saying why."""
        try:
            d = self._core.evaluate(request)
        except Exception as e:  # fail closed, whatever went wrong
            d = Deny(f"policy engine error while deciding: {e!r}; denying (fail closed)")
        self._decisions += 1
        if type(d) is Deny:
            self._denied(request, d)
        return d

    def evaluate_batch(self, requests: Sequence[PolicyRequest]) -> list[Decision]:
        """Decide many requests against one snapshot of the policies (GIL released)."""
        if isinstance(requests, (str, bytes)) or not hasattr(requests, "__iter__"):
            raise InvalidArgument(
                "evaluate_batch takes a list of PolicyRequest",
                argument="requests",
                expected="list[PolicyRequest]",
                got=type(requests).__name__,
            )
        reqs = requests if isinstance(requests, (list, tuple)) else list(requests)
        try:
            out = self._core.evaluate_batch(reqs)
        except Exception as e:
            out = [
                Deny(f"policy engine error while deciding: {e!r}; denying (fail closed)")
                for _ in reqs
            ]
        self._decisions += len(out)
        for r, d in zip(reqs, out):
            if type(d) is Deny:
                self._denied(r, d)
        return out

    def enforce(self, request: PolicyRequest) -> Decision:
        """Decide ``request`` and raise :class:`~symbi.errors.PolicyDenied` if denied."""
        d = self.evaluate(request)
        if type(d) is Deny:
            raise PolicyDenied(
                f"policy denied {getattr(request, 'action', '?')!r}: {d.reason}",
                decision=d,
                request=request,
            )
        return d

    def _denied(self, request: Any, d: Deny) -> None:
        self._denials += 1
        sink = self._sink
        if sink is None:
            return
        principal = getattr(request, "principal", None)
        resource = getattr(request, "resource", None)
        details = {
            "action": str(getattr(request, "action", "")),
            "resource": resource if isinstance(resource, str) else str(getattr(resource, "id", "")),
            "reason": d.reason,
            "policy": d.policy,
        }
        agent = principal if isinstance(principal, str) else str(getattr(principal, "id", ""))
        try:
            sink.record(DENIED_EVENT, agent, details)
        except Exception:
            # The denial stands; a failing sink shows up in health().
            self._sink_failures += 1
            log.exception("audit sink failed to record a policy denial")

    # --------------------------------------------------------------- component
    async def start(self, task_group: TaskGroup) -> None:
        return None

    async def stop(self) -> None:
        return None

    def health(self) -> ComponentHealth:
        detail = (
            f"{len(self)} policies, enforce={'on' if self.enforce_policies else 'off'}, "
            f"{self._decisions} decisions, {self._denials} denials"
        )
        if self._sink_failures:
            return ComponentHealth(
                status="degraded",
                detail=f"{detail}; audit sink failed {self._sink_failures} times",
            )
        return ComponentHealth(status="ok", detail=detail)
