"""Connection hygiene (`wire.http_server`) against the real proxy and the real manager:
silent, slow-header and slow-body sockets are closed within their deadlines while a
client with a key keeps getting answers (counted); one address cannot take more than its
share; under the connection cap, keyless sockets are shed before keyed ones.

The slow sockets come from other loopback addresses (127.0.0.2...): Linux answers all of
127/8 on lo, so each address is its own client for the per-address cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import uvicorn
from proxy_live import PORTS, LiveStack, run_open_proxy
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.asgi import Watched
from tests.tools import connect_from, free_ports, trickle, until_closed
from wire import http_server
from wire.disconnect import watch_disconnect
from wire.http_server import CONNECTION_SCOPE_KEY, ConnectionLimits, Trust

HEADER_TIMEOUT = 1.5
KEEP_ALIVE = 5.0  # wire.http_server.ConnectionLimits' default (not a proxy setting)
SLACK = 4.0
"""Margin on a deadline for a loaded 2-core machine: a socket must be closed by
deadline + SLACK, and must not be closed before the deadline."""


@contextlib.contextmanager
def keyed_proxy(stack: LiveStack, work: Path, **env: str) -> Iterator[str]:
    """A proxy on the live stack's manager, with its key and `env` (HOMELAB_* settings)."""
    with run_open_proxy(stack, work, dict(env), api_key=stack.api_key) as url:
        yield url


async def _keyed_loop(url: str, key: str, stop: asyncio.Event) -> tuple[int, int]:
    """A keyed client asking GET /v1/models until `stop`: (answered 200, other)."""
    ok = other = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
        while not stop.is_set():
            try:
                r = await client.get("/v1/models")
                ok, other = (ok + 1, other) if r.status_code == 200 else (ok, other + 1)
            except httpx.HTTPError:
                other += 1
            await asyncio.sleep(0.05)
    return ok, other


def test_slow_and_silent_sockets_closed_in_time_while_a_key_gets_answers(
    live_stack: LiveStack, tmp_path: Path
) -> None:
    with keyed_proxy(live_stack, tmp_path, HOMELAB_PROXY_HEADER_TIMEOUT=str(HEADER_TIMEOUT)) as url:
        key = live_stack.api_key.encode()
        post = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: "
            + url.removeprefix("http://").encode()
            + b"\r\nAuthorization: Bearer "
            + key
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )

        async def scenario() -> dict[str, list[tuple[bytes, float]]]:
            stop = asyncio.Event()
            keyed = asyncio.create_task(_keyed_loop(url, live_stack.api_key, stop))
            kinds: dict[str, list[asyncio.Task[tuple[bytes, float]]]] = {}
            trickles = []
            started = time.monotonic()
            for i in range(90):
                kind = ("silent", "slow-header", "slow-body")[i % 3]
                reader, writer = await connect_from(url, f"127.0.0.{2 + i % 6}")
                if kind == "slow-header":
                    trickles.append(
                        asyncio.create_task(
                            trickle(writer, b"GET /v1/models HTTP/1.1\r\nX-Slow: ", b"a")
                        )
                    )
                elif kind == "slow-body":
                    trickles.append(asyncio.create_task(trickle(writer, post, b" ")))
                kinds.setdefault(kind, []).append(
                    asyncio.create_task(until_closed(reader, KEEP_ALIVE + 3 * SLACK))
                )
            done = {k: [await t for t in ts] for k, ts in kinds.items()}
            stop.set()
            ok, other = await keyed
            for t in trickles:
                t.cancel()
            done["started"] = [(b"", started)]
            done["keyed"] = [(str(ok).encode(), float(other))]
            return done

        result = asyncio.run(scenario())
    started = result.pop("started")[0][1]
    (ok, other) = result.pop("keyed")[0]
    # The keyed client was answered every time, all along.
    assert int(ok) > 10 and other == 0, (ok, other)
    deadlines = {"silent": KEEP_ALIVE, "slow-header": HEADER_TIMEOUT, "slow-body": HEADER_TIMEOUT}
    for kind, closes in result.items():
        for data, closed_at in closes:
            # Closed after its deadline, not long after (opening all 90 takes a moment).
            assert closed_at - started < deadlines[kind] + SLACK + 2, (kind, closed_at - started)
            if kind == "silent":
                assert data == b""
            else:
                assert data.startswith(b"HTTP/1.1 408 "), (kind, data[:80])
                assert b'"code": "request_timeout"' in data


def test_one_address_cannot_take_every_connection(live_stack: LiveStack, tmp_path: Path) -> None:
    with keyed_proxy(live_stack, tmp_path, HOMELAB_PROXY_MAX_CONNECTIONS_PER_ADDRESS="8") as url:

        async def scenario() -> tuple[list[bytes], int]:
            conns = [await connect_from(url, "127.0.0.9") for _ in range(10)]

            async def first_bytes(reader: asyncio.StreamReader) -> bytes:
                try:  # all at once, well inside the 5 s an idle connection is kept
                    return await asyncio.wait_for(reader.read(1000), 1.0)
                except TimeoutError:
                    return b"(open)"

            answers = await asyncio.gather(*(first_bytes(r) for r, _ in conns))
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                r = await client.get(
                    "/v1/models", headers={"Authorization": f"Bearer {live_stack.api_key}"}
                )
            for _, writer in conns:
                writer.close()
            return answers, r.status_code

        answers, keyed_status = asyncio.run(scenario())
    assert answers[:8] == [b"(open)"] * 8
    for refused in answers[8:]:
        assert refused.startswith(b"HTTP/1.1 429 "), refused
        assert b"too_many_connections" in refused
    assert keyed_status == 200  # another address is not affected


