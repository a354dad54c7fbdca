"""API-key check as pure ASGI middleware (no BaseHTTPMiddleware: it hides disconnects).

With keys configured, every path under ``/v1/`` plus ``/api/events`` and
``/metrics`` needs ``Authorization: Bearer <key>``; anything else (the UI page,
static files, image URLs, health) is open. Without keys everything is open.
A refusal is a 401 OpenAI envelope that the openai SDK raises as
``AuthenticationError``.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import AuthenticationFailed

PROTECTED_PREFIXES = ("/v1/", "/api/")
PROTECTED_PATHS = ("/metrics",)


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.keys
            and is_protected(scope["path"])
            and not self._valid(scope)
        ):
            err = AuthenticationFailed(
                "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await err.send(send)
            return
        await self.app(scope, receive, send)
