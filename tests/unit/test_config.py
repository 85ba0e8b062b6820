from __future__ import annotations

import msgspec
import pytest

from symbi import Config, RuntimeConfig, parse_size
from symbi.config import BusConfig, ContextConfig, McpConfig, SecurityConfig
from symbi.errors import ConfigError

# The configuration shown in Symbiont's README, which users will bring along.
SEED_TOML = """
[runtime]
max_concurrent_agents = 1000
scheduler_threads = 8
message_buffer_size = 1048576
gc_interval_ms = 5000

[security]
default_sandbox_tier = "Tier1"
enforce_policies = true
audit_enabled = true
crypto_provider = "ring"

[context]
vector_db_url = "http://localhost:6333"
embedding_dimension = 1536
context_cache_size = "1GB"
knowledge_retention_days = 365

[mcp]
discovery_enabled = true
tool_verification = "strict"
connection_timeout_s = 30
max_concurrent_connections = 100
"""


def test_defaults_need_no_file_and_no_server(monkeypatch):
    monkeypatch.delenv("SYMBI_CONFIG_PATH", raising=False)
    cfg = Config.load(env={})
    assert cfg == Config()
    assert cfg.context.vector_db_url is None  # embedded index by default
    assert cfg.runtime.mode == "embedded"


def test_seed_config_loads(tmp_path):
    f = tmp_path / "symbi.toml"
    f.write_text(SEED_TOML)
    cfg = Config.load(f, env={})
    assert cfg.runtime.scheduler_threads == 8
    assert cfg.runtime.message_buffer_size == 1048576
    assert cfg.security.crypto_provider == "ring"
    assert cfg.context.embedding_dimension == 1536
    assert cfg.context.context_cache_bytes == 10**9
    assert cfg.mcp.connection_timeout_s == 30.0


