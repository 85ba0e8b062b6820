"""Parsing policies: the DSL, the dict/TOML form, files, and the errors bad input gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import symbi
from symbi.errors import InvalidArgument, ParseError
from symbi.policy import Policy, load_file, parse

BRIEF = """
policy name {
    allow: [read, write] if data.source.trusted == true
    deny: [network_access] if resource.host in ["evil.com"]
    require: { encryption: "aes256", rate_limit: 100 }
    audit: { log_level: "info", include: ["principal", "action"] }
}
"""


def test_brief_example_parses_to_the_documented_dict():
    (p,) = parse(BRIEF)
    assert p.name == "name"
    assert p.to_dict() == {
        "name": "name",
        "rules": [
            {
                "effect": "allow",
                "actions": ["read", "write"],
                "if": "context.data.source.trusted == true",
            },
            {
                "effect": "deny",
                "actions": ["network_access"],
                "if": 'resource.attrs.host in ["evil.com"]',
            },
        ],
        "require": {"encryption": "aes256", "rate_limit": 100},
        "audit": {"log_level": "info", "include": ["principal", "action"]},
        "conditions": {},
    }


def test_several_blocks_and_comments_and_an_agent_wrapper():
    text = """
    // two standalone policies and one inside an agent definition
    policy a { allow: read }   # trailing comment
    /* block
       comment */
    policy b { deny: [write, "odd-name"] }
    agent helper(x: String) -> Report {
        capabilities = ["read"]
        policy inner {
            allow: read(doc) if doc.public == true
            deny: network_access(any)
            require: [mfa, rate_limit = 10]
            audit: all_operations with digital_signature
        }
    }
    """
    a, b, inner = parse(text)
    assert [p.name for p in (a, b, inner)] == ["a", "b", "inner"]
    d = inner.to_dict()
    assert d["rules"][0]["if"] == "resource.attrs.public == true"
    assert d["rules"][1] == {"effect": "deny", "actions": ["network_access"]}
    assert d["require"] == {"mfa": True, "rate_limit": 10}
    assert d["audit"] == {"scope": "all_operations", "with": ["digital_signature"]}


def test_dsl_and_dict_round_trip_to_equal_policies():
    (p,) = parse(BRIEF)
    assert Policy.from_dict(p.to_dict()) == p
    assert parse(p.to_dsl()) == [p]


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ('policy p {\n  allow: [read] if principal.role = "x"\n}', 2, 35, "compare with `==`"),
        ("policy p {\n  permit: read\n}", 2, 3, "unknown policy clause `permit`"),
        ("policy p { allow: [read }", 1, 25, "close the action list"),
        ('policy p {\n  allow: read if x == "open\n}', 2, 23, "unterminated string"),
        ("policy p { allow: read if (a == 1 }", 1, 35, "close `(`"),
        ("policy p { allow: read if f(x) }", 1, 28, "function calls are not supported"),
        ("policy p { allow: [] }", 1, 19, "at least one action"),
        ("policy p { require: [user.level >= 3] }", 1, 26, "put conditions on requests"),
        ("nothing here", 1, 13, "no policy block found"),
        ("policy p {\n allow: read\n", 3, 1, "close the policy"),
        ("policy p { allow: read if x == 99999999999999999999 }", 1, 32, "does not fit"),
    ],
)
def test_parse_errors_name_source_line_and_column(text, line, column, words):
    with pytest.raises(ParseError) as ei:
        parse(text, source="rules.symbi")
    e = ei.value
    assert (e.source, e.line, e.column) == ("rules.symbi", line, column), str(e)
    assert words in str(e)
    assert str(e).startswith(f"rules.symbi:{line}:{column}: ")


@pytest.mark.parametrize(
    ("data", "argument"),
    [
        ({"rules": []}, "policy.name"),
        ({"name": "has space"}, "policy.name"),
        ({"name": "p", "rules": [{"effect": "maybe", "actions": ["a"]}]}, "policy.rules[0].effect"),
        ({"name": "p", "rules": [{"effect": "allow", "actions": []}]}, "policy.rules[0].actions"),
        (
            {"name": "p", "rules": [{"effect": "allow", "actions": "read"}]},
            "policy.rules[0].actions",
        ),
        (
            {"name": "p", "rules": [{"effect": "allow", "actions": ["a"], "when": "x"}]},
            "policy.rules[0].when",
        ),
        ({"name": "p", "require": [1]}, "policy.require"),
        ({"name": "p", "require": {"x": float("nan")}}, "policy.require"),
        ({"name": "p", "extra": 1}, "policy.extra"),
        ({"name": "p", "require": {"x": object()}}, "policy.require.x"),
    ],
)
def test_malformed_dict_policies_name_the_field(data, argument):
    with pytest.raises(InvalidArgument) as ei:
        Policy.from_dict(data)
    assert ei.value.argument == argument, str(ei.value)


def test_dict_condition_errors_point_into_the_condition_text():
    with pytest.raises(ParseError) as ei:
        Policy.from_dict(
            {"name": "p", "rules": [{"effect": "allow", "actions": ["a"], "if": "x == == 1"}]},
            source="cfg.toml",
        )
    assert ei.value.source == "cfg.toml:rules[0].if"
    assert (ei.value.line, ei.value.column) == (1, 6)


def test_load_file_reads_dsl_toml_and_json(tmp_path: Path):
    dsl = tmp_path / "a.symbi"
    dsl.write_text(BRIEF)
    toml = tmp_path / "b.toml"
    toml.write_text(
        """
[[policy]]
name = "net"
rules = [{ effect = "deny", actions = ["network_access"], if = 'resource.host in ["evil.com"]' }]

[[policy]]
name = "reads"
principals = ["agent-1"]
rules = [{ effect = "allow", actions = ["read"] }]
require = { max_memory_mb = 64 }
"""
    )
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"name": "j", "rules": [{"effect": "allow", "actions": ["*"]}]}))
    assert [p.name for p in load_file(dsl)] == ["name"]
    net, reads = load_file(toml)
    assert reads.principals == ["agent-1"]
    assert reads.to_dict()["require"] == {"max_memory_mb": 64}
    assert net.to_dict()["rules"][0]["if"] == 'resource.attrs.host in ["evil.com"]'
    (j,) = load_file(str(js))
    assert j.to_dict()["rules"][0]["actions"] == ["*"]


def test_load_file_errors_carry_positions(tmp_path: Path):
    bad = tmp_path / "bad.policy"
    bad.write_text("policy p {\n  allow: read if a ==\n}\n")
    with pytest.raises(ParseError) as ei:
        load_file(bad)
    assert (ei.value.source, ei.value.line, ei.value.column) == (str(bad), 3, 1)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[[policy]]\nname = \n")
    with pytest.raises(ParseError) as ei:
        load_file(bad_toml)
    assert ei.value.line == 2
    with pytest.raises(InvalidArgument):
        load_file(tmp_path / "x.yaml")
    with pytest.raises(InvalidArgument):
        load_file(tmp_path / "missing.symbi")


def test_register_rejects_what_is_not_one_policy():
    e = symbi.PolicyEngine()
    with pytest.raises(InvalidArgument, match="2 policy blocks"):
        e.register("policy a { allow: x } policy b { allow: y }")
    with pytest.raises(InvalidArgument):
        e.register(42)  # type: ignore[arg-type]
    with pytest.raises(ParseError):
        e.register("policy a { allow: }")
    assert e.register_all("policy a { allow: x } policy b { allow: y }") == ["a#1", "b#2"]
