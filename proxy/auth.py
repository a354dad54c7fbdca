"""API-key check as pure ASGI middleware (no BaseHTTPMiddleware: it hides disconnects).

With keys configured, every path under ``/v1/`` and ``/stream/`` plus ``/api/events``,
``/rpc``, ``/mcp`` and ``/metrics`` needs ``Authorization: Bearer <key>``; anything else
(the UI page, static files, image URLs, health) is open. Without keys everything is open.
A refusal is a 401 OpenAI envelope that the openai SDK raises as
``AuthenticationError``; on ``/mcp`` it is a JSON-RPC error (the envelope in its
``data``), which MCP clients show as the error. A request that proved no key (the
proxy is open, or the path needs none) gets its error messages redacted: no internal
URLs, no model server log lines (`proxy.errors.redact`); ``request.state.keyed`` says
which, and ``request.state.principal`` (and `proxy.keys.PRINCIPAL`) whose key it is
(`proxy.keys`).
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import KEYLESS, AuthenticationFailed
from proxy.keys import NOBODY, OPEN, PRINCIPAL, KeyRing, Principal
from wire.errors import PROXY, send_json
from wire.http_server import trust

PROTECTED_PREFIXES = ("/v1/", "/api/", "/stream/")
PROTECTED_PATHS = ("/metrics", "/mcp", "/rpc")


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES) or path in PROTECTED_PATHS


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, ring: KeyRing) -> None:
        self.app = app
        self.ring = ring
        """Replaced in place (`KeyRing.replace`) when the key file changes."""

    def principal(self, scope: Scope) -> Principal | None:
        """Whose key the request carries: `OPEN` when the proxy is open, None when it
        carries no valid key."""
        if self.ring.open:
            return OPEN
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return None
                return self.ring.lookup(token.strip())
        return None

    def has_key(self, scope: Scope) -> bool:
        """The request proved a key (always False when the proxy is open)."""
        return not self.ring.open and self.principal(scope) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal = self.principal(scope)
        keyed = principal is not None and not self.ring.open
        if principal is None and is_protected(scope["path"]):
            err = AuthenticationFailed(
                "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
            if scope["path"] == "/mcp":
                await _send_rpc_refusal(send, err)
            else:
                await err.send(send)
            return
        if principal is not None:  # a valid key, or an open proxy: never shed first
            trust(scope)
        state = scope.setdefault("state", {})
        state["keyed"] = keyed
        # An open path (the page, images, health) without a valid key acts for nobody:
        # it owns nothing and sees nothing that is owned.
        principal = principal if principal is not None else NOBODY
        state["principal"] = principal
        token = KEYLESS.set(not keyed)
        who = PRINCIPAL.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            PRINCIPAL.reset(who)
            KEYLESS.reset(token)


async def _send_rpc_refusal(send: Send, err: AuthenticationFailed) -> None:
    """The 401 as a JSON-RPC error (MCP clients show its message), the envelope in `data`."""
    rpc = {"code": -32001, "message": err.message, "data": err.envelope(PROXY)["error"]}
    body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": rpc})
    await send_json(send, err.status, body, err.headers)
