"""proxy.upstream (the lean HTTP/1.1 client of forwarded requests) against real servers
on loopback: an aiohttp.web app, or a raw asyncio server that writes exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
from aiohttp import web

from proxy.upstream import HIGH_WATER, UPSTREAM_ERRORS, UpstreamPool, UpstreamProtocolError

T = {"connect_timeout": 5.0, "read_timeout": 5.0}

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """Each connection runs `handler(reader, writer, n)`, n counting connections from 1."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    raw = RawServer(handler)
    server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
    raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield raw
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def pool(**kwargs: float) -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(**kwargs)
    try:
        yield p
    finally:
        await p.aclose()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The head and body of one request (Content-Length bodies)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def serve_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while True:
        await read_request(reader)
        writer.write(ok(b'{"conn": %d}' % n))
        await writer.drain()


async def test_get_shares_the_connections_of_posts() -> None:
    """A GET (the image server's /v1/progress) on the same keep-alive connection as a POST."""
    peers: list[tuple[str, object]] = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(
            (request.method, request.transport and request.transport.get_extra_info("peername"))
        )
        return web.json_response({"method": request.method, "key": request.headers.get("X-Key")})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_get("/v1/progress", handler)
    async with aiohttp_server(app) as url, pool() as p:
        resp = await p.post(url + "/v1/chat/completions", b"{}", {}, **T)
        assert await resp.read() == b'{"method": "POST", "key": null}'
        resp.close()
        resp = await p.get(url + "/v1/progress", {"X-Key": "k"}, **T)
        assert resp.status == 200
        assert await resp.read() == b'{"method": "GET", "key": "k"}'
        resp.close()
    assert [m for m, _ in peers] == ["POST", "GET"] and peers[0][1] == peers[1][1]


