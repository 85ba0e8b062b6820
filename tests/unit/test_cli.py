from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import symbi
from symbi.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "symbi", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
        check=False,
    )


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}


def test_console_script_is_installed():
    exe = shutil.which("symbi")
    assert exe, "the `symbi` console script is not on PATH"
    out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.startswith(f"symbi {symbi.__version__} ")


def test_version(capsys):
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert symbi.__version__ in out and "abi3" in out and "CPython" in out


def test_demo_runs_the_main_job(tmp_path):
    audit = tmp_path / "trail"
    p = run("demo", "--audit-dir", str(audit), env=clean_env())
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "3 agents ran 12 tasks" in out
    assert "denied network_access to exfil.example.com" in out
    assert "denied normal-worker -> outside-vendor (pii)" in out
    assert "12 direct + 12 replies + 12 published, each Ed25519-signed" in out
    assert "; 0 rejected" in out and "ledger heard all 12 results" in out
    assert "critical-worker recalls: 'finished job-" in out
    assert "cited: audit-trail" in out
    assert "health        ok" in out
    assert f"verified from {audit}" in out
    # The trail it wrote verifies on its own, queries, and reports.
    v = run("audit", "verify", str(audit), env=clean_env())
    assert v.returncode == 0, v.stdout + v.stderr
    assert v.stdout.startswith(f"OK {audit}:")
    q = run(
        "audit", "query", str(audit), "--type", "policy.denied", "--format", "json", env=clean_env()
    )
    assert q.returncode == 0, q.stderr
    denials = json.loads(q.stdout)
    assert denials and all(d["event_type"] == "policy.denied" for d in denials)
    assert any(d["details"].get("action") == "send" for d in denials), denials
    r = run(
        "audit", "report", str(audit), "--framework", "hipaa", "--format", "html", env=clean_env()
    )
    assert r.returncode == 0, r.stderr
    assert "<svg" in r.stdout and "HIPAA" in r.stdout


