"""Deciding requests: each policy kind, deny-overrides, enforcement, fail-closed, hot
reload, batches, the audit of denials and the runtime wiring."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

import symbi
from symbi.errors import InvalidArgument, PolicyDenied
from symbi.policy import (
    Allow,
    AllowWithConditions,
    Condition,
    Deny,
    PolicyEngine,
    PolicyRequest,
    Principal,
    Resource,
)


class MemorySink:
    """A real, minimal audit sink: keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
        self.events.append((event_type, agent_id, details))


def req(
    principal: Any = "agent-1", action: str = "read", resource: Any = "doc", **context: Any
) -> PolicyRequest:
    return PolicyRequest(principal=principal, action=action, resource=resource, context=context)


def test_access_control_by_role_and_time():
    e = PolicyEngine()
    e.register("""
        policy analysts {
            allow: [read, query] if principal.role == "analyst"
                                    && context.hour >= 8 && context.hour < 18
            allow: [read, write, query] if principal.role in ["admin", "owner"]
            deny: write if resource.attrs.locked == true
        }""")
    analyst = Principal(id="a1", attrs={"role": "analyst"})
    admin = Principal(id="ad", attrs={"role": "admin"})
    open_doc = Resource(id="d1", attrs={"locked": False})
    locked = Resource(id="d2", attrs={"locked": True})
    assert e.evaluate(req(analyst, "read", open_doc, hour=9)) == Allow()
    assert not e.evaluate(req(analyst, "read", open_doc, hour=20)).allowed
    assert not e.evaluate(req(analyst, "write", open_doc, hour=9)).allowed
    assert e.evaluate(req(admin, "write", open_doc)).allowed
    d = e.evaluate(req(admin, "write", locked))
    assert isinstance(d, Deny)
    assert d.policy == "analysts"
    assert "locked" in d.reason


def test_data_flow_who_may_send_what_to_whom():
    e = PolicyEngine()
    e.register("""
        policy flow {
            allow: send if resource in ["summarizer", "archiver"]
            deny: send if "pii" in context.data_labels && resource.attrs.zone != "internal"
        }""")
    inside = Resource(id="summarizer", attrs={"zone": "internal"})
    outside = Resource(id="archiver", attrs={"zone": "public"})
    assert e.evaluate(req("a", "send", inside, data_labels=["pii"])).allowed
    assert e.evaluate(req("a", "send", outside, data_labels=["public"])).allowed
    d = e.evaluate(req("a", "send", outside, data_labels=["pii", "finance"]))
    assert isinstance(d, Deny) and "pii" in d.reason
    assert not e.evaluate(
        req("a", "send", Resource(id="stranger", attrs={"zone": "x"}), data_labels=[])
    ).allowed


def test_resource_use_limits_come_back_as_conditions():
    e = PolicyEngine()
    e.register("""
        policy limits {
            allow: [allocate_memory, spawn]
            deny: allocate_memory if context.requested_mb > 512
            require: { max_memory_mb: 512, max_cpu_percent: 50.5 }
        }""")
    d = e.evaluate(req("a", "allocate_memory", "heap", requested_mb=128))
    assert isinstance(d, AllowWithConditions)
    assert d.require == {"max_memory_mb": 512, "max_cpu_percent": 50.5}
    assert d.policies == ["limits"]
    assert Condition("require", "max_memory_mb", 512, "limits") in d.conditions
    assert not e.evaluate(req("a", "allocate_memory", "heap", requested_mb=4096)).allowed


def test_audit_requirements_and_obligations_of_several_policies():
    e = PolicyEngine()
    e.register('policy hipaa { allow: read_record audit: { log_level: "detailed", sign: true } }')
    e.register('policy crypto { allow: [read_record] require: { encryption: "aes256" } }')
    e.register("policy plain { allow: read_record }")
    d = e.evaluate(req("doc", "read_record", "patient-7"))
    assert isinstance(d, AllowWithConditions)
    assert d.audit == {"log_level": "detailed", "sign": True}
    assert d.require == {"encryption": "aes256"}
    assert d.policies == ["hipaa", "crypto"]
    assert [c.kind for c in d.conditions] == ["audit", "audit", "require"]
    same = AllowWithConditions(d.conditions)
    assert same == d


