"""Runtime configuration: TOML sections overridden by environment variables.

``Config.load()`` reads a file (the argument, else ``$SYMBI_CONFIG_PATH``, else defaults),
applies environment overrides, and validates everything with msgspec. Any problem raises
:class:`~symbi.errors.ConfigError` naming where the bad value came from (file or
environment variable), the dotted key, and what was expected.

Environment overrides, strongest last:

* ``SYMBI_<SECTION>__<KEY>=value`` sets any key, for example
  ``SYMBI_RUNTIME__MAX_CONCURRENT_AGENTS=500``. A value for a text key is taken as it is;
  for a bool key ``1/0``, ``yes/no``, ``on/off`` or ``true/false`` (any case); anything
  else is read as a TOML literal (``30``, ``1.5``), or as a plain string if it is not one.
* Named shortcuts: ``SYMBI_LOG_LEVEL``, ``SYMBI_RUNTIME_MODE``, ``SYMBI_CRYPTO_PROVIDER``,
  ``SYMBI_AUDIT_STORAGE``, ``SYMBI_NATS_URL``, ``QDRANT_URL`` and ``MCP_SERVER_DISCOVERY``.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import msgspec
from msgspec import Meta
from typing_extensions import Annotated

from .errors import ConfigError, InvalidArgument

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

__all__ = [
    "BusConfig",
    "Config",
    "ContextConfig",
    "McpConfig",
    "RuntimeConfig",
    "SecurityConfig",
    "parse_size",
]

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: Union[int, str]) -> int:
    """Bytes in a size such as ``"1GB"`` (10**9), ``"512MiB"`` (2**29) or ``4096``.
    Raises InvalidArgument (a ValueError too) for anything else."""

    def bad(detail: str) -> InvalidArgument:
        return InvalidArgument(detail, argument="size", expected="int >= 0 | '1GB'", got=value)

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad("a size must be a number of bytes or a string such as '1GB'")
    if isinstance(value, int):
        if value < 0:
            raise bad(f"a size cannot be negative, got {value}")
        return value
    m = _SIZE_RE.match(value)
    unit = m.group(2).upper() if m else ""
    if not m or unit not in _UNITS:
        raise bad(
            f"cannot read size {value!r}: use a number with an optional unit "
            "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def _invalid(key: str, detail: str) -> ConfigError:
    return ConfigError(f"invalid config key {key!r}: {detail}", key=key, expected=detail)


@functools.cache
def _field_types(cls: type[msgspec.Struct]) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, f.type) for f in msgspec.structs.fields(cls))


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    def __post_init__(self) -> None:
        # msgspec checks types and Meta constraints only when decoding; re-check each
        # field against its annotation so direct construction and replace() obey the same
        # rules as loading. Decoding gets here with the fields already valid.
        name = _SECTION_NAMES[type(self)]
        for field, typ in _field_types(type(self)):
            value = getattr(self, field)
            try:
                msgspec.convert(value, typ, strict=True)
            except msgspec.ValidationError as e:
                detail = str(e)
                if detail.startswith("Invalid enum value"):
                    detail += f"; expected one of {_choices(name, field)}"
                elif "got" not in detail:
                    detail += f", got {value!r}"
                raise _invalid(f"{name}.{field}", detail) from None
        self._check(name)

    def _check(self, name: str) -> None:
        """Rules across fields or beyond what a type annotation can say."""


class RuntimeConfig(_Section, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[runtime]``: capacity and housekeeping of the in-process runtime."""

    max_concurrent_agents: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    #: Worker slots the Rust scheduler places tasks onto (handlers all run on the event
    #: loop; a slot bounds how many agents run at once); 0 means one per CPU core.
    scheduler_threads: Annotated[int, Meta(ge=0, le=1024)] = 0
    #: Capacity of each agent's mailbox, in messages.
    message_buffer_size: Annotated[int, Meta(ge=1, le=16_777_216)] = 1024
    gc_interval_ms: Annotated[int, Meta(ge=10, le=86_400_000)] = 5000
    #: How long components get to stop cleanly before they are cancelled.
    shutdown_grace_s: Annotated[float, Meta(ge=0, le=3600)] = 5.0
    #: ``embedded``: everything in this process. ``distributed``: agents span processes.
    mode: Literal["embedded", "distributed"] = "embedded"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    #: How the scheduler picks a worker slot: first_fit, best_fit, or priority (best fit
    #: with a share of every slot reserved for critical agents).
    placement: Literal["first_fit", "best_fit", "priority"] = "best_fit"
    load_balancing: Literal["least_loaded", "round_robin", "weighted"] = "least_loaded"
    #: Seconds of waiting worth one priority level, so low priorities never starve.
    aging_s: Annotated[float, Meta(gt=0, le=86_400)] = 5.0
    preemption: bool = True
    #: When an agent's mailbox is full: the sender waits (up to its timeout) or fails.
    full_mailbox: Literal["wait", "fail"] = "wait"
    #: Messages an agent handles per scheduled task before it goes back to the queue (one
    #: placement and one Running period for the lot, as actor runtimes batch mailbox work).
    #: 1 schedules every message on its own; higher favours throughput over fairness.
    dispatch_quantum: Annotated[int, Meta(ge=1, le=65_536)] = 64


