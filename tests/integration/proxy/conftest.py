"""Fixtures for the proxy's integration tier: one live stack per session (proxy_live.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from proxy_live import LiveStack, run_live_stack, run_open_proxy


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with run_live_stack(tmp_path_factory.mktemp("proxy-live")) as stack:
        yield stack


@pytest.fixture(scope="session")
def open_proxy_url(
    live_stack: LiveStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A proxy without API keys (HOMELAB_API_KEYS=off) on the live stack's manager."""
    with run_open_proxy(live_stack, tmp_path_factory.mktemp("proxy-open")) as url:
        yield url
