"""Fixtures for the proxy's unit tier (the stack itself is in proxy_stack.py).

`make_stack(**settings)` builds one stack with extra `ProxySettings` values;
`stack` is the default one. Everything is torn down after each test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from proxy_stack import Stack, build_stack


@pytest.fixture
def make_stack(tmp_path: Path):
    def factory(**overrides):
        return build_stack(tmp_path, **overrides)

    return factory


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with build_stack(tmp_path) as s:
        yield s
