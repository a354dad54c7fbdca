"""The proxy rides out a manager outage: lease requests wait (retrying with backoff) for
`HOMELAB_MANAGER_OUTAGE_WINDOW` seconds, then fail with a 503 that carries Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx
import uvicorn
from proxy_fakes import TOKEN, FakeManager, FakeModelServer, dead_port, serve_aiohttp, serve_asgi
from proxy_stack import MODELS

from proxy.app import create_app
from proxy.settings import ProxySettings


def chat(text: str) -> dict:
    return {"model": "chat-a", "messages": [{"role": "user", "content": text}]}


def settings(tmp_path: Path, manager_url: str, window: float) -> ProxySettings:
    return ProxySettings(
        manager_url=manager_url,
        manager_token=TOKEN,
        app_dir=tmp_path / "app",
        image_dir=tmp_path / "images",
        manager_outage_window=window,
    )


async def test_after_the_window_the_503_carries_retry_after(make_stack) -> None:
    with dead_port() as port:
        async with make_stack(
            manager_url=f"http://127.0.0.1:{port}", manager_outage_window=0.3
        ) as stack:
            r = await stack.client.post("/v1/chat/completions", json=chat("hi"))
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "manager_unavailable" and err["source"] == "manager"
    assert "retried for 0.3 s" in err["message"]
    assert int(r.headers["retry-after"]) > 0


@contextlib.asynccontextmanager
async def serve_on(app, sock: socket.socket):
    """Serve `app` on an already bound socket (the manager coming back on its port)."""
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def test_a_request_sent_while_the_manager_is_down_is_answered_when_it_is_back(
    tmp_path: Path,
) -> None:
    upstream = FakeModelServer()
    async with serve_aiohttp(upstream.app) as upstream_url:
        manager = FakeManager(MODELS, upstream_url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with dead_port() as port:
            pass
        sock.bind(("127.0.0.1", port))  # bound, not listening: connections are refused
        try:
            proxy_settings = settings(tmp_path, f"http://127.0.0.1:{port}", window=30.0)
            async with serve_asgi(create_app(proxy_settings)) as url:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    request = asyncio.create_task(
                        client.post("/v1/chat/completions", json=chat("hello"))
                    )
                    await asyncio.sleep(0.8)
                    assert not request.done(), "the request must wait for the manager"
                    async with serve_on(manager.app, sock):
                        r = await request
                        assert r.status_code == 200, r.text
                        assert manager.granted == 1
        finally:
            sock.close()


async def test_the_model_list_is_served_from_the_last_one_while_the_manager_is_away(
    tmp_path: Path,
) -> None:
    upstream = FakeModelServer()
    async with serve_aiohttp(upstream.app) as upstream_url:
        manager = FakeManager(MODELS, upstream_url)
        async with serve_asgi(manager.app) as manager_url:
            proxy_settings = settings(tmp_path, manager_url, window=0.0)
            app = create_app(proxy_settings)
            async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/v1/models")).status_code == 200
                ctx = app.state.ctx
                ctx.manager.invalidate_models()
                ctx.manager.base_url = "http://127.0.0.1:9"  # the manager is away
                r = await client.get("/v1/models")
                assert r.status_code == 200
                assert {m["id"] for m in r.json()["data"]} == set(MODELS)
