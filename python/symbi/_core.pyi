"""Type stubs for the Rust extension ``symbi._core``. Checked by ``mypy.stubtest``."""

from collections.abc import Sequence

__all__ = [
    "CHAIN_HASH_SIZE",
    "__version__",
    "build_info",
    "chain_hashes",
    "chain_link",
    "verify_chain",
]

__version__: str
CHAIN_HASH_SIZE: int

def build_info() -> dict[str, object]: ...
def chain_link(prev: bytes, seq: int, payload: bytes) -> bytes: ...
def chain_hashes(prev: bytes, first_seq: int, payloads: Sequence[bytes]) -> list[bytes]: ...
def verify_chain(
    prev: bytes, first_seq: int, payloads: Sequence[bytes], hashes: Sequence[bytes]
) -> int | None: ...
