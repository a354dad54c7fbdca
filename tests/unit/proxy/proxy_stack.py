"""The proxy's unit-tier stack: the real proxy app served by uvicorn on loopback,
in front of `FakeManager` and `FakeModelServer` (proxy_fakes.py).

`build_stack(tmp_path, **settings)` is an async context manager yielding a `Stack`;
everything it started is torn down on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from proxy_fakes import TOKEN, FakeManager, FakeModelServer, serve_aiohttp, serve_asgi

from proxy.app import create_app
from proxy.settings import ProxySettings

MODELS = {
    "chat-a": {"type": "text"},
    "chat-b": {"type": "text"},
    "img": {"type": "image", "sizes": ["64x64", "32x48"], "max_n": 2},
    "emb": {"type": "embedding"},
}
API_KEY = "ut-k3y-9Fq2Lm7Xc4Vb"


def stack_settings(tmp_path: Path, **overrides: Any) -> ProxySettings:
    """The unit stacks' proxy settings: the fake manager's token (its URL in `overrides`),
    every file in `tmp_path`, the model list cached half a second, no API keys;
    `overrides` on top."""
    values = {
        "manager_token": TOKEN,
        "app_dir": tmp_path / "app",
        "image_dir": tmp_path / "images",
        "jobs_url": str(tmp_path / "jobs.db"),
        "state_dir": tmp_path / "state",
        "models_cache_ttl": 0.5,
        "api_keys": [],
        **overrides,
    }
    return ProxySettings(**values)


@dataclass
class Stack:
    url: str
    manager: FakeManager
    upstream: FakeModelServer
    settings: ProxySettings
    client: httpx.AsyncClient
    app: Any = None
    """The proxy's app (`app.state.ctx` once started)."""


@contextlib.asynccontextmanager
async def build_stack(
    tmp_path: Path, swap_delay: float = 0.0, ttl: float = 60.0, **overrides
) -> AsyncIterator[Stack]:
    upstream = FakeModelServer()
    async with serve_aiohttp(upstream.app) as upstream_url:
        manager = FakeManager(MODELS, upstream_url, swap_delay=swap_delay, ttl=ttl)
        async with serve_asgi(manager.app) as manager_url:
            settings = stack_settings(tmp_path, **{"manager_url": manager_url, **overrides})
            app = create_app(settings)
            async with serve_asgi(app) as url:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    yield Stack(url, manager, upstream, settings, client, app)