def test_config_path_from_environment(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[runtime]\nmax_concurrent_agents = 42\n")
    cfg = Config.load(env={"SYMBI_CONFIG_PATH": str(f)})
    assert cfg.runtime.max_concurrent_agents == 42


def test_generic_env_override_beats_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[runtime]\nmax_concurrent_agents = 42\n[mcp]\ntool_verification = 'warn'\n")
    cfg = Config.load(
        f,
        env={
            "SYMBI_RUNTIME__MAX_CONCURRENT_AGENTS": "77",
            "SYMBI_MCP__CONNECTION_TIMEOUT_S": "2.5",
            "SYMBI_SECURITY__ENFORCE_POLICIES": "false",
        },
    )
    assert cfg.runtime.max_concurrent_agents == 77
    assert cfg.mcp.connection_timeout_s == 2.5
    assert cfg.mcp.tool_verification == "warn"  # untouched keys keep the file's value
    assert cfg.security.enforce_policies is False


def test_named_env_overrides():
    cfg = Config.load(
        env={
            "SYMBI_LOG_LEVEL": "DEBUG",
            "SYMBI_RUNTIME_MODE": "distributed",
            "SYMBI_CRYPTO_PROVIDER": "RustCrypto",
            "SYMBI_AUDIT_STORAGE": "/var/lib/symbi/audit",
            "QDRANT_URL": "http://qdrant:6333",
            "MCP_SERVER_DISCOVERY": "false",
            "SYMBI_NATS_URL": "nats://nats:4222",
        }
    )
    assert cfg.bus.nats_url == "nats://nats:4222"
    assert cfg.runtime.log_level == "debug"
    assert cfg.runtime.mode == "distributed"
    assert cfg.security.crypto_provider == "rustcrypto"
    assert cfg.security.audit_storage == "/var/lib/symbi/audit"
    assert cfg.context.vector_db_url == "http://qdrant:6333"
    assert cfg.mcp.discovery_enabled is False


@pytest.mark.parametrize(
    ("toml", "key", "expected_fragment"),
    [
        ("[runtime]\nmax_concurrent_agents = 0", "runtime.max_concurrent_agents", ">= 1"),
        ("[runtime]\nmax_concurrent_agents = 'many'", "runtime.max_concurrent_agents", "int"),
        ("[runtime]\nthreads = 4", "runtime.threads", "scheduler_threads"),
        ("[sandbox]\ntier = 1", "sandbox", "sections"),
        ("[mcp]\ntool_verification = 'maybe'", "mcp.tool_verification", "strict"),
        ("[context]\ncontext_cache_size = '1XB'", "context.context_cache_size", "GiB"),
        ("[context]\nvector_db_url = 'not a url'", "context.vector_db_url", "URL"),
        ("[security]\nenforce_policies = 'yes'", "security.enforce_policies", "bool"),
        ("[runtime]\ngc_interval_ms = 1", "runtime.gc_interval_ms", ">= 10"),
        ("runtime = 3", "runtime", "object"),
    ],
)
def test_bad_values_name_file_key_and_expectation(tmp_path, toml, key, expected_fragment):
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as ei:
        Config.load(f, env={})
    e = ei.value
    assert e.source == str(f)
    assert e.key == key
    assert expected_fragment.lower() in (e.expected or "").lower()
    assert str(f) in str(e)
    assert key in str(e)


def test_toml_syntax_error_names_the_file_and_line(tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text("[runtime]\nmax_concurrent_agents = \n")
    with pytest.raises(ConfigError) as ei:
        Config.load(f, env={})
    assert ei.value.source == str(f)
    assert "line 2" in str(ei.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "nope.toml", env={})


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError) as ei:
        Config.load(env={"SYMBI_RUNTIME__MAX_CONCURRENT_AGENTS": "-5"})
    assert ei.value.source == "environment variable SYMBI_RUNTIME__MAX_CONCURRENT_AGENTS"
    assert ei.value.key == "runtime.max_concurrent_agents"


def test_env_var_with_unknown_section_fails_loudly():
    with pytest.raises(ConfigError, match="names no config section"):
        Config.load(env={"SYMBI_SCHEDULER__THREADS": "4"})


def test_env_var_with_unknown_key_fails_loudly():
    with pytest.raises(ConfigError) as ei:
        Config.load(env={"SYMBI_RUNTIME__THREADZ": "4"})
    assert ei.value.key == "runtime.threadz"


def test_effective_config_round_trips_through_toml():
    cfg = Config.load(
        env={"SYMBI_AUDIT_STORAGE": "/tmp/a", "SYMBI_RUNTIME__SHUTDOWN_GRACE_S": "0.5"}
    )
    again = Config.from_toml(cfg.to_toml())
    assert again == cfg


def test_config_is_immutable_and_replace_keeps_the_original():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.runtime = RuntimeConfig()  # type: ignore[misc]
    changed = cfg.replace(runtime=RuntimeConfig(max_concurrent_agents=5))
    assert changed.runtime.max_concurrent_agents == 5
    assert cfg.runtime.max_concurrent_agents == 10_000
    both = cfg.replace(
        runtime=RuntimeConfig(mode="distributed"), bus=BusConfig(nats_url="nats://h:1")
    )
    assert (both.runtime.mode, both.bus.nats_url) == ("distributed", "nats://h:1")


# Values the loader refuses must be refused when a section is built in code, too.
BAD_SECTIONS = [
    (RuntimeConfig, {"max_concurrent_agents": -5}, "runtime.max_concurrent_agents", ">= 1"),
    (RuntimeConfig, {"max_concurrent_agents": 0}, "runtime.max_concurrent_agents", ">= 1"),
    (RuntimeConfig, {"message_buffer_size": 0}, "runtime.message_buffer_size", ">= 1"),
    (RuntimeConfig, {"gc_interval_ms": 1}, "runtime.gc_interval_ms", ">= 10"),
    (RuntimeConfig, {"shutdown_grace_s": -1.0}, "runtime.shutdown_grace_s", ">= 0"),
    (RuntimeConfig, {"aging_s": 0.0}, "runtime.aging_s", "> 0"),
    (RuntimeConfig, {"max_concurrent_agents": "many"}, "runtime.max_concurrent_agents", "int"),
    (RuntimeConfig, {"mode": "cluster"}, "runtime.mode", "embedded"),
    (ContextConfig, {"embedding_dimension": 7}, "context.embedding_dimension", ">= 8"),
    (ContextConfig, {"context_cache_size": "1XB"}, "context.context_cache_size", "GiB"),
    (ContextConfig, {"vector_db_url": "not a url"}, "context.vector_db_url", "URL"),
    (McpConfig, {"connection_timeout_s": 0}, "mcp.connection_timeout_s", "> 0"),
    (McpConfig, {"max_concurrent_connections": -1}, "mcp.max_concurrent_connections", ">= 1"),
    (BusConfig, {"retry_attempts": 0}, "bus.retry_attempts", ">= 1"),
    (BusConfig, {"rate_limit": -2.0}, "bus.rate_limit", "> 0"),
    (BusConfig, {"max_message_bytes": 8}, "bus.max_message_bytes", ">= 64"),
    (SecurityConfig, {"audit_storage": "  "}, "security.audit_storage", "directory"),
]


@pytest.mark.parametrize(("section", "kwargs", "key", "fragment"), BAD_SECTIONS)
def test_sections_built_in_code_reject_what_loading_rejects(
    tmp_path, section, kwargs, key, fragment
):
    with pytest.raises(ConfigError) as built:
        section(**kwargs)
    assert built.value.key == key
    assert fragment.lower() in (built.value.expected or "").lower()
    # The loader refuses the same value under the same key.
    with pytest.raises(ConfigError) as loaded:
        Config.from_dict({key.split(".")[0]: kwargs}, source="cfg.toml")
    assert (loaded.value.key, loaded.value.source) == (key, "cfg.toml")


def test_replace_rejects_invalid_sections():
    cfg = Config()
    with pytest.raises(ConfigError) as ei:
        cfg.replace(runtime=RuntimeConfig(max_concurrent_agents=-5))
    assert ei.value.key == "runtime.max_concurrent_agents"
    with pytest.raises(ConfigError) as ei:
        cfg.replace(runtime=RuntimeConfig(mode="distributed"))  # no [bus] nats_url
    assert ei.value.key == "runtime.mode"
    with pytest.raises(ConfigError) as ei:
        cfg.replace(runtime={"max_concurrent_agents": -5})
    assert ei.value.key == "runtime"
    with pytest.raises(ConfigError) as ei:
        cfg.replace(sandbox=RuntimeConfig())
    assert ei.value.key == "sandbox"
    with pytest.raises(ConfigError):
        Config(bus=None)  # type: ignore[arg-type]
    # Deriving a bad section from a good one with msgspec is checked as well.
    with pytest.raises(ConfigError) as ei:
        msgspec.structs.replace(cfg.runtime, gc_interval_ms=0)
    assert ei.value.key == "runtime.gc_interval_ms"
    assert cfg == Config()


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("1GB", 10**9),
        ("1 GiB", 2**30),
        ("512MiB", 512 * 2**20),
        ("1.5KB", 1500),
        ("4096", 4096),
        (123, 123),
        ("2tb", 2 * 10**12),
    ],
)
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "GB", "1 parsec", "-1GB", -1, True])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match=r"size|bytes"):
        parse_size(bad)


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ConfigError, match="table of sections"):
        Config.from_dict([1, 2])  # type: ignore[arg-type]