async def test_sends_the_request_and_reuses_the_connection() -> None:
    seen: list[tuple[object, str | None, str | None, str | None, bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append(
            (
                peer,
                request.headers.get("Host"),
                request.headers.get("X-Key"),
                request.headers.get("Content-Length"),
                await request.read(),
            )
        )
        return web.json_response({"path": request.path_qs})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with aiohttp_server(app) as url, pool() as p:
        for body in (b'{"a": 1}', b'{"b": 22}'):
            resp = await p.post(url + "/v1/chat/completions?x=1", body, {"X-Key": "k"}, **T)
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert resp.headers["CONTENT-TYPE"].startswith("application/json")
            assert await resp.read() == b'{"path": "/v1/chat/completions?x=1"}'
            resp.close()
    host = url.removeprefix("http://")
    assert [s[1:] for s in seen] == [
        (host, "k", "8", b'{"a": 1}'),
        (host, "k", "9", b'{"b": 22}'),
    ]
    assert seen[0][0] == seen[1][0]  # the same client socket: kept alive


async def test_content_length_chunked_and_close_delimited_bodies() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            _, body = await read_request(reader)
            if body == b"cl":
                writer.write(ok(b"x" * 5000))
            elif body == b"chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for part in (b"hello ", b"chunked ", b"world"):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                    await asyncio.sleep(0.01)
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
                await writer.drain()
                await asyncio.sleep(0.01)
                writer.write(b"the close")
                await writer.drain()
                return  # RawServer closes the connection
            await writer.drain()

    async with raw_server(handler) as srv, pool() as p:
        resp = await p.post(srv.url + "/", b"cl", {}, **T)
        assert await resp.read() == b"x" * 5000
        resp = await p.post(srv.url + "/", b"chunked", {}, **T)
        assert await resp.read() == b"hello chunked world"
        assert srv.connections == 1  # both kept the connection
        resp = await p.post(srv.url + "/", b"close", {}, **T)
        assert resp.content_type == "text/plain"
        assert await resp.read() == b"until the close"
        assert srv.connections == 1
        resp = await p.post(srv.url + "/", b"cl", {}, **T)  # not on the closed one
        assert await resp.read() == b"x" * 5000
        assert srv.connections == 2


async def test_sse_chunks_arrive_one_by_one() -> None:
    got_first = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await asyncio.wait_for(got_first.wait(), 5)  # only after the client saw it
        await resp.write(b"data: two\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/s", handler)
    async with aiohttp_server(app) as url, pool() as p:
        resp = await p.post(url + "/s", b"{}", {}, **T)
        assert resp.content_type == "text/event-stream"
        chunks = []
        it = resp.iter_chunks()
        first = await asyncio.wait_for(it.__anext__(), 2)
        assert first == b"data: one\n\n"
        got_first.set()
        async for chunk in it:
            chunks.append(chunk)
        assert b"".join(chunks) == b"data: two\n\n"
        resp.close()


async def test_connection_close_is_honoured() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:  # says close, but keeps the socket open and would answer again
            await read_request(reader)
            writer.write(ok(b"%d" % n, b"Connection: close\r\n"))
            await writer.drain()

    async with raw_server(handler) as srv, pool() as p:
        for expected in (b"1", b"2"):
            resp = await p.post(srv.url + "/", b"", {}, **T)
            assert await resp.read() == expected
        assert srv.connections == 2


async def test_http10_answer_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)
            await writer.drain()

    async with raw_server(handler) as srv, pool() as p:
        for expected in (b"1", b"2"):
            assert await (await p.post(srv.url + "/", b"", {}, **T)).read() == expected


async def test_idle_connection_closed_by_the_server_is_not_used() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(ok(b"%d" % n))
        await writer.drain()
        # then closes the idle connection (a server's keep-alive timeout)

    async with raw_server(handler) as srv, pool() as p:
        assert await (await p.post(srv.url + "/", b"", {}, **T)).read() == b"1"
        await asyncio.sleep(0.1)
        assert await (await p.post(srv.url + "/", b"", {}, **T)).read() == b"2"


async def _closes_the_second_request_unanswered(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> None:
    await read_request(reader)
    writer.write(ok(b"%d" % n))
    await writer.drain()
    await read_request(reader)  # the second request: closed without an answer


async def test_reused_connection_idle_for_a_while_closed_as_the_request_went_is_retried() -> None:
    async with (
        raw_server(_closes_the_second_request_unanswered) as srv,
        pool(stale_after=0.05) as p,
    ):
        assert await (await p.post(srv.url + "/", b"", {}, **T)).read() == b"1"
        await asyncio.sleep(0.1)  # idle longer than stale_after: a keep-alive timeout's race
        assert await (await p.post(srv.url + "/", b"again", {}, **T)).read() == b"2"
        assert srv.connections == 2


async def test_reused_connection_just_used_that_fails_unanswered_is_not_sent_twice() -> None:
    async with (
        raw_server(_closes_the_second_request_unanswered) as srv,
        pool(stale_after=5.0) as p,
    ):
        assert await (await p.post(srv.url + "/", b"", {}, **T)).read() == b"1"
        with pytest.raises(ConnectionError):  # the server may have read it: no blind resend
            await p.post(srv.url + "/", b"again", {}, **T)
        assert srv.connections == 1


async def test_fresh_connection_closed_without_answer_raises() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    async with raw_server(handler) as srv, pool() as p:
        with pytest.raises(ConnectionError):
            await p.post(srv.url + "/", b"", {}, **T)
        assert srv.connections == 1  # no retry on a fresh connection


async def test_server_dying_mid_body_raises_connection_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)

    async with raw_server(handler) as srv, pool() as p:
        resp = await p.post(srv.url + "/", b"", {}, **T)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(resp.read(), 3)
        resp = await p.post(srv.url + "/", b"", {}, **T)
        got = []

        async def drain() -> None:
            async for chunk in resp.iter_chunks():
                got.append(chunk)

        with pytest.raises(ConnectionError):
            await asyncio.wait_for(drain(), 3)
        assert b"".join(got) == b"partial"
        resp.close()
        resp.close()  # idempotent


async def test_connection_refused_raises_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with pool() as p:
        with pytest.raises(OSError) as caught:
            await p.post(f"http://127.0.0.1:{port}/", b"", {}, **T)
    assert isinstance(caught.value, UPSTREAM_ERRORS)


async def test_read_timeout_between_bytes() -> None:
    done = asyncio.Event()  # the server says nothing more until the test ends

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        _, body = await read_request(reader)
        if body == b"body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12")
        await done.wait()

    async def outcome(call: Coroutine[Any, Any, Any]) -> BaseException | None:
        """What `call` raised; the test's own bound (30 s) is not a TimeoutError of it."""
        task = asyncio.ensure_future(call)
        finished, _ = await asyncio.wait({task}, timeout=30)
        assert task in finished, "the read timeout never fired"
        return task.exception()

    try:
        async with raw_server(handler) as srv, pool() as p:
            post = p.post(srv.url + "/", b"", {}, connect_timeout=5, read_timeout=0.2)
            assert isinstance(await outcome(post), TimeoutError)  # no answer at all
            resp = await p.post(srv.url + "/", b"body", {}, connect_timeout=5, read_timeout=0.2)
            assert isinstance(await outcome(resp.read()), TimeoutError)  # the body stalls
    finally:
        done.set()


async def test_slow_but_steady_stream_does_not_time_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
        for _ in range(20):
            await asyncio.sleep(0.1)
            writer.write(b"x")
            await writer.drain()

    # At least 2 s in all (20 sleeps of 0.1 s), twice the read timeout; a silence of 1 s
    # (ten times the gap) would need the machine to stall for 0.9 s.
    async with raw_server(handler) as srv, pool() as p:
        resp = await p.post(srv.url + "/", b"", {}, connect_timeout=5, read_timeout=1.0)
        assert await resp.read() == b"x" * 20


