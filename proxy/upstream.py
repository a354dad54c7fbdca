"""A lean HTTP/1.1 client, the proxy's one client for model servers (`proxy.modelcall`
uses it; docs/benchmarks.md, "Upstream client", measures it against aiohttp's).

`UpstreamPool` keeps idle keep-alive connections per (host, port, TLS), ``http://``
(model servers) and ``https://`` (remote endpoints of the proxy's catalogue), built on an asyncio `Protocol` and `httptools.HttpResponseParser` (what uvicorn
parses requests with). It does far less per request than aiohttp's client: one
``transport.write`` of the request, one parser callback per header, no payload
registry or per-request timer objects.

Contract:

- `UpstreamPool.post` sends ``POST <path> HTTP/1.1`` (`UpstreamPool.get` a ``GET``) with
  Host, Content-Length and the given headers, and returns an `UpstreamResponse` once the status line and
  headers are in. The body is read with `UpstreamResponse.read` (whole, or at most
  `limit` bytes) or `UpstreamResponse.iter_chunks` (bytes as they arrive, unbuffered,
  for SSE). Bodies may be Content-Length, chunked, or delimited by the server closing.
- Every transport failure raises something in `UPSTREAM_ERRORS`: a failed
  connect raises the `OSError` of the socket (``ConnectionRefusedError``...); a
  connection lost before the response was complete raises `UpstreamDisconnected`; a
  malformed response raises `UpstreamProtocolError` (both `ConnectionError`s); a
  connect taking longer than `connect_timeout`, or a silence between two reads longer
  than `read_timeout` (aiohttp's ``sock_read``), raises `TimeoutError`.
- A connection returns to the pool as soon as its response is complete on the wire,
  if it is HTTP/1.1 and neither side said ``Connection: close``; `close` drops one
  whose response is not complete (the server then sees the client go, and vLLM aborts
  the generation). Idle connections are closed after `keepalive_timeout` seconds.
- A pooled connection the server has already closed never fails a request: one whose
  transport is closing is dropped, and a reused connection that had been idle for at
  least `stale_after` seconds (1 s) and fails before any byte of the response came is
  replaced by a fresh one (the server's keep-alive timeout closed it while the request
  was on its way, so it never saw it). Any other failure is raised: a server that closes
  a connection it used a moment ago may have read the request, and a POST is not sent
  twice on a guess (`proxy.modelcall` decides what is retried).
- Flow control: a response whose unread body exceeds `HIGH_WATER` bytes pauses
  reading from the socket until the consumer catches up, so memory stays bounded
  whatever a server sends (except `read()` of a whole body, which is asked for).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 1 << 20
"""Unread body bytes of a response above which reading from its socket pauses."""

_Key = tuple[str, int, bool]
"""(host, port, TLS)."""
_TLS: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """The default client TLS context (system CAs, host names checked), made once."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


UPSTREAM_ERRORS = (OSError, TimeoutError)
"""Everything this client raises for a failed exchange (`ConnectionError` and the
socket's other errors are `OSError`s). Translated once, in `proxy.modelcall`."""


class UpstreamProtocolError(ConnectionError):
    """The model server's answer is not valid HTTP/1.1."""


class UpstreamDisconnected(ConnectionError):
    """The model server closed the connection before its answer was complete."""


def set_keepalive(sock: Any) -> None:
    """TCP keepalive on a client socket (probes after 30 s idle, every 10 s, 3 tries), so
    a server that vanished without closing (a GPU PC that lost power, a dropped Wi-Fi
    link) is noticed in about a minute instead of never."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


@lru_cache(maxsize=256)
def _split(url: str) -> tuple[_Key, str, str]:
    """(host, port, TLS), the Host header and the request target of an ``http://`` or
    ``https://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"UpstreamPool speaks http:// and https:// only, not {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host = parts.hostname
    return (host, port, tls), parts.netloc.rpartition("@")[2], target


