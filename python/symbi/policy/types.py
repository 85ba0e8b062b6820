"""Data types of the policy engine: requests, decisions and the audit sink Protocol."""

from __future__ import annotations

from typing import Any, Protocol, Union, runtime_checkable

import msgspec

from .._core import Allow, AllowWithConditions, Condition, Deny, Policy

__all__ = [
    "Allow",
    "AllowWithConditions",
    "AuditSink",
    "Condition",
    "Decision",
    "Deny",
    "Policy",
    "PolicyRequest",
    "Principal",
    "Resource",
]

#: What a decision can be. Every variant has ``.allowed``.
Decision = Union[Allow, Deny, AllowWithConditions]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who acts: an agent id and its attributes (``principal.attrs.role`` in conditions)."""

    id: str
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)


class Resource(msgspec.Struct, frozen=True, kw_only=True):
    """What is acted on: an id (a host, a file, a recipient agent) and its attributes."""

    id: str
    attrs: dict[str, Any] = msgspec.field(default_factory=dict)


class PolicyRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One question for the policy engine: may ``principal`` do ``action`` to ``resource``?

    ``principal`` and ``resource`` are ids, or :class:`Principal` / :class:`Resource` with
    attributes. ``context`` holds everything else conditions may read (``context.hour``,
    ``context.data_labels``; an unknown root such as ``data.x`` reads ``context.data.x``).
    Values must be str, int, float, bool, None, lists or dicts of them.
    """

    principal: Union[str, Principal]
    action: str
    resource: Union[str, Resource]
    context: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def principal_id(self) -> str:
        p = self.principal
        return p if isinstance(p, str) else str(getattr(p, "id", ""))

    @property
    def resource_id(self) -> str:
        r = self.resource
        return r if isinstance(r, str) else str(getattr(r, "id", ""))


@runtime_checkable
class AuditSink(Protocol):
    """Where the engine records every denial (``symbi.audit`` provides the real log)."""

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None: ...
