"""Shared helpers for benches/: data sizes, and the tags `symbi bench` pairs rows by."""

from __future__ import annotations

import os
from typing import Any

import pytest

QUICK = os.environ.get("SYMBI_BENCH_QUICK") == "1"


def size(full: int, quick: int) -> int:
    """The data size for this run: small under `symbi bench --quick`."""
    return quick if QUICK else full


@pytest.fixture
def tag(benchmark: Any) -> Any:
    """tag(metric=..., role="symbi"|"peer", unit=..., ...) sets the row tags."""

    def _tag(**info: Any) -> None:
        benchmark.extra_info.update(info)

    return _tag