class Headers(dict[str, str]):
    """Response headers, by lower-case name (lookups take any case); repeated
    headers are joined with ', '."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class UpstreamResponse:
    """One answer: `status` and `headers` are set; the body follows (`read`, `iter_chunks`)."""

    __slots__ = (
        "status",
        "headers",
        "_conn",
        "_chunks",
        "_buffered",
        "_done",
        "_exc",
        "_waiter",
        "_draining",
        "_got_bytes",
        "_headers_done",
    )

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers = Headers()
        self._conn: _Connection | None = conn
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._done = False
        """The whole body is in `_chunks` (or was taken from it)."""
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._draining = False
        """A `read` waits for more than HIGH_WATER: do not pause the socket."""
        self._got_bytes = False
        self._headers_done = False

    @property
    def content_type(self) -> str:
        """The media type of Content-Type, lower case, without parameters
        (``application/octet-stream`` when absent, as aiohttp's)."""
        raw = self.headers.get("content-type")
        if not raw:
            return "application/octet-stream"
        return str(raw).partition(";")[0].strip().lower()

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; with `limit`, at most that many bytes (the first ones)."""
        while not self._done and (limit is None or self._buffered < limit):
            self._draining = True
            self._caught_up()  # paused by a body that came before this read
            try:
                await self._wait()
            finally:
                self._draining = False
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        if limit is not None and len(data) > limit:
            rest = data[limit:]
            data = data[:limit]
            self._chunks = [rest]
            self._buffered = len(rest)
        else:
            self._chunks = []
            self._buffered = 0
        self._caught_up()
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (everything buffered at each step)."""
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._buffered = 0
                self._caught_up()
                yield data
            elif self._done:
                return
            else:
                await self._wait()

    def close(self) -> None:
        """Done with this response: its connection goes back to the pool if the answer
        was complete, else it is dropped. Idempotent; never raises."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abandon(self)

    # -- the connection's side

    async def _wait(self) -> None:
        if self._exc is not None:
            raise self._exc
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None
        if self._exc is not None and not self._chunks:
            raise self._exc

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _caught_up(self) -> None:
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None and not self._done:
            self._exc = exc
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it serves one `UpstreamResponse` at a time."""

    def __init__(self, pool: UpstreamPool, key: _Key) -> None:
        self.pool, self.key = pool, key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: UpstreamResponse | None = None
        self.lost = False
        self.paused = False
        self.reusable = True
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        # per response
        self.read_timeout: float | None = None
        self.last_read = 0.0
        self.read_timer: asyncio.TimerHandle | None = None
        self.interim = False
        self.until_eof = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                set_keepalive(sock)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # nothing was asked: the server misbehaves
            self._drop()
            return
        self.last_read = self.loop.time()
        resp._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, UpstreamProtocolError):
                cause = UpstreamProtocolError(f"invalid HTTP response from upstream: {exc}")
            self._error(cause)
        except httptools.HttpParserError as exc:
            self._error(UpstreamProtocolError(f"invalid HTTP response from upstream: {exc}"))
        except httptools.HttpParserUpgrade:
            self._error(UpstreamProtocolError("unexpected protocol upgrade from upstream"))

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost sorts it out

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._cancel_timers()
        self.pool._forget(self)
        resp = self.resp
        if resp is None:
            return
        self.resp = None
        resp._conn = None
        if resp._headers_done and self.until_eof and exc is None:
            resp._done = True  # a body delimited by the close, now complete
            resp._wake()
            return
        reason = f": {exc}" if exc is not None else ""
        resp._fail(
            UpstreamDisconnected(
                "the server closed the connection before the response was complete" + reason
            )
        )

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        resp = self.resp
        if resp is None:  # more after a complete answer: the connection is not reusable
            raise UpstreamProtocolError("data after the end of the response")
        if resp.headers:
            resp.headers = Headers()
        self.interim = False
        self.until_eof = False

    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.resp
        if resp is None:
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = resp.headers
        known = dict.get(headers, key)  # (lower case already: `Headers`' own methods lower again)
        dict.__setitem__(headers, key, text if known is None else known + ", " + text)

    def on_headers_complete(self) -> None:
        resp = self.resp
        if resp is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True  # 100 Continue & co: the real answer follows
            return
        resp.status = status
        headers = resp.headers  # read with dict's own methods: these names are lower case
        self.until_eof = (
            not dict.__contains__(headers, "content-length")
            and "chunked" not in dict.get(headers, "transfer-encoding", "").lower()
            and status not in (204, 304)
        )
        if self.parser.get_http_version() != "1.1" or "close" in dict.get(
            headers, "connection", ""
        ).lower().replace(" ", "").split(","):
            self.reusable = False
        resp._headers_done = True
        resp._wake()

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is None:
            return
        resp._chunks.append(body)
        resp._buffered += len(body)
        if resp._buffered > HIGH_WATER and not resp._draining and not self.paused:
            self.pause()
        resp._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        resp = self.resp
        if resp is None:
            return
        if not resp._headers_done:
            raise UpstreamProtocolError("a response ended before its headers")
        resp._done = True
        resp._wake()
        self.resp = None
        resp._conn = None
        self._cancel_read_timer()
        if self.reusable and not self.until_eof and self.parser.should_keep_alive():
            self.pool._release(self)
        else:
            self._drop()

    # -- the pool's and the response's side

    def start(self, resp: UpstreamResponse, request: bytes, read_timeout: float | None) -> None:
        """Send `request`; `resp` receives the answer."""
        assert self.transport is not None
        self.resp = resp
        self.read_timeout = read_timeout
        if read_timeout is not None:
            self.last_read = self.loop.time()
            self.read_timer = self.loop.call_at(
                self.last_read + read_timeout, self._check_read_timeout
            )
        self.transport.write(request)

    def abandon(self, resp: UpstreamResponse) -> None:
        """The consumer gave up on `resp` before it was complete: drop the connection."""
        if self.resp is resp:
            self.resp = None
            self._drop()

    def pause(self) -> None:
        if self.transport is not None and not self.lost:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        if self.transport is None or self.lost:
            return
        self.transport.resume_reading()
        if self.read_timeout is not None and self.resp is not None:
            self.last_read = self.loop.time()
            if self.read_timer is None:
                self.read_timer = self.loop.call_at(
                    self.last_read + self.read_timeout, self._check_read_timeout
                )

    def _check_read_timeout(self) -> None:
        self.read_timer = None
        resp, timeout = self.resp, self.read_timeout
        if resp is None or timeout is None or self.paused:
            return  # paused: the consumer is behind, not the server; re-armed on resume
        due = self.last_read + timeout
        if self.loop.time() < due:
            self.read_timer = self.loop.call_at(due, self._check_read_timeout)
            return
        self._error(TimeoutError(f"no data from upstream for {timeout:g} s"))

    def _error(self, exc: BaseException) -> None:
        resp = self.resp
        self.resp = None
        if resp is not None:
            resp._conn = None
            resp._fail(exc)
        self._drop()

    def _cancel_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_read_timer()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _drop(self) -> None:
        self.reusable = False
        self._cancel_timers()
        self.pool._forget(self)
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def usable(self) -> bool:
        return (
            not self.lost
            and self.reusable
            and self.transport is not None
            and not self.transport.is_closing()
        )


