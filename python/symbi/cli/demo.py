"""``symbi demo``: the main job on embedded defaults, as a short readable summary.

It grows as capabilities land; each step prints one line and fails loudly.
"""

from __future__ import annotations

import time
from typing import Optional

import anyio

import symbi
from symbi.audit import GENESIS, chain_hashes, verify_chain
from symbi.errors import AuditIntegrityError

__all__ = ["run_demo"]


def _line(label: str, text: str) -> None:
    print(f"  {label:<12} {text}")


async def _demo(config: symbi.Config) -> int:
    t0 = time.perf_counter()
    async with symbi.Runtime(config) as rt:
        started_ms = (time.perf_counter() - t0) * 1000
        names = ", ".join(c.name for c in rt.components)
        _line("runtime", f"started in {started_ms:.1f} ms (components: {names})")
        health = rt.health()
        _line("health", f"{health.status} (version {health.version})")
        if health.status != "ok":
            return 1

        events = [f'{{"seq":{i},"agent":"demo","event":"tick"}}'.encode() for i in range(100)]
        hashes = chain_hashes(GENESIS, 0, events)
        verify_chain(GENESIS, 0, events, hashes)
        tampered = list(events)
        tampered[42] = tampered[42].replace(b"tick", b"tock")
        try:
            verify_chain(GENESIS, 0, tampered, hashes)
        except AuditIntegrityError as e:
            _line(
                "audit chain",
                f"{len(events)} events hashed and verified; "
                f"tampered copy caught at seq {e.sequence}",
            )
        else:
            _line("audit chain", "FAILED: a tampered copy verified")
            return 1
        t1 = time.perf_counter()
    _line("shutdown", f"clean in {(time.perf_counter() - t1) * 1000:.1f} ms")
    return 0


def run_demo(config_path: Optional[str] = None) -> int:
    config = symbi.Config.load(config_path)
    print(f"symbi {symbi.__version__} demo (embedded, {config.runtime.mode} mode)")
    return anyio.run(_demo, config)
