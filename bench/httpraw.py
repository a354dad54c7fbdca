"""A minimal asyncio HTTP/1.1 client that timestamps what arrives, for the benchmarks.

Why not httpx or aiohttp: the numbers wanted here are when each byte arrived
(first byte, each server-sent event), and a general client adds its own buffering
and CPU on a 2-core machine. This one writes the request, then timestamps every
``read()`` with ``time.monotonic_ns()`` and feeds an incremental parser
(Content-Length, chunked, or read-to-close bodies; SSE events split on a blank line).

``Connection.request`` blocks (awaits) until the whole response has arrived; it is
cancellable; it raises ``HttpError`` for a malformed response or a closed
connection and ``TimeoutError`` past ``max_wait`` seconds. Only for loopback
benchmarking: no TLS, no redirects, no proxies.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class HttpError(Exception):
    """The server closed the connection early or sent something that is not HTTP/1.1."""


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sent_ns: int = 0
    """When the last byte of the request was written."""
    first_byte_ns: int = 0
    """When the first byte of the response (status line) arrived."""
    headers_ns: int = 0
    done_ns: int = 0
    events: list[tuple[int, bytes]] = field(default_factory=list)
    """Server-sent events: (arrival time, the event's text without the blank line)."""

    def json(self) -> object:
        return json.loads(self.body)

    @property
    def latency_ns(self) -> int:
        return self.done_ns - self.sent_ns


class _Parser:
    """Incremental HTTP/1.1 response parser. `feed` returns True once the response is complete."""

    def __init__(self, resp: Response, head_only: bool = False, on_event=None) -> None:
        self.on_event = on_event
        self.resp = resp
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0
        self.body = bytearray()
        self.sse = False
        self.sse_buf = bytearray()
        self.head_only = head_only

    def feed(self, data: bytes, now: int) -> bool:
        if not self.resp.first_byte_ns:
            self.resp.first_byte_ns = now
        self.buf += data
        while True:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return False
                lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                del self.buf[: end + 4]
                try:
                    _version, status, *_ = lines[0].split(" ", 2)
                    self.resp.status = int(status)
                except ValueError as exc:
                    raise HttpError(f"bad status line {lines[0]!r}") from exc
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    self.resp.headers[name.strip().lower()] = value.strip()
                self.resp.headers_ns = now
                self.sse = self.resp.headers.get("content-type", "").startswith("text/event-stream")
                if (
                    self.head_only
                    or self.resp.status in (204, 304)
                    or 100 <= self.resp.status < 200
                ):
                    self.state = "done"
                elif "chunked" in self.resp.headers.get("transfer-encoding", "").lower():
                    self.state = "chunk-size"
                elif "content-length" in self.resp.headers:
                    self.remaining = int(self.resp.headers["content-length"])
                    self.state = "length"
                else:
                    self.state = "close"
            elif self.state == "length":
                take = min(self.remaining, len(self.buf))
                self._body(bytes(self.buf[:take]), now)
                del self.buf[:take]
                self.remaining -= take
                if self.remaining:
                    return False
                self.state = "done"
            elif self.state == "chunk-size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return False
                size_text = bytes(self.buf[:end]).split(b";", 1)[0].strip()
                del self.buf[: end + 2]
                try:
                    self.remaining = int(size_text, 16)
                except ValueError as exc:
                    raise HttpError(f"bad chunk size {size_text!r}") from exc
                self.state = "chunk-data" if self.remaining else "trailer"
            elif self.state == "chunk-data":
                take = min(self.remaining, len(self.buf))
                if take:
                    self._body(bytes(self.buf[:take]), now)
                    del self.buf[:take]
                    self.remaining -= take
                if self.remaining:
                    return False
                self.state = "chunk-end"
            elif self.state == "chunk-end":
                if len(self.buf) < 2:
                    return False
                del self.buf[:2]
                self.state = "chunk-size"
            elif self.state == "trailer":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return False
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                if not line:
                    self.state = "done"
            elif self.state == "close":
                self._body(bytes(self.buf), now)
                self.buf.clear()
                return False
            if self.state == "done":
                self.resp.done_ns = now
                self.resp.body = bytes(self.body)
                return True

    def _body(self, data: bytes, now: int) -> None:
        self.body += data
        if not self.sse:
            return
        self.sse_buf += data.replace(b"\r\n", b"\n")
        while True:
            end = self.sse_buf.find(b"\n\n")
            if end < 0:
                return
            event = bytes(self.sse_buf[:end])
            self.resp.events.append((now, event))
            del self.sse_buf[: end + 2]
            if self.on_event is not None:
                self.on_event(now, event)

    def eof(self, now: int) -> None:
        if self.state == "close":
            self.state = "done"
            self.resp.done_ns = now
            self.resp.body = bytes(self.body)
        elif self.state != "done":
            raise HttpError(f"connection closed mid-response (state {self.state})")


class Connection:
    """One keep-alive connection. Not safe for concurrent requests: one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        max_wait: float | None = 600.0,
        on_event: Callable[[int, bytes], None] | None = None,
    ) -> Response:
        """Send one request and read the whole response. Reopens a closed connection first.

        `on_event(arrival_ns, event_text)` is called for each server-sent event as it
        completes, so an endless stream (``max_wait=None``) can be followed until cancelled.
        """
        if self.writer is None or self.writer.is_closing():
            await self.open()
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        raw = head.encode() + b"\r\n" + (body or b"")
        resp = Response()
        parser = _Parser(resp, head_only=method == "HEAD", on_event=on_event)

        async def _read() -> None:
            assert self.reader is not None
            while True:
                data = await self.reader.read(65536)
                now = time.monotonic_ns()
                if not data:
                    parser.eof(now)
                    await self.close()
                    return
                if parser.feed(data, now):
                    return

        self.writer.write(raw)
        resp.sent_ns = time.monotonic_ns()
        try:
            await asyncio.wait_for(_read(), max_wait)
        except BaseException:
            await self.close()
            raise
        if resp.headers.get("connection", "").lower() == "close":
            await self.close()
        return resp


async def request_once(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    max_wait: float | None = 600.0,
) -> Response:
    """One request on a fresh connection, closed afterwards."""
    conn = Connection(host, port)
    try:
        return await conn.request(method, path, body, headers, max_wait)
    finally:
        await conn.close()


def parse_sse(event: bytes) -> tuple[str, str]:
    """(event name, data) of one server-sent event; the name defaults to 'message'."""
    name, data = "message", []
    for line in event.decode("utf-8", errors="replace").split("\n"):
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    return name, "\n".join(data)


class EventFollower:
    """Follows an SSE endpoint in the background and keeps (wall-clock ns, name, data) tuples.

    ``start()`` returns once the response headers arrived (or raises HttpError on a
    non-200 answer); ``stop()`` cancels the reader and closes the connection.
    """

    def __init__(
        self, host: str, port: int, path: str, headers: dict[str, str] | None = None
    ) -> None:
        self.host, self.port, self.path, self.headers = host, port, path, headers or {}
        self.events: list[tuple[int, str, str]] = []
        self._conn = Connection(host, port)
        self._task: asyncio.Task | None = None
        self._opened = asyncio.Event()

    def _on(self, _arrival: int, raw: bytes) -> None:
        self._opened.set()
        name, data = parse_sse(raw)
        if data or name != "message":
            self.events.append((time.time_ns(), name, data))

    async def start(self, wait: float = 10.0) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._conn.request(
                "GET",
                self.path,
                None,
                {**self.headers, "Accept": "text/event-stream"},
                None,
                self._on,
            )
        )
        waiter = asyncio.ensure_future(self._opened.wait())
        done, _ = await asyncio.wait(
            {self._task, waiter}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if self._task in done:
            resp = self._task.result()
            raise HttpError(f"{self.path} answered {resp.status}: {resp.body[:300]!r}")
        if not done:
            await self.stop()
            raise HttpError(f"{self.path} sent no event within {wait}s")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, HttpError, OSError):
                pass
        await self._conn.close()

    def named(self, name: str) -> list[tuple[int, dict]]:
        """(wall ns, decoded JSON) of the events called `name` so far."""
        out = []
        for at, n, data in self.events:
            if n == name:
                try:
                    out.append((at, json.loads(data)))
                except ValueError:
                    continue
        return out
