from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # Jupyter, scripts and most servers run asyncio; trio is not a dependency.
    return "asyncio"
