"""*Utility*: `UpstreamKey`, the ASGI middleware with which homelab-ai's own model servers
(the image server, the audio server) answer only the holder of their upstream key.

The manager makes a new key whenever it launches a server and passes it in the type's
variable (`wire.model_server.UPSTREAM_KEY_ENV`); the proxy sends it as
``Authorization: Bearer <key>``. Any request without it (every path and method, ``/docs``,
``/openapi.json`` and unknown paths included, before routing) but the `open` ones gets the
server's 401 envelope (`refusal`, with its own ``WWW-Authenticate``). Without a key
configured everything is open (a server run by hand). Keys are compared by their SHA-256
digests in constant time. Pure ASGI (no ``BaseHTTPMiddleware``: it would hide client
disconnects from streamed answers).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from wire.errors import ApiError, Source
from wire.http_server import trust

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class UpstreamKey:
    """`refusal()` makes the 401 error; `open`: (method, path) pairs answered without the
    key (the audio server's ``GET /health``)."""

    def __init__(
        self,
        app: ASGIApp,
        key: str | None,
        *,
        refusal: Callable[[], ApiError],
        source: Source,
        open: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.app = app
        self.key = _digest(key.encode()) if key else None
        self.refusal, self.source = refusal, source
        self.open = frozenset(open)

    def _valid(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                scheme, _, token = bytes(value).partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    _digest(token.strip()), self.key or b""
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] not in ("http", "websocket") or self._valid(scope):
            trust(scope)  # the key holder's connection is shed last (wire.http_server)
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and (scope["method"], scope["path"]) in self.open:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.refusal().send(send, self.source)