def test_keyless_sockets_are_shed_before_keyed_ones(live_stack: LiveStack, tmp_path: Path) -> None:
    cap = 30
    with keyed_proxy(
        live_stack,
        tmp_path,
        HOMELAB_PROXY_MAX_CONNECTIONS=str(cap),
        HOMELAB_PROXY_MAX_CONNECTIONS_PER_ADDRESS="100",
    ) as url:

        async def scenario() -> tuple[int, int, int, list[int]]:
            headers = {"Authorization": f"Bearer {live_stack.api_key}"}
            # Five keyed clients, each with a connection that made a request (trusted).
            keyed = [httpx.AsyncClient(base_url=url, headers=headers, timeout=10) for _ in range(5)]
            for client in keyed:
                assert (await client.get("/v1/models")).status_code == 200
            silent = [await connect_from(url, f"127.0.0.{10 + i % 4}") for i in range(120)]
            await asyncio.sleep(0.5)
            closed = 0
            for reader, _ in silent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(200), 0.05)
                    closed += 1  # the server answered 503 and closed, or just closed
            # The keyed clients' connections were kept, and they are still answered.
            statuses = [(await c.get("/v1/models")).status_code for c in keyed]
            # A new keyed connection finds room too (a keyless one makes way).
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as fresh:
                fresh_status = (await fresh.get("/v1/models")).status_code
            for client in keyed:
                await client.aclose()
            for _, writer in silent:
                writer.close()
            return closed, len(silent), fresh_status, statuses

        closed, opened, fresh_status, statuses = asyncio.run(scenario())
    assert statuses == [200] * 5
    assert fresh_status == 200
    # At most `cap` connections: the 5 keyed ones stayed, so at most cap - 5 silent ones.
    assert closed >= opened - (cap - 5), (closed, opened)


def test_the_manager_closes_silent_and_slow_header_sockets(live_stack: LiveStack) -> None:
    async def scenario() -> list[tuple[bytes, float]]:
        started = time.monotonic()
        silent_r, _ = await connect_from(live_stack.manager_url, "127.0.0.20")
        slow_r, slow_w = await connect_from(live_stack.manager_url, "127.0.0.21")
        feeding = asyncio.create_task(trickle(slow_w, b"GET /v1/models HTTP/1.1\r\nX-Slow: ", b"a"))
        closes = [
            await until_closed(silent_r, 10 + 3 * SLACK),
            await until_closed(slow_r, 10 + 3 * SLACK),
        ]
        feeding.cancel()
        return [(data, at - started) for data, at in closes]

    (silent, silent_s), (slow, slow_s) = asyncio.run(scenario())
    assert silent == b"" and KEEP_ALIVE - 0.5 <= silent_s < KEEP_ALIVE + SLACK
    assert slow.startswith(b"HTTP/1.1 408 ") and 10 - 0.5 <= slow_s < 10 + SLACK


def test_a_client_that_leaves_cancels_the_work_through_its_connection() -> None:
    """Under our server, `watch_disconnect` hears a disconnect from the connection
    (`Trust.on_lost`) instead of a task reading ``receive``: the work is cancelled as the
    client goes, and the hook is gone once the answer is over."""
    seen: dict[str, object] = {}
    working, returned = asyncio.Event(), asyncio.Event()

    class Work(Watched):
        connection: Trust

        async def run(self, send: Send, watch: watch_disconnect) -> None:
            seen["hooked"] = self.connection.on_lost is not None
            working.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen["cancelled"] = True
                raise

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        work = Work()
        work.connection = scope[CONNECTION_SCOPE_KEY]
        await work(scope, receive, send)
        seen["unhooked"] = work.connection.on_lost is None
        returned.set()

    async def scenario() -> None:
        async with _serving(app) as port:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /work HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await asyncio.wait_for(working.wait(), 10)
            writer.close()
            await asyncio.wait_for(returned.wait(), 10)

    asyncio.run(scenario())
    assert seen == {"hooked": True, "cancelled": True, "unhooked": True}


@contextlib.asynccontextmanager
async def _serving(app: ASGIApp) -> AsyncIterator[int]:
    """`app` under `wire.http_server` (uvicorn with `GuardedProtocol`) on a free port."""
    (port,) = free_ports(PORTS, 1)
    sock = socket.create_server(("127.0.0.1", port))  # listening: connects queue up
    server = uvicorn.Server(
        http_server.config(app, "127.0.0.1", port, ConnectionLimits(), lifespan="off")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield port
    finally:
        server.should_exit = True
        await serving


def test_answer_headers_are_checked_though_each_pair_only_once() -> None:
    """The server checks each answer header pair once per process (`wire.http_server`'s
    cycle): a clean pair passes every time; a value with a line break is refused every
    time, however often it comes (as uvicorn does: the connection is closed, no answer)."""
    good = [(b"content-type", b"text/plain"), (b"x-clean", b"a b\tc")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        bad = scope["path"] == "/bad"
        headers = [*good, (b"x-bad", b"a\r\nx-injected: 1")] if bad else good
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> list[str]:
        seen = []
        async with _serving(app) as port:
            for path in ("/good", "/bad", "/good", "/bad"):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    try:
                        r = await client.get(path)
                    except httpx.RemoteProtocolError:
                        seen.append("refused")
                    else:
                        seen.append(f"{r.status_code} {r.headers.get('x-clean')}")
        return seen

    assert asyncio.run(scenario()) == ["200 a b\tc", "refused", "200 a b\tc", "refused"]