class SecurityConfig(_Section, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[security]``: sandboxing, policy enforcement, audit and crypto."""

    default_sandbox_tier: Literal["local", "Tier1", "Tier2"] = "Tier1"
    #: With enforcement on, an action that no policy allows is denied.
    enforce_policies: bool = True
    audit_enabled: bool = True
    #: The Rust crypto backend. ``ring`` is accepted for Symbiont configs and means the
    #: same implementations: AWS-LC signs Ed25519, ed25519-dalek verifies (batches too),
    #: RustCrypto's aes-gcm encrypts.
    crypto_provider: Literal["rustcrypto", "ring"] = "rustcrypto"
    #: Directory of the durable audit store; unset keeps the trail in memory.
    audit_storage: Optional[str] = None
    #: With enforcement on, register the baseline policy that allows creating agents,
    #: their resource requests and messaging; everything else (tools, data, network)
    #: still needs a policy of yours. Off: start from deny-all.
    baseline_policy: bool = True

    def _check(self, name: str) -> None:
        if self.audit_storage is not None and not self.audit_storage.strip():
            raise _invalid(f"{name}.audit_storage", "must be a directory path, or left unset")


class ContextConfig(_Section, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[context]``: agent memory and the vector index."""

    #: Unset means the embedded Rust HNSW index; a URL selects a Qdrant server.
    vector_db_url: Optional[str] = None
    #: At least 8: the built-in hashing embedder's minimum (8..65536).
    embedding_dimension: Annotated[int, Meta(ge=8, le=65_536)] = 384
    #: A size such as ``"1GB"``; see :func:`parse_size`.
    context_cache_size: Union[int, str] = "1GB"
    knowledge_retention_days: Annotated[int, Meta(ge=0, le=36_500)] = 365
    #: Directory for long-term and shared memory (SQLite + index files); unset keeps
    #: agent memory in this process only.
    storage_path: Optional[str] = None

    def _check(self, name: str) -> None:
        try:
            parse_size(self.context_cache_size)
        except ValueError as e:
            raise _invalid(f"{name}.context_cache_size", str(e)) from None
        url = self.vector_db_url
        if url is not None and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$", url):
            raise _invalid(
                f"{name}.vector_db_url",
                f"must be a URL such as http://localhost:6333, got {url!r}",
            )

    @property
    def context_cache_bytes(self) -> int:
        return parse_size(self.context_cache_size)


class McpConfig(_Section, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[mcp]``: MCP client behaviour and tool schema verification."""

    discovery_enabled: bool = True
    #: ``strict`` hides unverified tools, ``warn`` logs and allows, ``off`` skips checks.
    tool_verification: Literal["strict", "warn", "off"] = "strict"
    connection_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    max_concurrent_connections: Annotated[int, Meta(ge=1, le=100_000)] = 100


class BusConfig(_Section, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``[bus]``: the secure message bus. In process unless ``nats_url`` is set."""

    #: A NATS server (``nats://host:4222``) to span processes or machines; unset keeps
    #: the bus in process. Required when ``runtime.mode = "distributed"``.
    nats_url: Optional[str] = None
    #: The connection name shown by the NATS server's monitoring.
    client_name: str = "symbi"
    #: One delivery attempt waits this long for the recipient's ack before retrying.
    ack_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    retry_attempts: Annotated[int, Meta(ge=1, le=1000)] = 5
    #: Messages per second each agent may send (None: unlimited unless a policy says so).
    rate_limit: Optional[Annotated[float, Meta(gt=0)]] = None
    #: Past its rate limit a sender waits for a token (within its timeout) or fails at once.
    rate_limit_mode: Literal["wait", "fail"] = "wait"
    #: Envelopes older (or further in the future) than this are rejected as replays.
    replay_window_s: Annotated[float, Meta(gt=0, le=86_400)] = 30.0
    max_message_bytes: Annotated[int, Meta(ge=64, le=64 * 1024 * 1024)] = 1024 * 1024
    #: Upper bound for one topic handler call, and how long a reply may come late.
    handler_timeout_s: Annotated[float, Meta(gt=0, le=86_400)] = 30.0

    def _check(self, name: str) -> None:
        url = self.nats_url
        if url is not None and not re.match(r"^(nats|tls|ws|wss)://\S+$", url):
            raise _invalid(
                f"{name}.nats_url", f"must be a URL such as nats://127.0.0.1:4222, got {url!r}"
            )


# Env var -> (section, key) for the named shortcuts.
_NAMED_ENV = {
    "SYMBI_LOG_LEVEL": ("runtime", "log_level"),
    "SYMBI_RUNTIME_MODE": ("runtime", "mode"),
    "SYMBI_CRYPTO_PROVIDER": ("security", "crypto_provider"),
    "SYMBI_AUDIT_STORAGE": ("security", "audit_storage"),
    "QDRANT_URL": ("context", "vector_db_url"),
    "MCP_SERVER_DISCOVERY": ("mcp", "discovery_enabled"),
    "SYMBI_NATS_URL": ("bus", "nats_url"),
}
# Spellings people use that mean one canonical value.
_NORMALIZE: dict[tuple[str, str], Callable[[str], str]] = {
    ("runtime", "log_level"): lambda v: v.lower(),
    ("runtime", "mode"): lambda v: v.lower(),
    ("runtime", "placement"): lambda v: v.lower().replace("-", "_"),
    ("runtime", "load_balancing"): lambda v: v.lower().replace("-", "_"),
    ("security", "crypto_provider"): lambda v: v.lower(),
    ("security", "default_sandbox_tier"): lambda v: {"tier1": "Tier1", "tier2": "Tier2"}.get(
        v.lower(), v.lower()
    ),
    ("mcp", "tool_verification"): lambda v: v.lower(),
    ("bus", "rate_limit_mode"): lambda v: v.lower(),
}
_AT_RE = re.compile(r"^(?P<detail>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN_RE = re.compile(r"unknown field `(?P<field>[^`]+)`")


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The whole configuration. Immutable: use :meth:`replace` to derive a changed copy."""

    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    context: ContextConfig = msgspec.field(default_factory=ContextConfig)
    mcp: McpConfig = msgspec.field(default_factory=McpConfig)
    bus: BusConfig = msgspec.field(default_factory=BusConfig)

    def __post_init__(self) -> None:
        for name, typ in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, typ):
                raise _invalid(name, f"expected a symbi.{typ.__name__}, got {type(value).__name__}")
        if self.runtime.mode == "distributed" and self.bus.nats_url is None:
            raise _invalid(
                "runtime.mode",
                "'distributed' needs [bus] nats_url (or SYMBI_NATS_URL), "
                "e.g. nats://127.0.0.1:4222",
            )

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike[str], None] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
    ) -> Config:
        """Read ``path`` (else ``$SYMBI_CONFIG_PATH``, else defaults), then apply the
        environment overrides from ``env`` (default ``os.environ``)."""
        env = os.environ if env is None else _check_env(env)
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise InvalidArgument(
                f"path must be the path of a TOML config file (str or pathlib.Path), "
                f"got {type(path).__name__}; pass None to use SYMBI_CONFIG_PATH or the defaults",
                argument="path",
                expected="str | os.PathLike | None",
                got=type(path).__name__,
            )
        if path is None and env.get("SYMBI_CONFIG_PATH"):
            path = env["SYMBI_CONFIG_PATH"]
        if path is None:
            return cls.from_dict({}, env=env)
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ConfigError(
                f"config file {str(p)!r} does not exist; check the path "
                "(or SYMBI_CONFIG_PATH), or omit it to use the defaults",
                source=str(p),
            ) from None
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"config file {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                "save it as UTF-8",
                source=str(p),
            ) from None
        except OSError as e:
            if p.is_dir():
                raise ConfigError(
                    f"config path {str(p)!r} is a directory; pass the path of a TOML config "
                    "file (e.g. symbi.toml)",
                    source=str(p),
                ) from None
            raise ConfigError(
                f"cannot read config file {str(p)!r}: {e.strerror or e}; check that it exists "
                "and that you can read it",
                source=str(p),
            ) from None
        return cls.from_toml(text, source=str(p), env=env)

    @classmethod
    def from_toml(
        cls, text: str, *, source: str = "<string>", env: Optional[Mapping[str, str]] = None
    ) -> Config:
        """Parse TOML text. Environment overrides apply only when ``env`` is given
        (``Config.load`` passes ``os.environ``)."""
        if not isinstance(text, str):
            hint = (
                "; decode it first, e.g. data.decode('utf-8')"
                if isinstance(text, (bytes, bytearray))
                else "; to read a file use Config.load(path)"
            )
            raise InvalidArgument(
                f"text must be TOML as a str, got {type(text).__name__}{hint}",
                argument="text",
                expected="str",
                got=type(text).__name__,
            )
        source = _check_source(source)
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(
                f"{source}: not valid TOML: {e}; fix the syntax at that line", source=source
            ) from None
        return cls.from_dict(raw, source=source, env=env)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        source: str = "<dict>",
        env: Optional[Mapping[str, str]] = None,
    ) -> Config:
        """Validate a mapping shaped like the TOML file; ``env`` adds overrides."""
        source = _check_source(source)
        env = None if env is None else _check_env(env)
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{source}: the configuration must be a table of sections, "
                f"got {type(data).__name__}",
                source=source,
            )
        raw: dict[str, Any] = {}
        origin: dict[tuple[str, str], str] = {}
        for section, body in data.items():
            raw[section] = dict(body) if isinstance(body, Mapping) else body
            if isinstance(body, Mapping):
                for key in body:
                    origin[(section, key)] = source
        for var, section, key, value in _env_overrides(env or {}):
            body = raw.setdefault(section, {})
            if not isinstance(body, dict):
                raise ConfigError(
                    f"{source}: invalid config key {section!r}: expected a table, got "
                    f"{type(body).__name__} {body!r}; write it as a [{section}] section "
                    f"(environment variable {var} sets {section}.{key})",
                    source=source,
                    key=section,
                    expected="a table",
                )
            body[key] = value
            origin[(section, key)] = f"environment variable {var}"
        for (section, key), norm in _NORMALIZE.items():
            body = raw.get(section)
            if isinstance(body, dict) and isinstance(body.get(key), str):
                body[key] = norm(body[key])
        try:
            return msgspec.convert(raw, cls, strict=True)
        except msgspec.ValidationError as e:
            raise _config_error(str(e), source, origin) from None
        except ConfigError as e:  # from a __post_init__: add where the value came from
            section, _, key = (e.key or "").partition(".")
            where = origin.get((section, key), source)
            raise ConfigError(
                f"{where}: {e}", source=where, key=e.key, expected=e.expected
            ) from None

    # ---------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    def to_toml(self) -> str:
        """The effective configuration as TOML that ``Config.from_toml`` reads back."""
        lines: list[str] = []
        for section, body in self.to_dict().items():
            if lines:
                lines.append("")
            lines.append(f"[{section}]")
            for key, value in body.items():
                if value is None:
                    lines.append(f"# {key} is unset")
                else:
                    lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections replaced, e.g. ``cfg.replace(runtime=RuntimeConfig(...))``.
        Validated like a loaded config: raises ConfigError."""
        unknown = sorted(set(sections) - set(_SECTIONS))
        if unknown:
            raise ConfigError(
                f"unknown config section {unknown[0]!r}; the sections are {sorted(_SECTIONS)}",
                key=unknown[0],
                expected=f"a section in {sorted(_SECTIONS)}",
            )
        return msgspec.structs.replace(self, **sections)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_string(s: str) -> str:
    # TOML basic strings forbid control characters (and DEL) unescaped, and \u escapes
    # must name a scalar value, so JSON's surrogate-pair escapes will not do.
    out = []
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _check_env(env: Any) -> Mapping[str, str]:
    """``env`` if it is a mapping of str to str (like ``os.environ``), else InvalidArgument."""
    if not isinstance(env, Mapping):
        raise InvalidArgument(
            f"env must be a mapping of environment variables such as os.environ or "
            f"{{'SYMBI_LOG_LEVEL': 'debug'}}, got {type(env).__name__}",
            argument="env",
            expected="Mapping[str, str]",
            got=type(env).__name__,
        )
    for var, value in env.items():
        if not isinstance(var, str) or not isinstance(value, str):
            bad = var if not isinstance(var, str) else value
            raise InvalidArgument(
                f"env maps variable names to str values, as os.environ does; "
                f"got {type(bad).__name__} {bad!r} (for {var!r}): pass it as a str",
                argument="env",
                expected="Mapping[str, str]",
                got=bad,
            )
    return env


def _check_source(source: Any) -> str:
    if not isinstance(source, str):
        raise InvalidArgument(
            f"source names where the config came from (a file path or '<string>'), "
            f"so it must be a str, got {type(source).__name__}",
            argument="source",
            expected="str",
            got=type(source).__name__,
        )
    return source


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _field_kind(section: str, key: str) -> Optional[str]:
    """``"str"`` when the field takes text (str, Optional[str], a Literal of strings),
    ``"bool"`` for a (optional) bool, else None (parse the value as a TOML literal)."""
    typ = _SECTIONS.get(section)
    if typ is None:
        return None
    try:
        hint = typing.get_type_hints(typ).get(key)
    except Exception:  # pragma: no cover - an unresolvable annotation: fall back to TOML
        return None
    if hint is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is Union and len(args) == 1:
        hint = args[0]
    if hint is str or (
        typing.get_origin(hint) is Literal
        and all(isinstance(a, str) for a in typing.get_args(hint))
    ):
        return "str"
    if hint is bool:
        return "bool"
    return None


def _env_value(text: str, section: str = "", key: str = "") -> Any:
    """Read an environment value for ``section.key``: text fields take the raw string,
    bool fields accept 1/0, yes/no, on/off, true/false in any case; anything else is read
    as a TOML literal, else as a plain string."""
    kind = _field_kind(section, key)
    if kind == "str":
        return text
    if kind == "bool":
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str, str, Any]]:
    out: list[tuple[str, str, str, Any]] = []
    sections = set(Config.__struct_fields__)
    for var, value in sorted(env.items()):
        if var.startswith("SYMBI_") and "__" in var:
            section, _, key = var[len("SYMBI_") :].partition("__")
            section, key = section.lower(), key.lower()
            if section not in sections or not key:
                raise ConfigError(
                    f"environment variable {var} names no config section; use "
                    f"SYMBI_<SECTION>__<KEY> with SECTION one of {sorted(sections)}",
                    source=f"environment variable {var}",
                    key=f"{section}.{key}",
                    expected=f"a section in {sorted(sections)}",
                )
            out.append((var, section, key, _env_value(value, section, key)))
    for var, (section, key) in _NAMED_ENV.items():
        if var in env:
            out.append((var, section, key, _env_value(env[var], section, key)))
    return out


def _config_error(text: str, source: str, origin: Mapping[tuple[str, str], str]) -> ConfigError:
    m = _AT_RE.match(text)
    detail = m.group("detail") if m else text
    path = (m.group("path") if m else None) or ""
    parts = [p for p in path.split(".") if p]
    unknown = _UNKNOWN_RE.search(detail)
    if unknown:
        parts.append(unknown.group("field"))
        detail = (
            f"unknown key; the keys of [{parts[0]}] are {sorted(_section_fields(parts[0]))}"
            if len(parts) == 2
            else f"unknown section; the sections are {sorted(Config.__struct_fields__)}"
        )
    if detail.startswith("Invalid enum value") and len(parts) == 2:
        choices = _choices(parts[0], parts[1])
        if choices:
            detail += f"; expected one of {choices}"
    key = ".".join(parts) or None
    where = origin.get((parts[0], parts[1]), source) if len(parts) >= 2 else source
    return ConfigError(
        f"{where}: invalid config key {key or '(top level)'!r}: {detail}",
        source=where,
        key=key,
        expected=detail,
    )


_SECTIONS: dict[str, type[_Section]] = {
    "runtime": RuntimeConfig,
    "security": SecurityConfig,
    "context": ContextConfig,
    "mcp": McpConfig,
    "bus": BusConfig,
}
_SECTION_NAMES = {typ: name for name, typ in _SECTIONS.items()}


def _section_fields(section: str) -> tuple[str, ...]:
    typ = _SECTIONS.get(section)
    return typ.__struct_fields__ if typ else ()


def _choices(section: str, key: str) -> list[Any]:
    typ = _SECTIONS.get(section)
    if typ is None:
        return []
    hint = typing.get_type_hints(typ).get(key)
    return list(typing.get_args(hint)) if typing.get_origin(hint) is Literal else []
