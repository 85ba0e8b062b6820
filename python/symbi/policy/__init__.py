"""The policy engine: Symbiont policy blocks (or their dict/TOML form), decided in Rust.

DSL form (standalone, several per text, or inside a Symbiont ``agent { }``)::

    policy data_access {
        principals: ["agent-1"]                       // optional: only these principals
        allow: [read, write] if data.source.trusted == true
        allow: read(file) if file.classification != "secret"   // file = the resource
        deny: [network_access] if resource.host in ["evil.com"]
        require: { encryption: "aes256", rate_limit: 100 }     // or [mfa, rate_limit = 10]
        audit: { log_level: "info", include: ["principal", "action"] }
        conditions: { retention: "7y" }               // static facts, kept, not evaluated
    }

Conditions: ``== != < <= > >= && || ! in`` (also ``and or not``, ``not in``), brackets,
string/number/bool/null/list literals and field paths. ``principal`` (alias ``agent``,
``user``) and ``resource`` are the ids; ``principal.attrs.role`` (or ``principal.role``)
reads an attribute; ``action`` is the action; ``context.hour`` reads the context, and so
does any other root (``data.source.trusted`` is ``context.data.source.trusted``). Types are
checked: comparing a number with a string, or reading a missing field, is an error, and an
error denies with the reason (fail closed). ``//``, ``#`` and ``/* */`` are comments.

Dict form (the same IR; TOML uses ``[[policy]]`` tables with these keys)::

    {"name": "data_access",
     "principals": ["agent-1"],                                  # optional
     "rules": [{"effect": "allow", "actions": ["read", "write"],
                "if": "data.source.trusted == true"},            # "if" optional
               {"effect": "deny", "actions": ["network_access"],
                "if": 'resource.host in ["evil.com"]'}],
     "require": {"encryption": "aes256", "rate_limit": 100},
     "audit": {"log_level": "info"},
     "conditions": {}}

``Policy.to_dsl()`` and ``Policy.to_dict()`` print either form; reading it back gives an
equal ``Policy``. Decisions: :class:`Allow`, :class:`Deny` (``reason``, ``policy``) or
:class:`AllowWithConditions` (``conditions``: the ``require`` and ``audit`` entries of the
allowing policies). Deny overrides allow; with ``enforce_policies`` on, no matching allow
denies; otherwise it allows.
"""

from __future__ import annotations

from .engine import PolicyEngine, PolicyLike
from .loader import from_data, load_file, parse
from .types import (
    Allow,
    AllowWithConditions,
    AuditSink,
    Condition,
    Decision,
    Deny,
    Policy,
    PolicyRequest,
    Principal,
    Resource,
)

__all__ = [
    "Allow",
    "AllowWithConditions",
    "AuditSink",
    "Condition",
    "Decision",
    "Deny",
    "Policy",
    "PolicyEngine",
    "PolicyLike",
    "PolicyRequest",
    "Principal",
    "Resource",
    "from_data",
    "load_file",
    "parse",
]
