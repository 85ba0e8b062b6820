"""Deep nesting and huge input in DSL and policy text: a ParseError naming the limit, never a
crash of the process. Each check runs in a child Python whose parsing thread has a small
stack, so a stack overflow shows as a failed test instead of killing pytest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import symbi
from symbi import dsl
from symbi.errors import ParseError

LIMIT = 256
N = 100_000


CHILD_PRELUDE = """
import json, threading
import symbi
from symbi import dsl
from symbi.errors import ParseError
from symbi.policy import Policy, PolicyEngine, PolicyRequest, Principal

def outcome(fn, *args):
    try:
        fn(*args)
    except ParseError as e:
        return {"error": str(e), "line": e.line, "column": e.column}
    return {"ok": True}

box = {}
def work():
"""

CHILD_EPILOGUE = """
    box["result"] = result
threading.stack_size(256 * 1024)
t = threading.Thread(target=work)
t.start()
t.join()
print(json.dumps(box["result"]))
"""


def run_child(body: str) -> Any:
    """Run `body` (which sets `result`) on a thread with a 256 KiB stack in a fresh Python;
    return `result` as JSON data. A crash fails the test with the child's exit status."""
    code = CHILD_PRELUDE + textwrap.indent(textwrap.dedent(body), "    ") + CHILD_EPILOGUE
    proc = subprocess.run(
        [sys.executable, "-"], input=code, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"child crashed ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


DEEP_CONDITIONS = {
    "parentheses": "(" * N + "x == 1" + ")" * N,
    "bangs": "!" * N + "x",
    "nots": "not " * N + "x",
    "and chain": "x" + " && x" * N,
    "or chain": "x" + " or x" * N,
    "lists": "x in " + "[" * N + "1" + "]" * N,
    "maps": "x == " + "{a: " * N + "1" + "}" * N,
}

DEEP_DSL = {
    "parentheses": "function f() { " + "(" * N + "1" + ")" * N + " }",
    "blocks": "function f() { " + "if a { " * N + "1" + " }" * N + " }",
    "records": "function f() { " + "{x: " * N + "1" + "}" * N + " }",
    "unary": "function f() { " + "-" * N + "x }",
    "lambdas": "function f() { " + "x => " * N + "1 }",
    "calls": "function f() { " + "f(" * N + "x" + ")" * N + " }",
    "else if": "function f() { if a { 1 }" + " else if a { 1 }" * N + " else { 2 } }",
    "data": "metadata { k = " + "[" * N + "1" + "]" * N + " }",
    "types": "type T = " + "List<" * N + "int" + ">" * N,
    "embedded policy": "agent a { policy p { allow: x if " + "(" * N + "y" + ")" * N + " } }",
}


def test_deep_policy_text_is_a_parse_error_not_a_crash() -> None:
    results = run_child(
        f"""
        conds = {DEEP_CONDITIONS!r}
        result = {{}}
        for name, cond in conds.items():
            result[name + " (block)"] = outcome(
                symbi.policy.parse, "policy p {{\\n  allow: read if " + cond + "\\n}}"
            )
            result[name + " (dict)"] = outcome(
                Policy.from_dict,
                {{"name": "p", "rules": [{{"effect": "allow", "actions": ["a"], "if": cond}}]}},
            )
        """
    )
    assert len(results) == 2 * len(DEEP_CONDITIONS)
    for name, r in results.items():
        assert f"nested more than {LIMIT} levels deep" in r.get("error", ""), (name, r)
        assert r["line"] in (1, 2), (name, r)
        assert LIMIT < r["column"] < 10 * LIMIT, (name, r)


def test_deep_dsl_text_is_a_parse_error_not_a_crash() -> None:
    results = run_child(
        f"""
        result = {{name: outcome(dsl.parse, text) for name, text in {DEEP_DSL!r}.items()}}
        result.update({{
            name + " (lenient)": outcome(lambda t: dsl.parse(t, strict=False), text)
            for name, text in {DEEP_DSL!r}.items()
        }})
        """
    )
    assert len(results) == 2 * len(DEEP_DSL)
    for name, r in results.items():
        assert f"nested more than {LIMIT} levels deep" in r.get("error", ""), (name, r)
        assert r["line"] == 1 and r["column"] > LIMIT, (name, r)


def test_conditions_at_the_limit_decide_on_a_small_stack() -> None:
    # The parse-time limit bounds the evaluator's recursion: conditions nested to the limit
    # in each way decide correctly on a thread with a 256 KiB stack.
    deep_list = "[" * LIMIT + "1" + "]" * LIMIT
    policy = (
        "policy deep {\n"
        f"  allow: read if {'!' * (LIMIT - 2)}(principal.attrs.ok == true)\n"
        f"  allow: write if {' || '.join(f'context.n == {i}' for i in range(LIMIT + 1))}\n"
        f"  allow: copy if {deep_list} == {deep_list}\n"
        f"  allow: move if {'(' * LIMIT}context.n == 7{')' * LIMIT}\n"
        "}"
    )
    results = run_child(
        f"""
        e = PolicyEngine()
        e.register({policy!r})
        ok = Principal(id="a", attrs={{"ok": True}})
        no = Principal(id="b", attrs={{"ok": False}})
        def allowed(who, action, **context):
            req = PolicyRequest(principal=who, action=action, resource="r", context=context)
            return e.evaluate(req).allowed
        (p,) = symbi.policy.parse({policy!r})
        result = {{
            "read ok": allowed(ok, "read"),
            "read no": allowed(no, "read"),
            "write 256": allowed(ok, "write", n={LIMIT}),
            "write 999": allowed(ok, "write", n=999),
            "copy": allowed(ok, "copy"),
            "move": allowed(ok, "move", n=7),
            "round trip": Policy.from_dict(p.to_dict()) == p,
        }}
        """
    )
    assert results == {
        "read ok": True,
        "read no": False,
        "write 256": True,
        "write 999": False,
        "copy": True,
        "move": True,
        "round trip": True,
    }


def test_one_level_past_the_limit_is_refused_with_its_position() -> None:
    at = "(" * LIMIT + "x" + ")" * LIMIT
    (p,) = symbi.policy.parse(f"policy p {{ allow: r if {at} }}")
    assert p.to_dict()["rules"][0]["if"] == "context.x"
    with pytest.raises(ParseError) as ei:
        symbi.policy.parse(f"policy p {{\n  allow: r if ({at})\n}}", source="deep.symbi")
    assert (ei.value.source, ei.value.line, ei.value.column) == ("deep.symbi", 2, 15 + LIMIT)
    assert f"nested more than {LIMIT} levels deep" in str(ei.value)


def test_huge_input_is_refused_before_parsing() -> None:
    big = "# " + "x" * (4 << 20) + "\n"
    for parse in (symbi.policy.parse, dsl.parse):
        with pytest.raises(ParseError) as ei:
            parse(big)
        assert (ei.value.line, ei.value.column) == (1, 1)
        assert "more than the limit" in str(ei.value)
        assert "split it into several files" in str(ei.value)


def test_dsl_at_the_limit_parses_on_a_small_stack() -> None:
    # The AST of text nested just under the limit is converted to Python data and dropped on
    # the caller's (small) stack.
    texts = [
        "function f() { " + "(" * (LIMIT - 2) + "1" + ")" * (LIMIT - 2) + " }",
        "function f() { x" + " + x" * (LIMIT - 2) + " }",
        "function f() { " + "!" * (LIMIT - 2) + "x }",
        "metadata { k = " + "[" * (LIMIT - 1) + "1" + "]" * (LIMIT - 1) + " }",
    ]
    results = run_child(f"result = [outcome(dsl.parse, t) for t in {texts!r}]")
    assert results == [{"ok": True}] * len(texts)
