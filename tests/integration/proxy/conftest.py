"""Fixtures for the proxy's integration tier: one live stack per session (proxy_live.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from proxy_live import LiveStack, run_live_stack


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with run_live_stack(tmp_path_factory.mktemp("proxy-live")) as stack:
        yield stack
