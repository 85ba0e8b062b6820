"""Public entry points refuse bad input up front with a typed SymbiError that names the
argument, instead of a raw TypeError/AttributeError/OverflowError from deeper down (or
accepting it and failing later)."""

from __future__ import annotations

import functools
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

import symbi
import symbi.sync
from symbi import Agent, Config, handler
from symbi.audit import AuditLog, query_dir
from symbi.audit.reports import build
from symbi.components import Housekeeper
from symbi.errors import InvalidArgument, SymbiError
from symbi.lifecycle import LifecycleController
from symbi.policy import PolicyEngine
from symbi.rag import Document, DocumentStore, RagPipeline, load_examples, load_markdown

POLICY = "policy p { allow: [read] }"


async def _tick() -> None:
    return None


async def _tick_with(x: int) -> None:
    return None


class _AsyncCallable:
    async def __call__(self) -> None:
        return None


CASES: list[tuple[str, Callable[[], Any], str]] = [
    # config
    ("Config.load(5)", lambda: Config.load(5), "path"),  # type: ignore[arg-type]
    ("Config.load(env=5)", lambda: Config.load(env=5), "env"),  # type: ignore[arg-type]
    ("Config.load(env={int})", lambda: Config.load(env={5: "x"}), "env"),  # type: ignore[dict-item]
    (
        "Config.load(env={str: int})",
        lambda: Config.load(env={"SYMBI_LOG_LEVEL": 5}),  # type: ignore[dict-item]
        "env",
    ),
    ("Config.from_toml(5)", lambda: Config.from_toml(5), "text"),  # type: ignore[arg-type]
    ("Config.from_toml(bytes)", lambda: Config.from_toml(b"[runtime]"), "text"),  # type: ignore[arg-type]
    ("Config.from_toml(source=5)", lambda: Config.from_toml("", source=5), "source"),  # type: ignore[arg-type]
    ("Config.from_dict(env=5)", lambda: Config.from_dict({}, env=5), "env"),  # type: ignore[arg-type]
    # bus
    ("Bus.add_peer(str)", lambda: symbi.Bus().add_peer("x", "str"), "bundle"),  # type: ignore[arg-type]
    # policy engine
    ("PolicyEngine(policies=5)", lambda: PolicyEngine(policies=5), "policies"),  # type: ignore[arg-type]
    ("PolicyEngine(policies=dict)", lambda: PolicyEngine(policies={"name": "p"}), "policies"),  # type: ignore[arg-type]
    ("PolicyEngine(policies=[5])", lambda: PolicyEngine(policies=[5]), "policies[0]"),  # type: ignore[list-item]
    ("register_all(5)", lambda: PolicyEngine().register_all(5), "policies"),  # type: ignore[arg-type]
    ("register_all([p, 5])", lambda: PolicyEngine().register_all([POLICY, 5]), "policies[1]"),  # type: ignore[list-item]
    ("reload(5)", lambda: PolicyEngine().reload(5), "policies"),  # type: ignore[arg-type]
    ("reload(str)", lambda: PolicyEngine().reload(POLICY), "policies"),
    ("load_file(5)", lambda: PolicyEngine().load_file(5), "path"),  # type: ignore[arg-type]
    ("load_file(None)", lambda: PolicyEngine().load_file(None), "path"),  # type: ignore[arg-type]
    # sync runtime
    ("sync.Runtime(backend=bogus)", lambda: symbi.sync.Runtime(backend="bogus"), "backend"),
    ("sync.Runtime(backend=5)", lambda: symbi.sync.Runtime(backend=5), "backend"),  # type: ignore[arg-type]
    ("sync.Runtime().call(5)", lambda: symbi.sync.Runtime().call(5), "fn"),  # type: ignore[arg-type]
    # rag
    ("DocumentStore(5)", lambda: DocumentStore(5), "embedder"),  # type: ignore[arg-type]
    ("DocumentStore(vector_store=5)", lambda: DocumentStore(vector_store=5), "vector_store"),  # type: ignore[arg-type]
    ("DocumentStore(max_chars=0)", lambda: DocumentStore(max_chars=0), "max_chars"),
    ("DocumentStore().add(5)", lambda: DocumentStore().add(5), "documents"),  # type: ignore[arg-type]
    ("DocumentStore().add(str)", lambda: DocumentStore().add("text"), "documents"),  # type: ignore[arg-type]
    ("DocumentStore().add([5])", lambda: DocumentStore().add([5]), "documents"),  # type: ignore[list-item]
    (
        "DocumentStore().add(Document(id=5))",
        lambda: DocumentStore().add(Document(id=5, text="x")),  # type: ignore[arg-type]
        "documents",
    ),
    (
        "DocumentStore().add(Document(metadata=5))",
        lambda: DocumentStore().add(Document(id="a", text="x", metadata=5)),  # type: ignore[arg-type]
        "documents",
    ),
    ("DocumentStore().remove(5)", lambda: DocumentStore().remove(5), "doc_id"),  # type: ignore[arg-type]
    ("RagPipeline(5)", lambda: RagPipeline(5), "store"),  # type: ignore[arg-type]
    ("RagPipeline(5).run", lambda: RagPipeline(5).run("q"), "store"),  # type: ignore[arg-type]
    ("RagPipeline(generator=5)", lambda: RagPipeline(generator=5), "generator"),  # type: ignore[arg-type]
    ("RagPipeline(ranker=5)", lambda: RagPipeline(ranker=5), "ranker"),  # type: ignore[arg-type]
    ("RagPipeline().ingest(5)", lambda: RagPipeline().ingest(5), "documents"),
    ("load_markdown(missing)", lambda: load_markdown("/nonexistent/symbi-missing.md"), "path"),
    ("load_markdown(5)", lambda: load_markdown(5), "path"),  # type: ignore[arg-type]
    ("load_examples(5)", lambda: load_examples(5), "path"),  # type: ignore[arg-type]
    # audit
    ("AuditLog().query(since=1e30)", lambda: AuditLog().query(since=1e30), "since"),
    ("AuditLog().query(until=-1e30)", lambda: AuditLog().query(until=-1e30), "until"),
    (
        "AuditLog().query(until=datetime.max)",
        lambda: AuditLog().query(until=datetime.max.replace(tzinfo=timezone.utc)),
        "until",
    ),
    ("AuditLog().query(after=2**64)", lambda: AuditLog().query(after=2**64), "after"),
    ("AuditLog().query(limit=2**64)", lambda: AuditLog().query(limit=2**64), "limit"),
    ("query_dir(since=1e30)", lambda: query_dir("/nonexistent", since=1e30), "since"),
    ("reports.build(since=1e30)", lambda: build([], "hipaa", since=1e30), "since"),
    # lifecycle observers and housekeeping tasks
    ("lifecycle.subscribe(5)", lambda: LifecycleController().subscribe(5), "observer"),  # type: ignore[arg-type]
    (
        "lifecycle.subscribe(async fn)",
        lambda: LifecycleController().subscribe(_tick_with),  # type: ignore[arg-type]
        "observer",
    ),
    ("housekeeper.register(x, 5)", lambda: Housekeeper(1.0).register("x", 5), "task"),  # type: ignore[arg-type]
    (
        "housekeeper.register(x, sync fn)",
        lambda: Housekeeper(1.0).register("x", lambda: None),  # type: ignore[arg-type,return-value]
        "task",
    ),
    ("housekeeper.register(5, fn)", lambda: Housekeeper(1.0).register(5, _tick), "name"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("call", "argument"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_invalid_argument_naming_it(call, argument):
    with pytest.raises(InvalidArgument) as ei:
        call()
    e = ei.value
    assert isinstance(e, SymbiError)
    assert e.argument == argument, str(e)
    assert e.expected
    assert str(e)  # a message, saying what to pass instead


def test_valid_input_is_still_accepted(tmp_path: Path):
    # The new checks do not refuse what worked before.
    assert Config.load(None, env={}).runtime.max_concurrent_agents >= 1
    assert Config.load(env={"SYMBI_LOG_LEVEL": "debug"}).runtime.log_level == "debug"
    f = tmp_path / "c.toml"
    f.write_text("[runtime]\nmax_concurrent_agents = 7\n")
    assert Config.load(f, env={}).runtime.max_concurrent_agents == 7
    assert Config.from_toml("", env=dict(os.environ)).to_dict()
    e = PolicyEngine(policies=(POLICY,))
    assert len(e.register_all(POLICY + "\n" + POLICY.replace(" p ", " q "))) == 2
    assert len(e.reload(p for p in [POLICY])) == 1
    pol = tmp_path / "a.symbi"
    pol.write_text(POLICY)
    assert len(e.load_file(pol)) == 1
    md = tmp_path / "note.md"
    md.write_text("# Note\n\nSome text about audit trails.\n")
    store = DocumentStore()
    assert store.add(load_markdown(md)) >= 1
    assert store.add(d for d in [Document(id="b", text="more text here")]) >= 1
    store.remove("b")
    assert RagPipeline(store).run("audit trails").citations
    t = datetime(2020, 1, 1, tzinfo=timezone.utc)
    assert AuditLog().query(since=t, until=4e9, after=0, limit=10) == []
    hk = Housekeeper(1.0)
    hk.register("fn", _tick)
    hk.register("partial", functools.partial(_tick_with, 1))
    hk.register("callable", _AsyncCallable())
    unsubscribe = LifecycleController().subscribe(lambda t: None)
    unsubscribe()


def test_a_missing_markdown_file_says_which_and_what_to_do():
    with pytest.raises(InvalidArgument) as ei:
        load_markdown("/nonexistent/symbi-missing.md")
    assert "/nonexistent/symbi-missing.md" in str(ei.value)
    assert "No such file" in str(ei.value)


class _Ping(symbi.Message):
    text: str


class _Echo(Agent):
    @handler
    async def on_ping(self, msg: _Ping, ctx: symbi.Context) -> str:
        return msg.text


@pytest.mark.anyio
async def test_spawn_with_an_unknown_priority_is_invalid_argument():
    # Priority('x') itself is the enum's ValueError (standard Python); spawn converts.
    async with symbi.Runtime() as rt:
        with pytest.raises(InvalidArgument) as ei:
            await rt.spawn(_Echo, name="echo", priority="x")
        assert ei.value.argument == "priority"
        a = await rt.spawn(_Echo, name="echo2", priority="high")
        assert a.id