def test_deny_overrides_allow_across_policies():
    e = PolicyEngine()
    e.register("policy a { allow: * }")
    e.register("policy b { deny: delete }")
    assert e.evaluate(req(action="anything")).allowed
    assert not e.evaluate(req(action="delete")).allowed


def test_enforce_on_denies_unmatched_and_off_allows():
    on = PolicyEngine(enforce_policies=True, policies=["policy a { allow: read }"])
    off = PolicyEngine(enforce_policies=False, policies=["policy a { allow: read }"])
    d = on.evaluate(req(action="write"))
    assert isinstance(d, Deny) and d.policy is None
    assert "no policy allows" in d.reason
    assert off.evaluate(req(action="write")) == Allow()
    on.enforce_policies = False
    assert on.evaluate(req(action="write")).allowed
    # Deny still overrides with enforcement off.
    off.register("policy b { deny: write }")
    assert not off.evaluate(req(action="write")).allowed


def test_principal_scope():
    e = PolicyEngine(policies=['policy ops { principals: ["ops-bot"] allow: restart }'])
    assert e.evaluate(req("ops-bot", "restart")).allowed
    assert not e.evaluate(req("intruder", "restart")).allowed


@pytest.mark.parametrize(
    ("condition", "context", "words"),
    [
        ("context.hour < 18", {}, "context.hour is missing"),
        ("context.hour < 18", {"hour": "noon"}, "cannot apply `<` to a string and a number"),
        ("context.flag", {"flag": 1}, "not a bool"),
        ("context.a.b == 1", {"a": "text"}, "has no field"),
        ("context.n in 5", {"n": 5}, "cannot apply `in`"),
        # Items of another type are type errors too, not a silent "no match".
        ("context.n in [0, 1]", {"n": "0"}, "cannot apply `in` to a string and a list"),
        ("context.n not in [0, 1]", {"n": "0"}, "(a string against a number)"),
        ("context.x == [1]", {"x": ["1"]}, "cannot apply `==` to a list and a list"),
        ("context.x != context.y", {"x": {"a": 1}, "y": {"a": "1"}}, "cannot apply `!=`"),
        ("context.x != 1", {"x": float("nan")}, "cannot apply `!=` to a NaN and a number"),
    ],
)
def test_conditions_that_cannot_be_evaluated_deny_and_say_why(condition, context, words):
    for enforce in (True, False):
        e = PolicyEngine(enforce_policies=enforce)
        e.register(f"policy p {{ allow: read if {condition} }}")
        d = e.evaluate(req(**context))
        assert isinstance(d, Deny), d
        assert words in d.reason and "fail closed" in d.reason


