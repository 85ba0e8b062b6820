from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from symbi import BusConfig, Config, ContextConfig, McpConfig, RuntimeConfig, SecurityConfig
from symbi.audit import GENESIS, chain_hashes, verify_chain
from symbi.errors import AuditIntegrityError, ConfigError

sizes = st.one_of(
    st.integers(min_value=0, max_value=2**50),
    st.builds(
        lambda n, u: f"{n}{u}",
        st.integers(0, 4096),
        st.sampled_from(["", "B", "KB", "MB", "GiB", "TiB"]),
    ),
)
configs = st.builds(
    Config,
    runtime=st.builds(
        RuntimeConfig,
        max_concurrent_agents=st.integers(1, 10_000_000),
        scheduler_threads=st.integers(0, 1024),
        message_buffer_size=st.integers(1, 16_777_216),
        gc_interval_ms=st.integers(10, 86_400_000),
        shutdown_grace_s=st.floats(0, 3600, allow_nan=False),
        mode=st.sampled_from(["embedded", "distributed"]),
        log_level=st.sampled_from(["debug", "info", "warning", "error", "critical"]),
    ),
    security=st.builds(
        SecurityConfig,
        default_sandbox_tier=st.sampled_from(["local", "Tier1", "Tier2"]),
        enforce_policies=st.booleans(),
        audit_enabled=st.booleans(),
        audit_storage=st.none()
        | st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1).filter(str.strip),
    ),
    context=st.builds(
        ContextConfig,
        vector_db_url=st.none()
        | st.sampled_from(["http://localhost:6333", "https://q.example:443/x"]),
        embedding_dimension=st.integers(8, 65_536),
        context_cache_size=sizes,
        knowledge_retention_days=st.integers(0, 36_500),
    ),
    mcp=st.builds(
        McpConfig,
        discovery_enabled=st.booleans(),
        tool_verification=st.sampled_from(["strict", "warn", "off"]),
        connection_timeout_s=st.floats(0.001, 3600, allow_nan=False),
        max_concurrent_connections=st.integers(1, 100_000),
    ),
    bus=st.builds(
        BusConfig,
        nats_url=st.sampled_from(["nats://127.0.0.1:4222", "tls://nats.example:4443"]),
        ack_timeout_s=st.floats(0.001, 3600, allow_nan=False),
        retry_attempts=st.integers(1, 1000),
        rate_limit=st.none() | st.floats(0.001, 1e9, allow_nan=False),
        rate_limit_mode=st.sampled_from(["wait", "fail"]),
    ),
)


@given(configs)
def test_config_round_trips_through_toml_and_dict(cfg: Config) -> None:
    assert Config.from_toml(cfg.to_toml()) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_distributed_mode_needs_a_nats_url() -> None:
    with pytest.raises(ConfigError, match="nats_url") as ei:
        Config.from_dict({"runtime": {"mode": "distributed"}})
    assert ei.value.key == "runtime.mode"
    cfg = Config.load(env={"SYMBI_RUNTIME_MODE": "distributed", "SYMBI_NATS_URL": "nats://h:1"})
    assert cfg.bus.nats_url == "nats://h:1" and cfg.runtime.mode == "distributed"
    with pytest.raises(ConfigError, match=r"bus\.nats_url"):
        Config.from_dict({"bus": {"nats_url": "http://not-nats"}})


@given(
    st.lists(st.binary(max_size=64), min_size=1, max_size=30),
    st.data(),
)
def test_any_changed_payload_is_caught_at_its_index(
    payloads: list[bytes], data: st.DataObject
) -> None:
    hashes = chain_hashes(GENESIS, 0, payloads)
    i = data.draw(st.integers(0, len(payloads) - 1))
    forged = data.draw(st.binary(max_size=64).filter(lambda b: b != payloads[i]))
    tampered = [*payloads[:i], forged, *payloads[i + 1 :]]
    with pytest.raises(AuditIntegrityError) as ei:
        verify_chain(GENESIS, 0, tampered, hashes)
    assert ei.value.sequence == i
