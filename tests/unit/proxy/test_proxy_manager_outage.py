"""The proxy rides out a manager outage: lease requests wait (retrying with backoff) for
`HOMELAB_MANAGER_OUTAGE_WINDOW` seconds, then fail with a 503 that carries Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import httpx
import pytest
import uvicorn
from proxy_fakes import TOKEN, FakeManager, FakeModelServer, dead_port, serve_aiohttp, serve_asgi
from proxy_stack import MODELS

from proxy.app import create_app
from proxy.settings import ProxySettings
from tests.uvicorn_server import QuickServer


def chat(text: str) -> dict:
    return {"model": "chat-a", "messages": [{"role": "user", "content": text}]}


def settings(tmp_path: Path, manager_url: str, window: float) -> ProxySettings:
    return ProxySettings(
        manager_url=manager_url,
        manager_token=TOKEN,
        app_dir=tmp_path / "app",
        image_dir=tmp_path / "images",
        state_dir=tmp_path / "state",
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
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = QuickServer(config)
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
                ctx.manager.first.client.base_url = "http://127.0.0.1:9"  # the manager is away
                r = await client.get("/v1/models")
                assert r.status_code == 200
                assert {m["id"] for m in r.json()["data"]} == set(MODELS)


def test_connections_from_the_proxy_use_tcp_keepalive() -> None:
    import socket as s

    from proxy.app import keepalive_socket

    sock = keepalive_socket((s.AF_INET, s.SOCK_STREAM, 0, "", ("127.0.0.1", 0)))
    try:
        assert sock.getsockopt(s.SOL_SOCKET, s.SO_KEEPALIVE) == 1
        if hasattr(s, "TCP_KEEPIDLE"):
            assert sock.getsockopt(s.IPPROTO_TCP, s.TCP_KEEPIDLE) == 30
    finally:
        sock.close()


async def test_a_silent_manager_event_stream_is_given_up_on(tmp_path: Path) -> None:
    """A manager that stopped sending (not even heartbeats) without closing the connection:
    the proxy's read timeout ends the stream instead of waiting forever."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    port = silent.getsockname()[1]
    import aiohttp

    from proxy.manager_client import ManagerClient

    async def accept_and_stay_silent() -> None:
        loop = asyncio.get_running_loop()
        silent.setblocking(False)
        conn, _ = await loop.sock_accept(silent)
        request = await loop.sock_recv(conn, 65536)
        assert request.startswith(b"GET /v1/events")
        await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        await asyncio.sleep(30)

    server = asyncio.create_task(accept_and_stay_silent())
    async with aiohttp.ClientSession() as http:
        client = ManagerClient(f"http://127.0.0.1:{port}", TOKEN, http, events_read_timeout=0.3)
        resp = await client.open_events()
        # aiohttp's read timeout, not wait_for's bound (which would mean it waited on).
        with pytest.raises(aiohttp.ServerTimeoutError):
            await asyncio.wait_for(resp.content.read(), 10)
        resp.close()
    server.cancel()
    silent.close()


async def test_a_release_sent_while_the_manager_is_down_is_delivered_when_it_is_back() -> None:
    import aiohttp

    from proxy.manager_client import ManagerClient

    manager = FakeManager(MODELS, "http://127.0.0.1:9")
    manager.leases["kept-lease"] = "chat-a"  # the restarted manager kept it (leases.json)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound, not listening: the manager is down
    port = sock.getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:
            client = ManagerClient(f"http://127.0.0.1:{port}", TOKEN, http)
            release = asyncio.create_task(client.release("kept-lease"))
            await asyncio.sleep(0.5)
            assert not release.done(), "the release must wait for the manager"
            async with serve_on(manager.app, sock):
                await asyncio.wait_for(release, 10)
        assert manager.released == ["kept-lease"]
    finally:
        sock.close()


async def test_a_job_is_accepted_at_once_against_the_last_known_models_while_the_manager_is_away(
    tmp_path: Path,
) -> None:
    """Issue 26: a create_message sent while the manager is away (since the proxy started)
    is answered at once: accepted, with its task id, when the proxy knew the model from
    an earlier run (its known-models file); refused at once (-32003) when it never did."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "create_message",
        "params": {"model": "chat-a", "message": "later"},
    }
    upstream = FakeModelServer()
    async with serve_aiohttp(upstream.app) as upstream_url:
        manager = FakeManager(MODELS, upstream_url)
        async with serve_asgi(manager.app) as manager_url:  # a first run learns the models
            app = create_app(settings(tmp_path, manager_url, window=30.0))
            async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/v1/models")).status_code == 200
    with dead_port() as port:
        away = f"http://127.0.0.1:{port}"
        never = settings(tmp_path / "other", away, window=30.0)
        async with serve_asgi(create_app(never)) as url, httpx.AsyncClient(base_url=url) as c:
            r = await asyncio.wait_for(c.post("/rpc", json=body), 20)
        assert r.json()["error"]["code"] == -32003, r.text
        app = create_app(settings(tmp_path, away, window=30.0))
        async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url) as client:
            r = await asyncio.wait_for(client.post("/rpc", json=body), 20)
            result = r.json()["result"]
            assert result["taskId"] and result["state"] in ("PENDING", "STARTED"), r.text