def test_a_deny_over_values_of_another_type_denies_but_unequal_values_do_not():
    e = PolicyEngine(
        policies=[
            "policy p { allow: read deny: read if principal.level in [0, 1] "
            'deny: read if "pii" in context.labels }'
        ]
    )
    d = e.evaluate(req(Principal(id="a", attrs={"level": "0"}), labels=[]))
    assert isinstance(d, Deny) and "fail closed" in d.reason, d
    assert not e.evaluate(req(Principal(id="a", attrs={"level": 1}), labels=[])).allowed
    # Same types, different values: a plain "no match", so the allow stands.
    assert e.evaluate(req(Principal(id="a", attrs={"level": 2}), labels=["PII"])) == Allow()
    assert e.evaluate(req(Principal(id="a", attrs={"level": 2.5, "x": None}), labels=[])) == Allow()


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (
            PolicyRequest(principal=123, action="read", resource="doc"),  # type: ignore[arg-type]
            "`principal`",
        ),
        (PolicyRequest(principal="a", action="", resource="doc"), "`action`"),
        (
            PolicyRequest(principal="a", action="read", resource="d", context={"x": object()}),
            "`context.x`",
        ),
        (
            PolicyRequest(principal="a", action="read", resource="d", context={1: 2}),  # type: ignore[dict-item]
            "keys must be str",
        ),
        (
            PolicyRequest(
                principal=Principal(id="a", attrs={"n": 2**70}), action="read", resource="d"
            ),
            "64 bits",
        ),
        ({"principal": "a", "action": "read", "resource": "d"}, "pass a symbi.PolicyRequest"),
        (None, "pass a symbi.PolicyRequest"),
    ],
)
def test_malformed_requests_deny_with_a_clear_reason(request_, words):
    sink = MemorySink()
    e = PolicyEngine(enforce_policies=False, audit_sink=sink)
    d = e.evaluate(request_)
    assert isinstance(d, Deny)
    assert "malformed policy request" in d.reason and words in d.reason
    assert len(sink.events) == 1
    assert e.evaluate_batch([request_]) == [d]


def test_every_denial_is_audited_and_enforce_raises():
    sink = MemorySink()
    e = PolicyEngine(audit_sink=sink, policies=["policy p { allow: read deny: wipe }"])
    assert e.enforce(req(action="read")) == Allow()
    with pytest.raises(PolicyDenied) as ei:
        e.enforce(req("agent-9", "wipe", "disk"))
    assert isinstance(ei.value.decision, Deny)
    assert ei.value.request.action == "wipe"
    e.evaluate_batch([req(action="read"), req(action="jump"), req(action="wipe")])
    assert [(t, a, d["action"]) for t, a, d in sink.events] == [
        ("policy.denied", "agent-9", "wipe"),
        ("policy.denied", "agent-1", "jump"),
        ("policy.denied", "agent-1", "wipe"),
    ]
    assert sink.events[0][2]["policy"] == "p"
    assert sink.events[0][2]["resource"] == "disk"
    assert "reason" in sink.events[1][2]


def test_a_failing_audit_sink_never_turns_a_deny_into_an_allow():
    class Broken:
        def record(self, event_type: str, agent_id: str, details: dict[str, Any]) -> None:
            raise OSError("disk full")

    e = PolicyEngine(audit_sink=Broken())
    with pytest.raises(PolicyDenied):
        e.enforce(req())
    assert e.health().status == "degraded"
    with pytest.raises(InvalidArgument):
        e.audit_sink = object()  # type: ignore[assignment]


def test_replace_remove_and_reload_take_effect_for_the_next_decision():
    e = PolicyEngine()
    pid = e.register("policy p { allow: read }")
    assert e.evaluate(req()).allowed
    e.replace(pid, "policy p { deny: read }")
    assert e.ids() == [pid]
    assert not e.evaluate(req()).allowed
    e.remove(pid)
    assert len(e) == 0
    with pytest.raises(InvalidArgument) as ei:
        e.remove(pid)
    assert ei.value.argument == "id"
    ids = e.reload(["policy a { allow: read }", {"name": "b", "rules": []}])
    assert len(ids) == 2 and e.get(ids[1]).name == "b"
    assert e.evaluate(req()).allowed


def test_reload_is_atomic_under_concurrent_decisions():
    # Two policy sets that each allow exactly one of the two actions. A decision that saw
    # half of a swap would allow both or neither.
    set_a = ["policy x { allow: left }", "policy y { deny: right }"]
    set_b = ["policy x { allow: right }", "policy y { deny: left }"]
    e = PolicyEngine(policies=set_a)
    stop = threading.Event()
    bad: list[tuple[bool, bool]] = []

    def flip() -> None:
        while not stop.is_set():
            e.reload(set_b)
            e.reload(set_a)

    t = threading.Thread(target=flip)
    t.start()
    try:
        for _ in range(2000):
            left, right = e.evaluate_batch([req(action="left"), req(action="right")])
            if left.allowed == right.allowed:
                bad.append((left.allowed, right.allowed))
    finally:
        stop.set()
        t.join(timeout=10)
    assert bad == []


