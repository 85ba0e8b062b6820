"""Quickstart: open a runtime, look at its health, and use the audit chain.

Run: python examples/01_quickstart.py
"""

from __future__ import annotations

import anyio

import symbi
from symbi.audit import GENESIS, chain_hashes, verify_chain
from symbi.errors import AuditIntegrityError


async def main() -> None:
    config = symbi.Config.load()  # $SYMBI_CONFIG_PATH, else defaults; SYMBI_* overrides apply
    async with symbi.Runtime(config) as rt:
        health = rt.health()
        print(f"runtime {health.version}: {health.status}")
        for name, comp in health.components.items():
            print(f"  {name}: {comp.status} {comp.detail}")

        events = [b'{"agent":"a1","event":"started"}', b'{"agent":"a1","event":"stopped"}']
        hashes = chain_hashes(GENESIS, 0, events)
        verify_chain(GENESIS, 0, events, hashes)
        print("audit chain verified")
        try:
            verify_chain(GENESIS, 0, [events[0], b'{"agent":"a1","event":"forged"}'], hashes)
        except AuditIntegrityError as e:
            print(f"tampering detected at sequence {e.sequence}")

    # The same from a script without async, or from a Jupyter cell:
    with symbi.sync.Runtime(config) as srt:
        print(f"sync runtime: {srt.health().status}")


if __name__ == "__main__":
    anyio.run(main)
