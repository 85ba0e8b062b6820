"""The Symbiont DSL parser: every construct, error positions, the spec, embedded policies,
the shipped examples and `symbi dsl check`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import symbi
from symbi import dsl
from symbi.cli.main import main
from symbi.errors import InvalidArgument, ParseError
from symbi.policy import AllowWithConditions, Condition, Deny, Policy, Principal

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "agents").glob("*.symbi"))

FULL = """\
// line comment
# hash comment
metadata {
    version = "1.0.0"
    author: "symbi",
    description = "every construct"
    tags = ["a", "b"]
    limits = { retries: 3, ratio: 0.5, on: true, unit: seconds, wait: 30s }
}

type Ticket = { id: String, tags: List<String>, }
type TicketId = String

policy shared { deny: [network_access] if resource.attrs.external == true }

agent triage(ticket: Ticket, extra: Map<String, int>) -> Result<Report, Error> {
    capabilities = [read, "summarize"];
    policy guard {
        allow: [read, summarize] if principal.attrs.clearance >= 2
        deny: delete
        require: { encryption: "aes256" }
    }
    function score(t: Ticket) -> int {
        t.priority * 2 + 1
    }
    with memory = "persistent", security = "high", sandbox = "Tier1", timeout = 30.seconds,
         max_memory_mb = 512, max_cpu_cores = 2, network_policy = deny_all {
        let s = score(ticket);
        total += s;
        if let Some(x) = lookup(ticket.id) { log("INFO", x); } else if s > 3 { return; }
        for item in ticket.items { items[0].seen = true; }
        match ticket.kind {
            "bug" => { return Report { kind: "bug", score: s }; },
            42 => fallback(kind = ticket.kind, f: x => x + 1),
            _ => {}
        }
        try { risky(); } catch (IoError e) { log("WARN", e.message); } catch (e) { }
        let v = if s >= 10 { "high" } else { "low" };
        let secret = vault://tickets/api-key;
        let ok = !(s in [1, 2, 3]) && not done || -s < 0 % 2;
        Report { kind: v, score: s }
    }
}

