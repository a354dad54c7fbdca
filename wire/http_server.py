"""The one HTTP server of every program (proxy, manager, image server, audio server):
uvicorn (uvloop, httptools) with its protocol wrapped, so that a client that is slow or
silent on purpose cannot hold the door.

`ConnectionLimits` are the deadlines and caps; `GuardedProtocol` (a subclass of
uvicorn's httptools protocol) applies them; `config` makes the `uvicorn.Config` each
program runs. docs/security.md lists every deadline and cap with its defaults, and
docs/benchmarks.md why uvicorn (and not granian, hypercorn or a protocol of our own).

What a connection may do:

- **Headers in time.** A connection that sends nothing is closed after `keep_alive`
  seconds, its first request included (uvicorn alone waits forever for a first request).
  Once a request's first byte is in, its headers must be complete within
  `header_timeout` seconds, however the bytes trickle (uvicorn's own idle timer is
  reset by every byte); a late one gets a 408 and the connection is closed.
- **A body at a rate.** `body_grace` seconds after its headers, a body still coming
  must have averaged `min_body_rate` bytes a second, and is checked again every second;
  a slower one gets a 408 and is closed (the app sees the client disconnect). A body the
  app is not reading (uvicorn paused the socket) is never counted against the client.
- **Connections per address.** At most `per_address` connections from one client
  address; the next gets a 429 and is closed at once.
- **Trusted first.** At most `max_connections` in all. When a new connection would go
  over, the oldest connection that has not yet made a request the app trusted (one that
  carried a valid key: the app calls `trust`) is closed to make room; when every
  connection is trusted, the new one gets a 503 and is closed. So a client with a key
  keeps its answers while hundreds of keyless or silent sockets come and go.

The common path costs nothing extra per request: timers are armed only when a
request's headers or body do not arrive in the read that began them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp, Scope
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

CONNECTION_SCOPE_KEY = "homelab.connection"
"""The ASGI scope key under which a request finds its connection's `Trust` (see `trust`)."""


class Trust:
    """What a request can know of its connection: whether a request on it carried a
    valid key (set by `trust`), whether it is lost, and the one callback to run when it
    is lost (`on_lost`: `wire.disconnect.watch_disconnect` cancels its work from there,
    without a task reading ``receive``). Its own object, so that a scope kept by the app
    holds no reference to the protocol."""

    __slots__ = ("trusted", "lost", "on_lost")

    def __init__(self) -> None:
        self.trusted = False
        self.lost = False
        self.on_lost: Callable[[], None] | None = None

    def connection_lost(self) -> None:
        self.lost = True
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines (seconds) and caps of one server's connections (the module's doc)."""

    keep_alive: float = 5.0
    header_timeout: float = 10.0
    body_grace: float = 10.0
    min_body_rate: int = 1024
    per_address: int = 128
    max_connections: int = 2048

    def __post_init__(self) -> None:
        for name in ("keep_alive", "header_timeout", "body_grace"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.min_body_rate < 0 or self.per_address < 1 or self.max_connections < 1:
            raise ValueError("min_body_rate >= 0, per_address >= 1, max_connections >= 1")


def _answer(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer with an OpenAI error envelope, closing the connection."""
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    ).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


HEADERS_LATE = _answer(
    408, "Request Timeout", "request_timeout", "The request's headers did not arrive in time."
)
BODY_SLOW = _answer(
    408, "Request Timeout", "request_timeout", "The request's body arrived too slowly."
)
TOO_MANY_FROM_ADDRESS = _answer(
    429, "Too Many Requests", "too_many_connections",
    "Too many connections from this address; close some and retry.",
)  # fmt: skip
SERVER_FULL = _answer(
    503, "Service Unavailable", "too_many_connections",
    "The server has too many connections; retry shortly.",
)  # fmt: skip


class _Registry:
    """Every open connection of one server, oldest first, and the count per address."""

    def __init__(self) -> None:
        self.open: OrderedDict[GuardedProtocol, None] = OrderedDict()
        self.per_address: dict[str, int] = {}

    def admit(self, conn: GuardedProtocol, limits: ConnectionLimits) -> bytes | None:
        """Register `conn`; or the answer that refuses it (it is then not registered)."""
        address = conn.address
        if self.per_address.get(address, 0) >= limits.per_address:
            return TOO_MANY_FROM_ADDRESS
        if len(self.open) >= limits.max_connections:
            victim = next((c for c in self.open if not c.trust.trusted), None)
            if victim is None:
                return SERVER_FULL
            victim.shed()
        self.open[conn] = None
        self.per_address[address] = self.per_address.get(address, 0) + 1
        return None

    def leave(self, conn: GuardedProtocol) -> None:
        if self.open.pop(conn, False) is None:
            left = self.per_address[conn.address] - 1
            if left:
                self.per_address[conn.address] = left
            else:
                del self.per_address[conn.address]


_CHECKED_MAX = 1024
_checked: set[tuple[bytes, bytes]] = set()
"""Answer header pairs already found clean by uvicorn's checks (at most `_CHECKED_MAX`,
emptied when full): the security headers, content types, ``X-Homelab-Served-By``."""