def test_register_all_is_atomic_under_concurrent_decisions():
    # Policy p{i} allows only action a{i}: a decision that saw part of one register_all
    # allows some of the actions but not all.
    n = 40
    text = "\n".join(f"policy p{i} {{ allow: a{i} }}" for i in range(n))
    reqs = [req(action=f"a{i}") for i in range(n)]
    e = PolicyEngine()
    stop = threading.Event()
    partial: list[int] = []

    def decide() -> None:
        while not stop.is_set():
            allowed = sum(d.allowed for d in e.evaluate_batch(reqs))
            if allowed not in (0, n):
                partial.append(allowed)

    # Switch threads often, so the decider runs between any two steps of the writer.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=decide)
    t.start()
    try:
        for _ in range(100):
            assert len(e.register_all(text)) == n
            e.reload([])
    finally:
        stop.set()
        t.join(timeout=10)
        sys.setswitchinterval(interval)
    assert partial == []


def test_batch_equals_single():
    e = PolicyEngine(
        policies=[
            "policy p { allow: [read, send] if principal.level > 2 || context.urgent == true "
            'deny: send if resource == "outside" require: { encryption: "aes" } }'
        ]
    )
    reqs = [
        req(Principal(id=f"a{i}", attrs={"level": i % 5}), action, res, urgent=bool(i % 2))
        for i in range(20)
        for action in ("read", "send", "write")
        for res in ("inside", "outside")
    ]
    assert e.evaluate_batch(reqs) == [e.evaluate(r) for r in reqs]
    assert e.evaluate_batch([]) == []
    with pytest.raises(InvalidArgument):
        e.evaluate_batch("abc")  # type: ignore[arg-type]


def test_decision_values():
    assert Allow().allowed and Allow() == Allow()
    d = Deny("no", "p")
    assert (d.reason, d.policy, d.allowed) == ("no", "p", False)
    assert d == Deny("no", "p") and d != Deny("no")
    assert repr(d) == 'Deny(reason="no", policy="p")'
    with pytest.raises(InvalidArgument):
        Condition("other", "k", 1, "p")


@pytest.mark.anyio
async def test_runtime_has_a_policy_component_from_config():
    cfg = symbi.Config()
    async with symbi.Runtime(cfg) as rt:
        assert rt.component("policy") is rt.policy
        assert rt.policy.enforce_policies is True
        rt.policy.register("policy p { allow: read }")
        assert rt.policy.evaluate(req()).allowed
        assert rt.health().components["policy"].status == "ok"
    off = symbi.Config.from_dict({"security": {"enforce_policies": False}})
    assert symbi.Runtime(off).policy.enforce_policies is False


@pytest.mark.anyio
async def test_runtime_denials_land_in_the_audit_trail():
    async with symbi.Runtime(symbi.Config()) as rt:
        if rt.audit is None:
            pytest.skip("audit is disabled in the default config")
        assert rt.policy.audit_sink is rt.audit
        rt.policy.register("policy p { allow: read }")
        rt.policy.evaluate(req("agent-7", "delete", "db"))
        await rt.audit.flush(timeout=10)
        events = rt.audit.query(agent="agent-7", type="policy.denied")
        assert len(events) == 1
        assert events[0].details["action"] == "delete"
        assert "no policy allows" in events[0].details["reason"]


def test_batches_from_any_iterable_are_decided_and_audited():
    sink = MemorySink()
    e = PolicyEngine(audit_sink=sink, policies=["policy p { allow: read }"])
    out = e.evaluate_batch(req(action=a) for a in ("read", "write"))  # type: ignore[arg-type]
    assert [d.allowed for d in out] == [True, False]
    assert [ev[2]["action"] for ev in sink.events] == ["write"]