def test_config_encodes_with_msgspec():
    # Config is a msgspec Struct: it serialises for logs and the MCP server.
    data = msgspec.json.decode(msgspec.json.encode(Config()))
    assert data["runtime"]["max_concurrent_agents"] == 10_000


def test_a_utf8_bom_is_accepted(tmp_path):
    f = tmp_path / "bom.toml"
    f.write_bytes(b"\xef\xbb\xbf[runtime]\nmax_concurrent_agents = 7\n")
    assert Config.load(f, env={}).runtime.max_concurrent_agents == 7


def test_a_non_utf8_file_says_to_save_it_as_utf8(tmp_path):
    f = tmp_path / "latin1.toml"
    f.write_bytes("[bus]\nclient_name = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="save it as UTF-8") as ei:
        Config.load(f, env={})
    assert str(f) in str(ei.value)


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; pass the path of a TOML") as ei:
        Config.load(tmp_path, env={})
    assert "Errno" not in str(ei.value)


def test_embedding_dimension_below_the_embedders_minimum_is_refused():
    with pytest.raises(ConfigError) as ei:
        Config.from_toml("[context]\nembedding_dimension = 1\n")
    assert ei.value.key == "context.embedding_dimension"
    assert Config.from_toml("[context]\nembedding_dimension = 8\n").context.embedding_dimension == 8


def test_env_override_into_a_non_table_section_is_an_error(tmp_path):
    f = tmp_path / "t5.toml"
    f.write_text("runtime = 5\n")
    with pytest.raises(ConfigError) as ei:
        Config.load(f, env={"SYMBI_RUNTIME__PREEMPTION": "false"})
    msg = str(ei.value)
    assert str(f) in msg and "'runtime'" in msg and "[runtime]" in msg
    assert ei.value.key == "runtime"


def test_env_values_for_text_fields_are_kept_as_text():
    cfg = Config.load(env={"SYMBI_AUDIT_STORAGE": "2024", "SYMBI_BUS__CLIENT_NAME": "true"})
    assert cfg.security.audit_storage == "2024"
    assert cfg.bus.client_name == "true"


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", False), ("1", True), ("no", False), ("YES", True), ("False", False), ("TRUE", True)],
)
def test_env_values_for_bool_fields_accept_common_spellings(text, value):
    cfg = Config.load(env={"MCP_SERVER_DISCOVERY": text, "SYMBI_RUNTIME__PREEMPTION": text})
    assert cfg.mcp.discovery_enabled is value
    assert cfg.runtime.preemption is value
