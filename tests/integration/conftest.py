"""Real peers for integration tests. Each fixture starts its peer and cleans it up, and
skips with the reason when the peer is not installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server process on 127.0.0.1; ``kill()`` stops it mid-test."""

    def __init__(self, binary: str) -> None:
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"nats-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if shutil.which("/usr/sbin/nats-server") else None
    )
    if binary is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    pytest.importorskip("nats", reason="nats-py is not installed (pip install 'symbi[nats]')")
    server = NatsServer(binary)
    try:
        yield server
    finally:
        server.kill()