class _Cycle(RequestResponseCycle):
    """uvicorn 0.54.0's request-response cycle, its answer's headers each checked once per
    process rather than once per answer. uvicorn runs two regular expressions over every
    header name and value of every answer; over the proxy's eight or so (the CSP among
    them) that was about 5% of its instructions per request. The start of the answer is
    uvicorn's own code but for that check; everything else is uvicorn's."""

    async def send(self, message: Any) -> None:
        if message["type"] != "http.response.start" or self.response_started:
            await super().send(message)
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        headers = self.default_headers + list(message.get("headers", []))
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status_code,
            )
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for name, value in headers:
            pair = (name, value)
            if pair not in _checked:
                if HEADER_RE.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                if len(_checked) >= _CHECKED_MAX:
                    _checked.clear()
                _checked.add(pair)
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
            content.extend([name, b": ", value, b"\r\n"])
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status_code not in (204, 304)
        ):
            self.chunked_encoding = True  # neither content-length nor transfer-encoding
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `ConnectionLimits` applied (the module's doc).
    `config` makes a subclass per server, with its own `limits` and `registry`."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    registry: ClassVar[_Registry] = _Registry()

    address = ""
    trust: Trust
    """A request on this connection was trusted by the app (`trust`): never shed."""
    registered = False
    in_headers = False
    """A request's first byte is in, its headers are not."""
    headers_since = 0.0
    in_body = False
    body_since = 0.0
    body_bytes = 0
    timer: asyncio.TimerHandle | None = None
    """The header or body deadline now armed (at most one is ever needed)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.trust = Trust()
        self.address = self.client[0] if self.client else ""
        refusal = self.registry.admit(self, self.limits)
        if refusal is not None:
            self._close_with(refusal)
            return
        self.registered = True
        # uvicorn arms its idle timer only after an answer: a silent first connection
        # would be kept forever.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.registered:
            self.registered = False
            self.registry.leave(self)
        self._disarm()
        super().connection_lost(exc)  # the request's ``receive`` says http.disconnect
        if hasattr(self, "trust"):
            self.trust.connection_lost()  # and its watcher hears it at the same moment

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.timer is None and (self.in_headers or self.in_body) and self.parser is not None:
            if self.in_headers:
                self._arm(self.headers_since + self.limits.header_timeout, self._headers_late)
            else:
                self._arm(self.body_since + self.limits.body_grace, self._check_body)

    # parser callbacks (uvicorn's, extended)
    def on_message_begin(self) -> None:
        self.in_headers = True
        self.headers_since = self.loop.time()
        super().on_message_begin()
        self.scope[CONNECTION_SCOPE_KEY] = self.trust  # type: ignore[literal-required]

    def on_headers_complete(self) -> None:
        self.in_headers = False
        if self.timer is not None:
            self._disarm()
        self.in_body = True
        self.body_since = self.loop.time()
        self.body_bytes = 0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            cycle.__class__ = _Cycle  # made by uvicorn just now; its task has not run yet

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.in_body = False
        if self.timer is not None:
            self._disarm()
        super().on_message_complete()

    # deadlines
    def _arm(self, when: float, callback: Any) -> None:
        self.timer = self.loop.call_at(when, callback)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _headers_late(self) -> None:
        self.timer = None
        if self.in_headers:
            self._close_with(HEADERS_LATE)

    def _check_body(self) -> None:
        self.timer = None
        if not self.in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the app is not reading: not the client's fault
            self.body_since, self.body_bytes = now, 0
        elif self.body_bytes < self.limits.min_body_rate * (now - self.body_since):
            started = self.cycle is not None and self.cycle.response_started
            self._close_with(b"" if started else BODY_SLOW)
            return
        self._arm(now + 1.0, self._check_body)

    def _close_with(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            if answer:
                self.transport.write(answer)
            self.transport.close()

    def shed(self) -> None:
        """Close this connection to make room for a newer one (it was not trusted)."""
        if self.registered:
            self.registered = False
            self.registry.leave(self)
        self._close_with(b"" if self.in_body else SERVER_FULL)


def trust(scope: Scope) -> None:
    """The request in `scope` carried a valid key: its connection is never shed for a
    newer one (`ConnectionLimits.max_connections`). A no-op outside `GuardedProtocol`."""
    state = scope.get(CONNECTION_SCOPE_KEY)
    if state is not None:
        state.trusted = True


def config(
    app: ASGIApp, host: str, port: int, limits: ConnectionLimits, **uvicorn_options: Any
) -> uvicorn.Config:
    """The `uvicorn.Config` of a program: uvloop, httptools with `GuardedProtocol` under
    `limits`, no proxy-header rewriting (nothing of ours sits behind another proxy; the
    socket's address is the client's), no server header."""
    protocol = type(
        "GuardedProtocol", (GuardedProtocol,), {"limits": limits, "registry": _Registry()}
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=max(1, round(limits.keep_alive)),
        **uvicorn_options,
    )


MODEL_SERVER_LIMITS = ConnectionLimits(per_address=64, max_connections=256)
"""Our model servers' (image, audio) clients are the proxy and the manager's readiness
probe: few connections (docs/security.md)."""


class NoHealthChecks(logging.Filter):
    """Drops uvicorn access-log records of `GET /health` (the manager asks it every few
    tens of milliseconds while a model loads; the log is for what clients did)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) >= 3 and args[2] == "/health")


def serve_model_server(app: ASGIApp, host: str, port: int, log_level: str) -> None:
    """Run one of our model servers (imageserver, audioserver) until SIGTERM: logging to
    stderr without the health checks, `MODEL_SERVER_LIMITS`, 5 s to finish on shutdown."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("uvicorn.access").addFilter(NoHealthChecks())
    uvicorn.Server(
        config(
            app,
            host,
            port,
            MODEL_SERVER_LIMITS,
            log_level=log_level,
            timeout_graceful_shutdown=5,
        )
    ).run()
