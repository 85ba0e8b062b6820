"""Symbiont DSL files (``.symbi``): agent definitions parsed in Rust.

A file holds ``metadata { }``, ``agent`` definitions, standalone ``policy`` blocks and the
other items of Symbiont's published grammar (``function``, ``type``, ``schedule``,
``channel``, ``memory``, ``webhook``)::

    metadata { version = "1.0.0", author = "ops", description = "triage" }

    agent triage(ticket: Ticket) -> Report {
        capabilities = ["read", "summarize"]
        policy guard { allow: [read, summarize]  deny: network_access }
        with memory = "persistent", security = "high", sandbox = "Tier1",
             timeout = 30.seconds, max_memory_mb = 512, max_cpu_cores = 2 {
            let summary = summarize(ticket);     // kept as an AST, never executed
            return Report { text: summary };
        }
    }

``parse_file(path)`` / ``parse(text)`` give a :class:`DslFile`. Each
:class:`AgentDefinition` keeps its body as an AST (nested dicts with ``kind``, ``line``,
``column``) and turns its governance into a spec for ``rt.spawn``::

    agent = symbi.dsl.parse_file("triage.symbi").agent("triage")
    handle = await rt.spawn(Triage, **agent.spawn_kwargs())

``policy`` blocks are compiled by the policy engine (:class:`symbi.Policy`); an embedded
policy equals the same block parsed by ``symbi.policy.parse``. Errors raise
:class:`symbi.errors.ParseError` with ``.source``, ``.line`` and ``.column``.

``with`` settings: ``max_memory_mb`` and ``max_cpu_cores`` (numbers > 0), ``timeout`` (a
duration: ``30s``, ``5m``, ``2h``, ``30.seconds``, ``"1h30m"``; a bare number is
milliseconds, as in Symbiont's published agents), ``sandbox`` (``Tier1``/``docker``,
``Tier2``/``gvisor``, ``Tier3``/``firecracker``, ``e2b`` or ``local``), ``security`` and
``memory``. Other settings are kept in ``with_settings`` and otherwise ignored, as Symbiont
does.

Strict by default: a policy the engine cannot compile (Symbiont allows calls such as
``deploy(service, version)`` in rules) is an error. With ``strict=False`` it is kept in
``unsupported_policies`` and reported in ``DslFile.warnings``; the agent's ``spec()`` then
refuses to build, so nothing is spawned with less governance than written.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional, Union

import msgspec

from ._core import dsl_parse
from .errors import InvalidArgument, ParseError
from .policy import Policy

__all__ = [
    "AgentDefinition",
    "DslFile",
    "Problem",
    "check_files",
    "parse",
    "parse_file",
]


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """Something wrong with a file. ``kind`` is ``"error"`` (it does not parse),
    ``"warning"`` (lenient mode: a policy kept but not enforced) or ``"missing"`` (the file
    cannot be read)."""

    source: str
    line: Optional[int]
    column: Optional[int]
    message: str
    kind: str = "error"

    @classmethod
    def from_error(cls, error: ParseError, source: Optional[str] = None) -> Problem:
        """The problem a ParseError describes (its message without the position prefix)."""
        src = source if source is not None else (error.source or "<string>")
        return cls(source=src, line=error.line, column=error.column, message=_strip_position(error))

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where = f"{where}:{self.line}:{self.column}"
        return f"{where}: {self.kind}: {self.message}"


class AgentDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """One ``agent`` of a DSL file.

    ``params`` are ``(name, type)`` pairs as written; ``policies`` the compiled policy
    blocks; ``with_settings`` every ``with`` attribute as plain data (durations as written);
    ``body`` the AST of the (first) ``with`` block's body, ``None`` without one;
    ``with_blocks`` and ``functions`` the rest of the agent as AST dicts.
    """

    name: str
    source: str
    line: int
    column: int
    params: list[tuple[str, str]]
    return_type: Optional[str]
    capabilities: list[str]
    policies: list[Policy]
    with_settings: dict[str, Any]
    limits: dict[str, Optional[float]]
    sandbox: Optional[str]
    security: Optional[str]
    memory: Optional[str]
    body: Optional[dict[str, Any]]
    with_blocks: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    unsupported_policies: list[dict[str, Any]] = msgspec.field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        """The governance as spawn keywords: ``{"name", "capabilities", "limits":
        {"memory_mb", "cpu_cores", "execution_timeout"}, "sandbox", "security", "memory",
        "policies"}``. Unset values are ``None``. Raises InvalidArgument when a policy of the
        agent was kept but not compiled (lenient parse)."""
        if self.unsupported_policies:
            names = ", ".join(p["name"] for p in self.unsupported_policies)
            raise InvalidArgument(
                f"{self.source}:{self.line}:{self.column}: agent {self.name!r} has policies "
                f"symbi's policy engine cannot enforce ({names}); rewrite them in the engine's "
                "syntax (see symbi.policy) before spawning it",
                argument="policies",
                expected="policies the policy engine compiles",
                got=names,
            )
        return {
            "name": self.name,
            "capabilities": list(self.capabilities),
            "limits": dict(self.limits),
            "sandbox": self.sandbox,
            "security": self.security,
            "memory": self.memory,
            "policies": list(self.policies),
        }

    def spawn_kwargs(self) -> dict[str, Any]:
        """:meth:`spec` restricted to the keywords this version's ``Runtime.spawn``
        accepts, so ``await rt.spawn(Cls, **agent.spawn_kwargs())`` works as is."""
        try:
            from .host import AgentHost

            accepted = set(inspect.signature(AgentHost.spawn).parameters)
        except (ImportError, AttributeError):  # pragma: no cover - host layout changed
            accepted = {"name", "capabilities", "limits"}
        return {k: v for k, v in self.spec().items() if k in accepted}

    def to_dict(self) -> dict[str, Any]:
        """The whole definition as plain data (policies in their dict form)."""
        d: dict[str, Any] = msgspec.structs.asdict(self)
        d["policies"] = [p.to_dict() for p in self.policies]
        return d


class DslFile(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed DSL file. ``policies`` are the standalone (top-level) policy blocks;
    ``blocks`` the ``schedule``/``channel``/``memory``/``webhook`` items as dicts;
    ``warnings`` what a lenient parse let through."""

    source: str
    metadata: dict[str, Any]
    agents: list[AgentDefinition]
    policies: list[Policy]
    functions: list[dict[str, Any]]
    types: list[dict[str, Any]]
    blocks: list[dict[str, Any]]
    warnings: list[Problem]
    unsupported_policies: list[dict[str, Any]] = msgspec.field(default_factory=list)

    def agent(self, name: str) -> AgentDefinition:
        """The agent called ``name``."""
        for a in self.agents:
            if a.name == name:
                return a
        raise InvalidArgument(
            f"{self.source} defines no agent {name!r}; it defines {[a.name for a in self.agents]}",
            argument="name",
            expected="an agent defined in the file",
            got=name,
        )

    @property
    def all_policies(self) -> list[Policy]:
        """Standalone policies, then every agent's, then every channel's."""
        out = list(self.policies)
        for a in self.agents:
            out.extend(a.policies)
        for b in self.blocks:
            out.extend(b.get("policies", []))
        return out


