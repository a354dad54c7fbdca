"""Fixtures for the proxy's unit tier (the stack itself is in proxy_stack.py).

`make_stack(**settings)` builds one stack with extra `ProxySettings` values;
`stack` is the default one. Everything is torn down after each test. Every proxy a test
builds keeps its state (the last known models, usage, an embedded job store) in the
test's folder unless the test names another: never in the user's own state folder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from proxy_stack import Stack, build_stack


@pytest.fixture(autouse=True)
def _state_in_the_test_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def make_stack(tmp_path: Path):
    def factory(**overrides):
        return build_stack(tmp_path, **overrides)

    return factory


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with build_stack(tmp_path) as s:
        yield s