def test_audit_verify_names_the_first_bad_event(tmp_path):
    audit = tmp_path / "trail"
    assert run("demo", "--audit-dir", str(audit), env=clean_env()).returncode == 0
    seg = sorted(audit.glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    v = run("audit", "verify", str(audit), env=clean_env())
    assert v.returncode == 1
    assert "first bad event at sequence" in v.stdout


def test_audit_commands_reject_bad_input(tmp_path):
    p = run("audit", "verify", str(tmp_path / "missing"), env=clean_env())
    assert p.returncode == 2 and "not a directory" in p.stderr
    p = run("audit", "query", str(tmp_path), "--since", "yesterday-ish", env=clean_env())
    assert p.returncode == 2 and "ISO 8601" in p.stderr


def test_demo_with_a_bad_config_exits_2(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[runtime]\nmax_concurrent_agents = -3\n")
    p = run("demo", "--config", str(f), env=clean_env())
    assert p.returncode == 2
    assert "ConfigError" in p.stderr and "runtime.max_concurrent_agents" in p.stderr


def test_config_check_prints_the_effective_config(tmp_path):
    f = tmp_path / "ok.toml"
    f.write_text("[runtime]\nmax_concurrent_agents = 12\n")
    env = clean_env() | {"SYMBI_MCP__TOOL_VERIFICATION": "warn"}
    p = run("config", "check", str(f), env=env)
    assert p.returncode == 0, p.stderr
    assert "max_concurrent_agents = 12" in p.stdout
    assert 'tool_verification = "warn"' in p.stdout
    # What it prints is itself a valid config with the same meaning.
    body = "\n".join(line for line in p.stdout.splitlines() if not line.startswith("# effective"))
    assert symbi.Config.from_toml(body).runtime.max_concurrent_agents == 12


def test_config_check_reports_the_error(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[mcp]\ntool_verification = 'sometimes'\n")
    p = run("config", "check", str(f), env=clean_env())
    assert p.returncode == 2
    assert str(f) in p.stderr
    assert "mcp.tool_verification" in p.stderr and "strict" in p.stderr
    assert p.stdout == ""


def test_config_check_missing_file(tmp_path):
    p = run("config", "check", str(tmp_path / "absent.toml"), env=clean_env())
    assert p.returncode == 2
    assert "does not exist" in p.stderr


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["config"], ["config", "check"], ["demo", "--bogus"], ["bench", "--only"]],
)
def test_bad_arguments_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code == 2
    assert "usage: symbi" in capsys.readouterr().err


def test_bench_unknown_area_is_rejected(capsys):
    rc = main(["bench", "--only", "nonsense", "--dir", str(ROOT / "benches")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "audit" in err


def test_bench_without_suites_says_where_to_run(tmp_path, capsys):
    rc = main(["bench", "--dir", str(tmp_path)])
    assert rc == 2
    assert "bench_*.py" in capsys.readouterr().err


def test_bench_quick_writes_honest_rows(tmp_path):
    out = tmp_path / "rows.json"
    p = run("bench", "--quick", "--only", "audit", "--json", str(out), cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert rows, "no rows"
    keys = {"metric", "unit", "symbi", "peer", "peer_value", "ratio", "seed_target", "goal"}
    for row in rows:
        assert set(row) == keys
    chain = next(r for r in rows if r["metric"].startswith("audit chain hashing"))
    assert chain["peer"] and chain["symbi"] > 0 and chain["peer_value"] > 0
    assert chain["ratio"] == pytest.approx(chain["symbi"] / chain["peer_value"])


def _small_trail(path: Path) -> Path:
    import anyio

    from symbi.audit import AuditLog

    async def write() -> None:
        async with AuditLog(path) as log:
            await log.append("agent-1", "tool.call", {"tool": "search"})

    anyio.run(write)
    return path


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["audit", "verify", "{trail}", "--public-key", "{tmp}/absent.pub"], "--public-key"),
        (["audit", "verify", "{trail}", "--public-key", "{tmp}"], "--public-key"),
        (
            ["audit", "report", "{trail}", "--framework", "hipaa", "--out", "{tmp}/no/dir/r.md"],
            "--out",
        ),
        (["audit", "report", "{trail}", "--framework", "hipaa", "--out", "{tmp}"], "--out"),
        (["audit", "query", "{trail}", "--since", "1e30"], "since"),
        (["bench", "--json", "{tmp}/no/dir/rows.json", "--dir", str(ROOT / "benches")], "--json"),
    ],
)
def test_unusable_paths_and_values_print_one_line_and_exit_2(tmp_path, capsys, argv, needle):
    trail = _small_trail(tmp_path / "trail")
    capsys.readouterr()
    args = [a.format(trail=trail, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert "Traceback" not in out.err
    assert lines[0].startswith(f"symbi {args[0]}: InvalidArgument: ")
    assert needle in lines[0]
    assert not (tmp_path / "no").exists()


def test_audit_verify_with_the_trails_own_public_key_passes(tmp_path, capsys):
    trail = _small_trail(tmp_path / "trail")
    assert main(["audit", "verify", str(trail), "--public-key", str(trail / "audit.pub")]) == 0
    assert capsys.readouterr().out.startswith(f"OK {trail}:")
    out = tmp_path / "r.md"
    assert main(["audit", "report", str(trail), "--framework", "hipaa", "--out", str(out)]) == 0
    assert "HIPAA" in out.read_text()


@pytest.mark.parametrize(
    "body",
    [
        '[bus]\nrate_limit = 1\nrate_limit_mode = "fail"\n',
        '[runtime]\nmessage_buffer_size = 1\nfull_mailbox = "fail"\n',
    ],
)
def test_demo_failure_inside_a_task_group_is_one_line(tmp_path, capsys, monkeypatch, body):
    for k in [k for k in os.environ if k.startswith("SYMBI_")]:
        monkeypatch.delenv(k)
    f = tmp_path / "c.toml"
    f.write_text(body)
    rc = main(["demo", "--config", str(f), "--audit-dir", str(tmp_path / "trail")])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("symbi demo: ") and "Group" not in lines[0]


class _EmptyAnswer:
    text = ""
    citations: tuple[object, ...] = ()


class _EmptyPipeline:
    async def answer(self, question: str, timeout: float = 0) -> _EmptyAnswer:
        return _EmptyAnswer()


@pytest.mark.parametrize("broken", ["policy", "rag"])
def test_demo_fails_when_a_step_does_not_hold(tmp_path, capsys, monkeypatch, broken):
    import symbi.cli.demo as demo

    for k in [k for k in os.environ if k.startswith("SYMBI_")]:
        monkeypatch.delenv(k)
    if broken == "policy":
        rule = 'allow: [network_access] if resource == "api.partner.example"'
        assert rule in demo.DEMO_POLICY
        monkeypatch.setattr(demo, "DEMO_POLICY", demo.DEMO_POLICY.replace(rule, ""))
    else:
        monkeypatch.setattr(symbi.rag, "example_pipeline", _EmptyPipeline)
    assert main(["demo", "--audit-dir", str(tmp_path / "trail")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "health        ok" not in out
    assert ("allowed network_access" in out) == (broken != "policy")


def _corrupt_first_record(trail: Path) -> None:
    seg = sorted(trail.glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[0] ^= 0xFF
    seg.write_bytes(bytes(data))


@pytest.mark.parametrize("cmd", [["query"], ["report", "--framework", "hipaa"]])
def test_audit_query_and_report_refuse_a_damaged_trail(tmp_path, capsys, cmd):
    trail = _small_trail(tmp_path / "trail")
    _corrupt_first_record(trail)
    capsys.readouterr()
    assert main(["audit", cmd[0], str(trail), *cmd[1:]]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert "BROKEN" in lines[0] and "first bad event at sequence 0" in lines[0]


@pytest.mark.parametrize("cmd", [["query"], ["report", "--framework", "hipaa"]])
def test_audit_query_and_report_refuse_a_directory_that_is_not_a_trail(tmp_path, capsys, cmd):
    rc = main(["audit", cmd[0], str(tmp_path), *cmd[1:]])
    out = capsys.readouterr()
    assert rc in (1, 2)
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "audit.pub" in lines[0], out.err


def test_audit_report_exits_1_when_a_control_fails(tmp_path, capsys):
    trail = _small_trail(tmp_path / "trail")
    fw = tmp_path / "fw.toml"
    fw.write_text(
        '[frameworks.acme]\ntitle = "ACME"\n[[frameworks.acme.controls]]\nid = "AC-1"\n'
        'title = "Secrets are read"\ncheck = "events"\nevent_types = ["secret.*"]\n'
        "min_events = 1\n"
    )
    capsys.readouterr()
    rc = main(["audit", "report", str(trail), "--framework", "acme", "--frameworks", str(fw)])
    out = capsys.readouterr()
    assert rc == 1
    assert "FAIL" in out.out and "AC-1" in out.err


def test_report_frameworks_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    trail = _small_trail(tmp_path / "trail")
    fw = tmp_path / "fw.toml"
    fw.write_bytes("[frameworks.acme]\ntitle = 'caf\xe9'\n".encode("latin-1"))
    capsys.readouterr()
    argv = ["audit", "report", str(trail), "--framework", "acme", "--frameworks", str(fw)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "InvalidArgument" in err
    assert "save it as UTF-8" in err


def test_report_frameworks_file_with_a_bom_is_accepted(tmp_path, capsys):
    trail = _small_trail(tmp_path / "trail")
    fw = tmp_path / "fw.toml"
    fw.write_bytes(
        b'\xef\xbb\xbf[frameworks.acme]\ntitle = "ACME"\n[[frameworks.acme.controls]]\n'
        b'id = "AC-1"\ntitle = "Tool calls"\ncheck = "events"\nevent_types = ["tool.*"]\n'
    )
    argv = ["audit", "report", str(trail), "--framework", "acme", "--frameworks", str(fw)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "AC-1" in capsys.readouterr().out


def test_config_check_on_a_directory_and_demo_audit_dir_on_a_file_exit_2(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a directory" in err and "Errno" not in err
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["demo", "--audit-dir", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--audit-dir" in err and "is a file" in err
    assert f.read_text() == "x"
