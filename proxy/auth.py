"""API-key check as pure ASGI middleware (no BaseHTTPMiddleware: it hides disconnects).

With keys configured, every path under ``/v1/`` and ``/stream/`` plus ``/api/events``,
``/rpc``, ``/mcp`` and ``/metrics`` needs ``Authorization: Bearer <key>``; anything else
(the UI page, static files, image URLs, health) is open. Without keys everything is open.
A refusal is a 401 OpenAI envelope that the openai SDK raises as
``AuthenticationError``; on ``/mcp`` it is a JSON-RPC error (the envelope in its
``data``), which MCP clients show as the error. A request that proved no key (the
proxy is open, or the path needs none) gets its error messages redacted: no internal
URLs, no model server log lines (`proxy.errors.redact`); ``request.state.keyed`` says
which.
"""

from __future__ import annotations

import hmac

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import KEYLESS, AuthenticationFailed
from wire.errors import PROXY, send_json

PROTECTED_PREFIXES = ("/v1/", "/api/", "/stream/")
PROTECTED_PATHS = ("/metrics", "/mcp", "/rpc")


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES) or path in PROTECTED_PATHS


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    def _valid(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                token = token.strip()
                # Compare against every key so timing does not tell which one matched.
                ok = False
                for key in self.keys:
                    ok |= hmac.compare_digest(token, key)
                return ok
        return False

    def has_key(self, scope: Scope) -> bool:
        """The request proved a key (always False when the proxy is open)."""
        return bool(self.keys) and self._valid(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        keyed = self.has_key(scope)
        if self.keys and is_protected(scope["path"]) and not keyed:
            err = AuthenticationFailed(
                "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
            if scope["path"] == "/mcp":
                await _send_rpc_refusal(send, err)
            else:
                await err.send(send)
            return
        scope.setdefault("state", {})["keyed"] = keyed
        token = KEYLESS.set(not keyed)
        try:
            await self.app(scope, receive, send)
        finally:
            KEYLESS.reset(token)


async def _send_rpc_refusal(send: Send, err: AuthenticationFailed) -> None:
    """The 401 as a JSON-RPC error (MCP clients show its message), the envelope in `data`."""
    rpc = {"code": -32001, "message": err.message, "data": err.envelope(PROXY)["error"]}
    body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": rpc})
    await send_json(send, err.status, body, err.headers)
