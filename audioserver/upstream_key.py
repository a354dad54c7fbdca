"""`UpstreamKey`: the audio server answers only the holder of its upstream key, but for
``GET /health``.

The manager makes a new key whenever it launches the server and passes it in
`wire.model_server.AUDIO_API_KEY_ENV`; the proxy sends it as ``Authorization: Bearer
<key>``. Any other request without it (every path and method, ``/docs`` and unknown paths
included, before routing) gets the 401 envelope of `audioserver.errors.MissingUpstreamKey`.
``GET /health`` is open: it tells only whether the model is loaded (the contract,
`wire.model_server.AudioHealth`). Without a key configured everything is open (a server
run by hand). Pure ASGI (no `BaseHTTPMiddleware`: it would hide client disconnects from
the streamed answers).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from audioserver.errors import MissingUpstreamKey
from wire.errors import MODEL_SERVER

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN = ("GET", "/health")
"""The one request answered without the key."""


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class UpstreamKey:
    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.key = _digest(key.encode()) if key else None

    def _valid(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                scheme, _, token = bytes(value).partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    _digest(token.strip()), self.key or b""
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.key is None
            or scope["type"] not in ("http", "websocket")
            or (scope["type"] == "http" and (scope["method"], scope["path"]) == OPEN)
            or self._valid(scope)
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await MissingUpstreamKey().send(send, MODEL_SERVER)