function helper(x: int) -> int { return x; }
schedule nightly { cron: "0 2 * * *", agent: "triage" }
channel ops {
    platform: "slack"
    policy ch { allow: invoke }
    data_classification { pii: redact, phi: block }
}
memory store { backend "sqlite" search { top_k 5 } }
webhook hook { path "/h" agent triage filter { equals "x" } }
"""


def stmt_kinds(block: dict[str, Any]) -> list[str]:
    return [s["kind"] for s in block["statements"]]


def test_every_construct_parses_into_the_kept_ast() -> None:
    f = dsl.parse(FULL, "full.symbi")
    assert f.source == "full.symbi"
    assert f.metadata == {
        "version": "1.0.0",
        "author": "symbi",
        "description": "every construct",
        "tags": ["a", "b"],
        "limits": {"retries": 3, "ratio": 0.5, "on": True, "unit": "seconds", "wait": "30s"},
    }
    assert [t["name"] for t in f.types] == ["Ticket", "TicketId"]
    assert f.types[0]["fields"] == [("id", "String"), ("tags", "List<String>")]
    assert f.types[1]["alias"] == "String"
    assert [p.name for p in f.policies] == ["shared"]
    assert [fn["name"] for fn in f.functions] == ["helper"]
    assert [b["kind"] for b in f.blocks] == ["schedule", "channel", "memory", "webhook"]
    channel = f.blocks[1]
    assert channel["properties"] == {"platform": "slack"}
    assert channel["blocks"] == {"data_classification": {"pii": "redact", "phi": "block"}}
    assert [p.name for p in channel["policies"]] == ["ch"]
    assert f.blocks[2]["blocks"] == {"search": {"top_k": 5}}
    assert f.blocks[3]["properties"] == {"path": "/h", "agent": "triage"}
    assert [p.name for p in f.all_policies] == ["shared", "guard", "ch"]

    a = f.agent("triage")
    assert (a.line, a.column) == (16, 1)
    assert a.params == [("ticket", "Ticket"), ("extra", "Map<String, int>")]
    assert a.return_type == "Result<Report, Error>"
    assert a.capabilities == ["read", "summarize"]
    assert [p.name for p in a.policies] == ["guard"]
    assert a.with_settings["network_policy"] == "deny_all"
    assert a.with_settings["timeout"] == "30.seconds"
    assert [fn["name"] for fn in a.functions] == ["score"]
    tail = a.functions[0]["body"]["value"]
    assert (tail["kind"], tail["op"]) == ("binary", "+")
    assert (tail["left"]["kind"], tail["left"]["op"]) == ("binary", "*")

    body = a.body
    assert body is not None and body["kind"] == "block"
    assert stmt_kinds(body) == [
        "let",
        "assign",
        "if",
        "for",
        "match",
        "try",
        "let",
        "let",
        "let",
    ]
    let_s, assign, if_let, for_, match, try_, let_v, let_secret, let_ok = body["statements"]
    assert let_s["value"]["kind"] == "call" and let_s["value"]["callee"]["name"] == "score"
    assert (assign["op"], assign["target"]["name"]) == ("+=", "total")
    assert if_let["pattern"] == {
        "pattern": "constructor",
        "name": "Some",
        "args": [{"pattern": "name", "name": "x"}],
    }
    assert if_let["else"]["kind"] == "if" and if_let["else"]["else"] is None
    assert stmt_kinds(if_let["else"]["then"]) == ["return"]
    assert for_["var"] == "item" and for_["iterable"]["kind"] == "member"
    assign_in_loop = for_["body"]["statements"][0]
    assert assign_in_loop["target"]["kind"] == "member"
    assert assign_in_loop["target"]["object"]["kind"] == "index"
    arms = match["arms"]
    assert [arm["pattern"] for arm in arms] == [
        {"pattern": "literal", "value": "bug"},
        {"pattern": "literal", "value": 42},
        {"pattern": "wildcard"},
    ]
    assert arms[0]["body"]["kind"] == "block"
    call = arms[1]["body"]
    assert [name for name, _ in call["args"]] == ["kind", "f"]
    assert call["args"][1][1]["kind"] == "lambda"
    assert arms[2]["body"] == {
        "kind": "block",
        "line": 35,
        "column": 18,
        "statements": [],
        "value": None,
    }
    assert [(c["type"], c["name"]) for c in try_["catches"]] == [("IoError", "e"), (None, "e")]
    assert let_v["value"]["kind"] == "if" and let_v["value"]["else"]["kind"] == "block"
    assert let_secret["value"] == {
        "kind": "vault",
        "line": 39,
        "column": 22,
        "path": "vault://tickets/api-key",
    }
    ok = let_ok["value"]
    assert (ok["kind"], ok["op"]) == ("binary", "||")
    assert ok["left"]["op"] == "&&" and ok["left"]["left"]["op"] == "!"
    assert ok["right"]["op"] == "<" and ok["right"]["left"]["op"] == "-"
    assert body["value"]["kind"] == "record" and body["value"]["type"] == "Report"


def test_durations_numbers_and_strings() -> None:
    f = dsl.parse(
        "function f() { let a = [30s, 5m, 2h, 7d, 1w, 6months, 1y, 1.5h, 2.minutes, "
        '1_000, 3.25, "\\u{41}\\n\\d"]; }'
    )
    items = f.functions[0]["body"]["statements"][0]["value"]["items"]
    seconds = [i["seconds"] for i in items[:9]]
    assert seconds == [30, 300, 7200, 604800, 604800, 6 * 2592000, 31536000, 5400, 120]
    assert items[9] == {"kind": "int", "line": 1, "column": 76, "value": 1000}
    assert items[10]["value"] == 3.25
    assert items[11]["value"] == "A\n\\d"


def test_the_spec_maps_with_settings_to_spawn_keywords() -> None:
    a = dsl.parse(FULL).agent("triage")
    spec = a.spec()
    assert spec == {
        "name": "triage",
        "capabilities": ["read", "summarize"],
        "limits": {"memory_mb": 512.0, "cpu_cores": 2.0, "execution_timeout": 30.0},
        "sandbox": "Tier1",
        "security": "high",
        "memory": "persistent",
        "policies": a.policies,
    }
    symbi.ResourceLimits.parse(spec["limits"])  # a valid limits mapping
    bare = dsl.parse("agent bare { }").agent("bare")
    assert bare.spec()["limits"] == {
        "memory_mb": None,
        "cpu_cores": None,
        "execution_timeout": None,
    }
    assert (bare.sandbox, bare.security, bare.memory, bare.body) == (None, None, None, None)


@pytest.mark.parametrize(
    ("setting", "key", "value"),
    [
        ('sandbox = "docker"', "sandbox", "Tier1"),
        ("sandbox = gvisor", "sandbox", "Tier2"),
        ('sandbox = "tier3"', "sandbox", "Tier3"),
        ('sandbox = "e2b"', "sandbox", "e2b"),
        ('sandbox = "local"', "sandbox", "local"),
        ("timeout = 60000", "execution_timeout", 60.0),  # bare numbers are milliseconds
        ("timeout = 5m", "execution_timeout", 300.0),
        ('timeout = "1h30m"', "execution_timeout", 5400.0),
        ('timeout = "10.seconds"', "execution_timeout", 10.0),
        ("max_memory_mb = 0.5", "memory_mb", 0.5),
        ("max_cpu_cores = 0.25", "cpu_cores", 0.25),
    ],
)
def test_settings_are_normalised(setting: str, key: str, value: object) -> None:
    a = dsl.parse(f"agent a {{ with {setting} {{ }} }}").agent("a")
    spec = a.spec()
    got = spec["limits"][key] if key in spec["limits"] else spec[key]
    assert got == value


# (text, line, column, words in the message)
MALFORMED = [
    ("agnet a {}", 1, 1, "expected a top-level item"),
    ("metadata { version = }", 1, 22, "expected a value"),
    ('metadata {\n  version "1"\n}', 2, 11, "`=` or `:` after metadata key `version`"),
    ("agent a(x String) {}", 1, 11, "expected `:`"),
    ("agent a {\n  capabilities = read\n}", 2, 18, "`[` to open the capability list"),
    ('agent a {\n  with sandbox = "Tier1" {\n    let x = 1\n  }\n}', 4, 3, "expected `;`"),
    ("agent a {\n  with x = 1 {\n    return 1 +;\n  }\n}", 3, 15, "expected an expression"),
    ("agent a {\n  with x = 1 {\n    f(1) = 2;\n  }\n}", 3, 10, "can only assign"),
    ("agent a {\n  with x = 1 {\n    let v = if a { 1 };\n  }\n}", 3, 23, "needs an else"),
    ('agent a {\n  sandbox = "Tier1"\n}', 2, 3, "an agent item"),
    ('agent a {\n  with sandbox = "Tier9" {}\n}', 2, 8, "unknown sandbox"),
    ("agent a {\n  with max_memory_mb = -5 {}\n}", 2, 8, "must be > 0"),
    ('agent a {\n  with max_cpu_cores = "two" {}\n}', 2, 8, "must be a number"),
    ('agent a {\n  with timeout = "soon" {}\n}', 2, 8, "is not a duration"),
    ("agent a { with timeout = 10px {} }", 1, 26, "unknown unit `px`"),
    ("agent a { with x = 1, x = 2 {} }", 1, 23, "set twice"),
    ('agent a { with x = "open {} }', 1, 20, "unterminated string"),
    ("agent a { with x = 'single' {} }", 1, 20, "double quotes"),
    ("agent a {\n  policy p {\n    allow: read if x = 1\n  }\n}", 3, 22, "compare with `==`"),
    ("agent a {\n  policy p { allow: [read }\n}", 2, 27, "expected `]`"),
    ("agent a {\n  policy p {\n    permit: read\n  }\n}", 3, 5, "unknown policy clause"),
    ("agent a {}\nagent a {}", 2, 1, "already defined"),
    ("agent a {\n  with x = 1 {\n", 3, 1, "expected `}`"),
]


@pytest.mark.parametrize(("text", "line", "column", "words"), MALFORMED)
def test_errors_give_line_column_and_what_was_expected(
    text: str, line: int, column: int, words: str
) -> None:
    with pytest.raises(ParseError) as ei:
        dsl.parse(text, "bad.symbi")
    e = ei.value
    assert (e.source, e.line, e.column) == ("bad.symbi", line, column), str(e)
    assert words in str(e)
    assert str(e).startswith(f"bad.symbi:{line}:{column}: ")


def test_embedded_policies_equal_the_same_policy_parsed_standalone() -> None:
    f = dsl.parse(FULL)
    guard_text = """policy guard {
        allow: [read, summarize] if principal.attrs.clearance >= 2
        deny: delete
        require: { encryption: "aes256" }
    }"""
    (standalone,) = symbi.policy.parse(guard_text)
    (embedded,) = f.agent("triage").policies
    assert isinstance(embedded, Policy)
    assert embedded == standalone
    assert embedded.to_dict() == standalone.to_dict()
    for example in EXAMPLES:
        parsed = dsl.parse_file(example)
        # The policy engine reads the same blocks straight from the file.
        assert sorted(p.name for p in symbi.policy.load_file(example)) == sorted(
            p.name for p in parsed.all_policies
        )
        by_name = {p.name: p for p in symbi.policy.load_file(example)}
        for p in parsed.all_policies:
            assert p == by_name[p.name]


def test_embedded_policies_decide_in_the_engine() -> None:
    a = dsl.parse(FULL).agent("triage")
    engine = symbi.PolicyEngine()
    for p in a.policies:
        engine.register(p)
    # An enforcing engine denies unmatched actions anyway; the decision must come from guard.
    d = engine.evaluate(symbi.PolicyRequest(principal="x", action="delete", resource="r"))
    assert isinstance(d, Deny)
    assert d.policy == "guard"
    cleared = Principal(id="x", attrs={"clearance": 3})
    d = engine.evaluate(symbi.PolicyRequest(principal=cleared, action="read", resource="r"))
    assert d == AllowWithConditions([Condition("require", "encryption", "aes256", "guard")])
    uncleared = Principal(id="x", attrs={"clearance": 1})
    d = engine.evaluate(symbi.PolicyRequest(principal=uncleared, action="read", resource="r"))
    assert isinstance(d, Deny)
    assert d.policy is None


LENIENT = """agent ops(action: String) -> Result {
    policy least_privilege {
        allow: read_logs(service) if true
        deny: deploy(service, version) if not context.approved
    }
    with sandbox = "Tier1" { return action; }
}
"""


def test_policies_the_engine_cannot_compile_are_errors_unless_lenient() -> None:
    with pytest.raises(ParseError) as ei:
        dsl.parse(LENIENT, "ops.symbi")
    assert (ei.value.line, ei.value.column) == (4, 29)
    assert "in policy `least_privilege`" in str(ei.value)
    f = dsl.parse(LENIENT, "ops.symbi", strict=False)
    (w,) = f.warnings
    assert (w.kind, w.line, w.column) == ("warning", 4, 29)
    assert "kept but not enforced" in w.message
    a = f.agent("ops")
    assert a.policies == []
    (kept,) = a.unsupported_policies
    assert kept["name"] == "least_privilege"
    assert [r["rule"] for r in kept["rules"]] == ["allow", "deny"]
    assert kept["rules"][1]["value"]["kind"] == "call"
    # Fail closed: no spec with less governance than written.
    with pytest.raises(InvalidArgument, match="cannot enforce"):
        a.spec()
    # Grammar errors inside a policy are errors even when lenient.
    with pytest.raises(ParseError):
        dsl.parse("policy p { deny: ( }", strict=False)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_parse(example: Path) -> None:
    f = dsl.parse_file(example)
    assert f.agents, "every example defines an agent"
    assert f.metadata["version"] and f.metadata["description"]
    for a in f.agents:
        spec = a.spec()
        assert spec["sandbox"] in ("Tier1", "Tier2")
        assert a.policies and a.body is not None
        symbi.ResourceLimits.parse(spec["limits"])
    assert not dsl.check_files([example])


def test_there_are_at_least_three_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.anyio
async def test_a_dsl_spec_spawns_an_agent() -> None:
    a = dsl.parse_file(ROOT / "examples" / "agents" / "support_triage.symbi").agent(
        "support_triage"
    )

    async def triage(msg: symbi.Message, ctx: symbi.Context) -> str:
        return "ok"

    kwargs = a.spawn_kwargs()
    assert kwargs["name"] == "support_triage"
    async with symbi.Runtime() as rt:
        h = await rt.spawn(triage, **kwargs)
        assert h.name == "support_triage"


def test_bad_arguments_and_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        dsl.parse(b"agent a {}")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="cannot read"):
        dsl.parse_file(tmp_path / "nope.symbi")
    with pytest.raises(InvalidArgument):
        dsl.parse("agent a {}").agent("b")
    binary = tmp_path / "bin.symbi"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ParseError, match="not UTF-8"):
        dsl.parse_file(binary)


def test_check_files_reports_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.symbi"
    good.write_text("agent a { }")
    bad = tmp_path / "bad.symbi"
    bad.write_text("agent a {\n  with x = {}\n")
    problems = dsl.check_files([good, bad, tmp_path / "missing.symbi"])
    assert [p.kind for p in problems] == ["error", "missing"]
    assert str(problems[0]).startswith(f"{bad}:3:1: error: expected")
    assert problems[1].line is None
    lenient = tmp_path / "lenient.symbi"
    lenient.write_text(LENIENT)
    assert [p.kind for p in dsl.check_files(lenient, strict=False)] == ["warning"]


def test_cli_dsl_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dsl", "check", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert f"ok {EXAMPLES[0]}: 1 agent, " in out
    assert out.count("ok ") == len(EXAMPLES)

    bad = tmp_path / "bad.symbi"
    bad.write_text("agent a {\n  capabilities = read\n}\n")
    assert main(["dsl", "check", str(EXAMPLES[0]), str(bad)]) == 1
    cap = capsys.readouterr()
    assert f"{bad}:2:18: error: expected `[`" in cap.err
    assert "ok " in cap.out

    assert main(["dsl", "check", str(bad), str(tmp_path / "missing.symbi")]) == 2
    assert "missing.symbi" in capsys.readouterr().err

    lenient = tmp_path / "ops.symbi"
    lenient.write_text(LENIENT)
    assert main(["dsl", "check", str(lenient)]) == 1
    assert main(["dsl", "check", "--lenient", str(lenient)]) == 0
    cap = capsys.readouterr()
    assert "warning: policy `least_privilege` is kept but not enforced" in cap.err
    assert f"ok {lenient}: 1 agent, 0 policies" in cap.out


def test_to_dict_is_plain_data() -> None:
    d = dsl.parse(FULL).agent("triage").to_dict()
    assert d["name"] == "triage"
    assert d["policies"][0]["name"] == "guard"
    assert d["body"]["kind"] == "block"


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "bom.symbi"
    f.write_bytes(b"\xef\xbb\xbfagent a() {}\n")
    assert [a.name for a in dsl.parse_file(f).agents] == ["a"]
    p = tmp_path / "bom.symbi"
    p.write_bytes(b"\xef\xbb\xbfpolicy p { allow: [read] }\n")
    assert [x.name for x in symbi.policy.load_file(p)] == ["p"]


def test_check_names_a_non_utf8_file_once(tmp_path: Path, capsys: Any) -> None:
    f = tmp_path / "latin1.symbi"
    f.write_bytes("agent caf\xe9 {}".encode("latin-1"))
    assert main(["dsl", "check", str(f)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.count(str(f)) == 1, err
    assert "not UTF-8" in err and "save it as UTF-8" in err
