"""Every script in examples/ runs, as a user would run it, and succeeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_are_examples():
    assert any(p.name == "01_quickstart.py" for p in EXAMPLES)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    p = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    if script.name == "01_quickstart.py":
        assert "audit chain verified" in p.stdout
        assert "tampering detected at sequence 1" in p.stdout
        assert "sync runtime: ok" in p.stdout
