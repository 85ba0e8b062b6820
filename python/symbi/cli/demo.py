"""``symbi demo``: the main job on embedded defaults, as a short readable summary.

Every step uses the public API and fails loudly; the audit trail written along the way is
verified from disk at the end.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import anyio
import msgspec

import symbi
import symbi.policy
import symbi.rag
from symbi.audit import verify_dir
from symbi.errors import InvalidArgument, PolicyDenied

__all__ = ["run_demo"]

# The demo's rules, in the Symbiont policy DSL: who may do what, and under which conditions.
DEMO_POLICY = """
policy demo_guardrails {
    allow: [create_agent, request_resources, send, request, publish, subscribe]
    deny: [network_access] if resource in ["exfil.example.com"]
    deny: [send] if "pii" in context.data_labels && resource.attrs.name == "outside-vendor"
    allow: [network_access] if resource == "api.partner.example"
    require: { encryption: "aes256", rate_limit: 1000 }
    audit: { log_level: "info" }
}
"""


def _line(label: str, text: str) -> None:
    print(f"  {label:<13} {text}")


class Task(symbi.Message):
    """A unit of work for the demo's workers."""

    job: str
    size: int


class Done(symbi.Message):
    job: str
    worker: str
    result: int


class Worker(symbi.Agent):
    @symbi.handler
    async def on_task(self, msg: Task, ctx: symbi.Context) -> Done:
        await anyio.sleep(0.001 * msg.size)  # stands in for real work
        # Each worker remembers what it did, in its own vector-indexed memory.
        await ctx.memory.store(f"finished {msg.job} of size {msg.size}", timeout=5)
        done = Done(job=msg.job, worker=self.name, result=msg.size * msg.size)
        # ... and tells whoever follows "jobs.*", signed as itself, encrypted for the topic.
        await ctx.publish("jobs.done", done, timeout=5)
        return done


class Ledger(symbi.Agent):
    """Totals the results it hears about on "jobs.*"."""

    def __init__(self, expect: int = 0) -> None:
        super().__init__()
        self.total = 0
        self.heard = 0
        self.expect = expect
        self.all_heard = anyio.Event()

    @symbi.handler
    async def on_done(self, msg: Done, ctx: symbi.Context) -> None:
        self.total += msg.result
        self.heard += 1
        if self.heard == self.expect:
            self.all_heard.set()