async def test_read_with_limit_and_error_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        body = b'{"error": "nope"}' + b" " * 100
        writer.write(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        await serve_forever(reader, writer, n)

    async with raw_server(handler) as srv, pool() as p:
        resp = await p.post(srv.url + "/", b"", {}, **T)
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert await resp.read(17) == b'{"error": "nope"}'
        resp.close()
        resp = await p.post(srv.url + "/", b"", {}, **T)
        assert await resp.read(1 << 20) == b'{"conn": 1}'  # limit above the size: all of it
        assert srv.connections == 1  # a complete answer keeps the connection


async def test_malformed_answer_raises_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with raw_server(handler) as srv, pool() as p:
        with pytest.raises(UpstreamProtocolError, match="invalid HTTP response"):
            await p.post(srv.url + "/", b"", {}, **T)


async def test_bytes_after_a_complete_answer_spoil_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await read_request(reader)
            writer.write(ok(b"first") + b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstale")
            await writer.drain()
        await serve_forever(reader, writer, n)

    async with raw_server(handler) as srv, pool() as p:
        assert await (await p.post(srv.url + "/", b"", {}, **T)).read() == b"first"
        assert await (await p.post(srv.url + "/", b"", {}, **T)).read() == b'{"conn": 2}'


async def test_closing_an_unfinished_answer_drops_the_connection() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
        await writer.drain()
        if await reader.read(1) == b"":
            closed.set()

    async with raw_server(handler) as srv, pool() as p:
        resp = await p.post(srv.url + "/", b"", {}, **T)
        assert await resp.iter_chunks().__anext__() == b"data: 1\n\n"
        resp.close()
        await asyncio.wait_for(closed.wait(), 2)


async def test_idle_connections_expire() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(ok(b"1"))
        await writer.drain()
        if await reader.read(1) == b"":
            closed.set()

    async with raw_server(handler) as srv, pool(keepalive_timeout=1.0) as p:
        assert await (await p.post(srv.url + "/", b"", {}, **T)).read() == b"1"
        await asyncio.sleep(0.05)  # kept meanwhile (a stall of 0.95 s would spoil this)
        assert not closed.is_set()
        await asyncio.wait_for(closed.wait(), 10)


async def test_backpressure_bounds_the_buffer() -> None:
    total = 64 * HIGH_WATER
    finished = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"z" * 65536
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()
        finished.set()

    async with raw_server(handler) as srv, pool() as p:
        resp = await p.post(srv.url + "/", b"", {}, connect_timeout=5, read_timeout=0.3)
        await asyncio.sleep(1.0)  # longer than the read timeout: pausing must not time out
        assert resp._buffered < 2 * HIGH_WATER
        assert not finished.is_set()
        got = 0
        async for chunk in resp.iter_chunks():
            got += len(chunk)
            assert resp._buffered < 2 * HIGH_WATER
        assert got == total
        assert finished.is_set()


async def test_read_of_a_body_larger_than_the_high_water_mark() -> None:
    big = bytes(range(256)) * (5 * HIGH_WATER // 256)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(big))
            await writer.drain()

    async with raw_server(handler) as srv, pool() as p:
        resp = await p.post(srv.url + "/", b"", {}, connect_timeout=5, read_timeout=0.5)
        await asyncio.sleep(0.3)  # the body piles up (and pauses) before anyone reads
        assert await asyncio.wait_for(resp.read(), 5) == big
        resp = await p.post(srv.url + "/", b"", {}, connect_timeout=5, read_timeout=0.5)
        await asyncio.sleep(0.3)
        assert await asyncio.wait_for(resp.read(2 * HIGH_WATER), 5) == big[: 2 * HIGH_WATER]
        resp.close()


@pytest.mark.parametrize(
    "scenario",
    [
        test_sends_the_request_and_reuses_the_connection,
        test_content_length_chunked_and_close_delimited_bodies,
        test_sse_chunks_arrive_one_by_one,
        test_reused_connection_idle_for_a_while_closed_as_the_request_went_is_retried,
        test_reused_connection_just_used_that_fails_unanswered_is_not_sent_twice,
        test_server_dying_mid_body_raises_connection_error,
        test_read_timeout_between_bytes,
        test_backpressure_bounds_the_buffer,
        test_read_of_a_body_larger_than_the_high_water_mark,
    ],
)
def test_under_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The proxy runs on uvloop (proxy/__main__.py), whose transports differ."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


async def test_https_for_remote_endpoints_checks_the_certificate(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    from proxy import upstream

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "auth": request.headers["Authorization"]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    pool = UpstreamPool()
    url = f"https://127.0.0.1:{port}/v1/chat/completions"
    try:
        # The system's CAs do not know this certificate: refused.
        monkeypatch.setattr(upstream, "_TLS", None)
        with pytest.raises(ssl.SSLCertVerificationError):
            await pool.post(url, b"{}", {"Authorization": "Bearer k"}, **T)
        # Trusting it (as the system would a real CA's): the request goes through TLS.
        monkeypatch.setattr(upstream, "_TLS", ssl.create_default_context(cafile=cert))
        for _ in range(2):  # the second on the kept connection
            resp = await pool.post(url, b"{}", {"Authorization": "Bearer k"}, **T)
            assert resp.status == 200
            assert await resp.read() == b'{"path": "/v1/chat/completions", "auth": "Bearer k"}'
    finally:
        await pool.aclose()
        await runner.cleanup()