def _agent(d: dict[str, Any], source: str) -> AgentDefinition:
    spec = d["spec"]
    withs = d["with_blocks"]
    return AgentDefinition(
        name=d["name"],
        source=source,
        line=d["line"],
        column=d["column"],
        params=d["params"],
        return_type=d["return_type"],
        capabilities=d["capabilities"],
        policies=d["policies"],
        with_settings=d["with_settings"],
        limits=spec["limits"],
        sandbox=spec["sandbox"],
        security=spec["security"],
        memory=spec["memory"],
        body=withs[0]["body"] if withs else None,
        with_blocks=withs,
        functions=d["functions"],
        unsupported_policies=d["unsupported_policies"],
    )


def parse(text: str, source: str = "<string>", *, strict: bool = True) -> DslFile:
    """Parse DSL ``text``; ``source`` names it in errors. Raises ParseError."""
    if not isinstance(text, str):
        raise InvalidArgument(
            "DSL text must be a str",
            argument="text",
            expected="str",
            got=type(text).__name__,
        )
    if not isinstance(source, str):
        raise InvalidArgument(
            "source must be a str naming the text",
            argument="source",
            expected="str",
            got=type(source).__name__,
        )
    raw: dict[str, Any] = dsl_parse(text, source, bool(strict))
    return DslFile(
        source=source,
        metadata=raw["metadata"],
        agents=[_agent(a, source) for a in raw["agents"]],
        policies=raw["policies"],
        functions=raw["functions"],
        types=raw["types"],
        blocks=raw["blocks"],
        warnings=[
            Problem(source=source, line=ln, column=col, message=msg, kind="warning")
            for ln, col, msg in raw["warnings"]
        ],
        unsupported_policies=raw["unsupported_policies"],
    )


def _read(path: Union[str, Path]) -> tuple[str, str]:
    if not isinstance(path, (str, Path)):
        raise InvalidArgument(
            "path must be a str or pathlib.Path",
            argument="path",
            expected="str | Path",
            got=type(path).__name__,
        )
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8-sig"), str(path)
    except UnicodeDecodeError as e:
        raise ParseError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8",
            source=str(path),
        ) from e
    except OSError as e:
        raise InvalidArgument(
            f"cannot read DSL file {path}: {e.strerror or e}",
            argument="path",
            expected="a readable .symbi file",
            got=str(path),
        ) from e


def parse_file(path: Union[str, Path], *, strict: bool = True) -> DslFile:
    """Parse a ``.symbi`` file. Raises InvalidArgument when it cannot be read, ParseError
    when it does not parse."""
    text, source = _read(path)
    return parse(text, source, strict=strict)


def _strip_position(e: ParseError) -> str:
    prefix = f"{e.source}:{e.line}:{e.column}: " if e.line is not None else f"{e.source}: "
    msg = e.message
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


def check_files(paths: Iterable[Union[str, Path]], *, strict: bool = True) -> list[Problem]:
    """Parse every file; return what is wrong (empty when all parse). Files that cannot be
    read are ``kind="missing"`` problems; lenient warnings are included too."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    problems: list[Problem] = []
    for path in paths:
        try:
            f = parse_file(path, strict=strict)
        except ParseError as e:
            problems.append(Problem.from_error(e, str(path)))
            continue
        except InvalidArgument as e:
            problems.append(
                Problem(source=str(path), line=None, column=None, message=str(e), kind="missing")
            )
            continue
        problems.extend(f.warnings)
    return problems