async def _demo(config: symbi.Config) -> int:
    t0 = time.perf_counter()
    async with symbi.Runtime(config) as rt:
        names = ", ".join(c.name for c in rt.components)
        _line("runtime", f"started in {(time.perf_counter() - t0) * 1000:.1f} ms ({names})")
        rt.policy.register(DEMO_POLICY)

        # Agents at three priorities, scheduled by the Rust core.
        agents = [
            await rt.spawn(
                Worker,
                name="critical-worker",
                priority=symbi.Priority.CRITICAL,
                limits=symbi.ResourceLimits(memory_mb=64, execution_timeout=5),
            ),
            await rt.spawn(
                Worker,
                name="normal-worker",
                priority=symbi.Priority.NORMAL,
                limits=symbi.ResourceLimits(memory_mb=64, execution_timeout=5),
            ),
            await rt.spawn(
                Worker,
                name="batch-worker",
                priority=symbi.Priority.BATCH,
                limits=symbi.ResourceLimits(memory_mb=64, execution_timeout=5),
            ),
        ]
        jobs = 12
        ledger = Ledger(expect=jobs)
        await rt.spawn(ledger, name="ledger", topics=["jobs.*"])
        vendor = await rt.spawn(Ledger, name="outside-vendor")
        sealed: list[symbi.SecureMessage] = []
        watched = anyio.Event()

        async def watch(msg: Done, meta: symbi.SecureMessage) -> None:
            sealed.append(meta)  # what travelled: only the envelope
            if len(sealed) == jobs:
                watched.set()

        rt.subscribe("jobs.>", watch)
        results: list[Any] = []
        async with anyio.create_task_group() as tg:
            for i in range(jobs):
                a = agents[i % 3]

                async def ask(a: Any = a, i: int = i) -> None:
                    results.append(
                        await rt.request(a.id, Task(job=f"job-{i}", size=i % 4 + 1), timeout=10)
                    )

                tg.start_soon(ask)
        with anyio.fail_after(10):  # topic copies are handled asynchronously
            await watched.wait()
            await ledger.all_heard.wait()
        st = rt.status()
        _line(
            "scheduler",
            f"{len(agents)} agents ran {len(results)} tasks; decisions p50 "
            f"{st.scheduler.decision_p50_us:.1f} µs, p99 {st.scheduler.decision_p99_us:.1f} µs",
        )

        # Every message was sealed by the bus: signed by its sender, encrypted, verified.
        bs = rt.bus.stats
        _line(
            "messages",
            f"{bs.sent} direct + {bs.replies} replies + {bs.published} published, each "
            f"Ed25519-signed and AES-256-GCM-encrypted; {bs.rejected} rejected",
        )
        env = sealed[0]
        who = next(a.name for a in agents if a.id == env.sender)
        _line(
            "",
            f"e.g. {env.id[:12]} from {who} on {env.recipient!r}: "
            f"{len(env.encrypted_payload)} bytes ciphertext, nonce {env.nonce.hex()[:12]}…, "
            f"signature {env.signature.hex()[:12]}…",
        )
        _line("", f"ledger heard all {ledger.heard} results on jobs.*: total {ledger.total}")

        # A data-flow denial on a real send: PII may not go to the outside vendor.
        try:
            await rt.send(
                Done(job="patients", worker="normal-worker", result=0),
                to=vendor.id,
                sender=agents[1].id,
                labels=["pii"],
                timeout=5,
            )
        except PolicyDenied as e:
            _line("policy", f"denied normal-worker -> outside-vendor (pii): {e.decision.reason}")
        else:
            _line("policy", "FAILED: PII reached the outside vendor")
            return 1

        # ... and on another action: the engine fails closed and says why.
        request = symbi.PolicyRequest(
            principal=agents[1].id, action="network_access", resource="exfil.example.com"
        )
        try:
            rt.policy.enforce(request)
        except PolicyDenied as e:
            _line("", f"denied network_access to exfil.example.com: {e.decision.reason}")
        else:
            _line("policy", "FAILED: exfiltration was allowed")
            return 1
        ok = rt.policy.evaluate(
            symbi.PolicyRequest(
                principal=agents[1].id, action="network_access", resource="api.partner.example"
            )
        )
        if isinstance(ok, symbi.policy.Deny):
            _line("policy", f"FAILED: network_access to api.partner.example denied: {ok.reason}")
            return 1
        _line("", f"allowed network_access to api.partner.example with {type(ok).__name__}")

        # Agent memory: what the critical worker remembers about a job.
        hits = await rt.context.for_agent(agents[0].id).search("job-3", k=1, timeout=5)
        if not hits:
            _line("memory", f"FAILED: {agents[0].name} remembers nothing of its jobs")
            return 1
        _line("memory", f"{agents[0].name} recalls: {hits[0].content!r}")

        # RAG over the documents shipped with symbi: five stages, extractive answer.
        question = "How does symbi detect tampering with the audit trail?"
        pipeline = await anyio.to_thread.run_sync(symbi.rag.example_pipeline)
        answer = await pipeline.answer(question, timeout=30)
        cited = ", ".join(sorted({c.doc_id for c in answer.citations[:3]}))
        _line("rag", f"Q: {question}")
        if not answer.text.strip() or not answer.citations:
            _line("", "FAILED: the RAG pipeline gave no answer with citations")
            return 1
        first = answer.text.strip().splitlines()[0]
        _line("", f"A: {first[:160]}{'...' if len(first) > 160 else ''}")
        _line("", f"cited: {cited}")

        health = rt.health()
        if health.status != "ok":
            _line("health", f"FAILED: {health.status}")
            return 1
        _line("health", health.status)
    audit_dir = config.security.audit_storage
    if audit_dir is not None:
        report = verify_dir(audit_dir)
        if report.events == 0:
            _line("audit", f"FAILED: no events were written to {audit_dir}")
            return 1
        _line(
            "audit",
            f"{report.events} signed, hash-chained events verified from {audit_dir} "
            f"(key {report.key_id})",
        )
    return 0


def run_demo(config_path: Optional[str] = None, audit_dir: Optional[str] = None) -> int:
    config = symbi.Config.load(config_path)
    if audit_dir is not None and Path(audit_dir).exists() and not Path(audit_dir).is_dir():
        raise InvalidArgument(
            f"--audit-dir {audit_dir!r} is a file, not a directory; pass a new or existing "
            "directory for the demo's audit trail",
            argument="--audit-dir",
            expected="a directory path",
            got=audit_dir,
        )
    print(f"symbi {symbi.__version__} demo (embedded, {config.runtime.mode} mode)")
    with tempfile.TemporaryDirectory(prefix="symbi-demo-") as tmp:
        target = audit_dir or config.security.audit_storage or str(Path(tmp) / "audit")
        security = msgspec.structs.replace(
            config.security, audit_enabled=True, audit_storage=target
        )
        return anyio.run(_demo, config.replace(security=security))
