"""`BodyLimit`: the one request-body limit of every program (pure ASGI middleware).

A body over the limit is answered 413 ``request_too_large`` (an OpenAI envelope with
the app's ``source``), in the manager, the proxy and the image server alike:

- a declared ``Content-Length`` over the limit is refused before the app runs (one
  within it is not counted: the HTTP server delivers exactly that many bytes);
- any other body (chunked) is counted as the app reads it: past the limit, the read raises
  `BodyTooLarge` (an ``HTTPException`` 413, so FastAPI's body parsing lets it through
  to the app's handler, `wire.errors.install_error_handlers`); if it escapes the app
  before an answer started, the middleware answers itself.

Responses are not touched (streaming answers pass as they are). Pure ASGI on purpose:
``BaseHTTPMiddleware`` would hide client disconnects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wire.errors import TOO_LARGE_STATUS, RequestTooLarge, Source

log = logging.getLogger("wire.limits")


def too_large(limit: int, what: str = "The request body") -> RequestTooLarge:
    """The 413 ``request_too_large`` error for something over `limit` bytes."""
    return RequestTooLarge(f"{what} is larger than the limit of {limit} bytes.")


class BodyTooLarge(HTTPException):
    """Raised by the counting `receive` once a body passes its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(TOO_LARGE_STATUS, too_large(limit).message)
        self.limit = limit


def content_length(scope: Scope) -> int | None:
    """The declared Content-Length, or None (absent or not a number)."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """Refuse request bodies over `max_bytes` (or `per_path[path]` for that exact path)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        source: Source,
        per_path: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.source: Source = source
        self.per_path = dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        declared = content_length(scope)
        if declared is not None and declared > limit:
            await too_large(limit).send(send, self.source)
            return
        if declared is not None:
            # Within the limit: the HTTP server delivers exactly Content-Length bytes of
            # body (a longer one is not this request's), so there is nothing to count.
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge as exc:
            try:
                await too_large(exc.limit).send(send, self.source)
            except RuntimeError:  # the app had begun its answer: nothing more to say
                log.warning("a body over %s bytes was refused after the answer began", limit)