class UpstreamPool:
    """Keep-alive connections to model servers, per (host, port); no limit on their number."""

    def __init__(self, *, keepalive_timeout: float = 30.0, stale_after: float = 1.0) -> None:
        """`stale_after`: how long a connection must have been idle for a failure before
        any answer to be taken for the server's keep-alive timeout (and retried). Servers
        close idle connections after seconds (uvicorn's default, and so vLLM's, is 5 s)."""
        self.keepalive_timeout = keepalive_timeout
        self.stale_after = stale_after
        self._idle: dict[_Key, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._closed = False

    async def post(
        self,
        url: str,
        body: bytes | bytearray | memoryview,
        headers: Mapping[str, str],
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> UpstreamResponse:
        """Send `body` to `url` and return the answer once its headers are in."""
        return await self._send("POST", url, body, headers, connect_timeout, read_timeout)

    async def get(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> UpstreamResponse:
        """``GET url``; the answer once its headers are in."""
        return await self._send("GET", url, b"", headers, connect_timeout, read_timeout)

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes | bytearray | memoryview,
        headers: Mapping[str, str],
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> UpstreamResponse:
        if self._closed:
            raise RuntimeError("the UpstreamPool is closed")
        key, host, target = _split(url)
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError(f"invalid character in header {name!r}")
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        request = "".join(lines).encode() + body
        while True:
            conn = self._take(key)
            stale = conn is not None and conn.loop.time() - conn.idle_since >= self.stale_after
            if conn is None:
                conn = await self._connect(key, connect_timeout)
            resp = UpstreamResponse(conn)
            conn.start(resp, request, read_timeout)
            try:
                while not resp._headers_done:
                    await resp._wait()
            except UpstreamDisconnected:
                resp.close()
                if stale and not resp._got_bytes:
                    continue  # closed idle by the server as the request went: never seen
                raise
            except BaseException:
                resp.close()
                raise
            return resp

    async def aclose(self) -> None:
        """Close every connection, idle or busy."""
        self._closed = True
        for conn in list(self._all):
            conn._error(UpstreamDisconnected("the upstream pool was closed"))
        self._idle.clear()
        self._all.clear()

    # -- connections

    def _take(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.usable():
                return conn
            conn._drop()
        return None

    async def _connect(self, key: _Key, connect_timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(connect_timeout):
            host, port, tls = key
            _, conn = await loop.create_connection(
                lambda: _Connection(self, key),
                host,
                port,
                ssl=_tls() if tls else None,
                server_hostname=host if tls else None,
            )
        if self._closed:
            conn._drop()
            raise UpstreamDisconnected("the upstream pool was closed")
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if self._closed or not conn.usable():
            conn._drop()
            return
        if conn.paused:
            conn.resume()
        self._idle.setdefault(conn.key, []).append(conn)
        conn.idle_since = conn.loop.time()
        conn.idle_timer = conn.loop.call_later(self.keepalive_timeout, conn._drop)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
