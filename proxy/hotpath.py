"""The proxy's front: its own ASGI middleware, composed by hand, around FastAPI.

`ProxyApp` is a FastAPI app whose ASGI entry point runs `front`, a chain of plain ASGI
middleware that `proxy.app.create_app` composes (outermost first): `ServerErrors`
(a 500 OpenAI envelope for anything that escapes), `proxy.guard.Guard`,
`proxy.auth.ApiKeyMiddleware`, `wire.limits.BodyLimit` and `HotPath`. The innermost
layer is `ProxyApp.fastapi`: FastAPI itself (routing, dependencies, its own error
middleware and the app's exception handlers). Only public interfaces meet here: the
ASGI callable of each layer, and FastAPI's own ``__call__``.

`HotPath` sends ``POST`` requests for the forwarding paths (`proxy.routes_openai`'s
one route table) straight to their endpoint functions: they take a `Request` and
nothing else, so FastAPI's route matching, dependency solving, per-request exit
stacks and its own middleware (server errors, telemetry, body limit, exception
middleware: about 10% of the proxy's CPU per request under ``wrk -c1``) buy them
nothing. Everything else goes on to FastAPI. The same table declares those routes
on FastAPI's router, so the OpenAPI document (and schemathesis) still describes them.
Errors are handled as the app's exception handlers would: an `ApiError` becomes its
envelope, anything else a logged 500 envelope; a body over the limit is left to
`wire.limits.BodyLimit`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import ProxyError
from proxy.metrics import Metrics
from wire.errors import PROXY, ApiError
from wire.limits import BodyTooLarge

log = logging.getLogger("proxy")

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Response | Awaitable[Response]]


class HotPath:
    """``POST`` to a path of `routes` -> its endpoint; anything else -> `app`.

    `routes` is read on every request (tests may patch an entry)."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, Endpoint], metrics: Metrics) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            response = await endpoint(Request(scope, receive))
        except ClientDisconnect:
            return  # the client left while sending its body: nobody to answer
        except BodyTooLarge:
            raise  # `wire.limits.BodyLimit`, around this middleware, answers 413
        except ApiError as exc:
            self.metrics.requests.labels(scope["path"], "unknown", str(exc.status)).inc()
            await exc.send(send, PROXY)
            return
        except Exception:
            log.exception("unexpected error on POST %s", scope["path"])
            self.metrics.requests.labels(scope["path"], "unknown", "500").inc()
            await ProxyError("Internal error in the proxy; see its log.").send(send)
            return
        await response(scope, receive, send)  # failures: `ServerErrors`, further out


class ServerErrors:
    """Outermost: an exception that escapes before the answer began is answered by
    `handler` (the app's handler for `Exception`: it logs, counts and returns the 500
    envelope). The exception is raised on either way, so the server sees it; one that
    escapes after an answer began was FastAPI's to answer, and it has."""

    def __init__(self, app: ASGIApp, handler: ErrorHandler) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if not started:
                answer = self.handler(Request(scope), exc)
                response = await answer if inspect.isawaitable(answer) else answer
                await response(scope, receive, send)
            raise


class ProxyApp(FastAPI):
    """FastAPI behind `front` (set it once the routes and exception handlers are in
    place; until then requests go to FastAPI alone)."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self  # as Starlette sets it: endpoints reach `request.app.state`
        if self.front is None:
            await super().__call__(scope, receive, send)
        else:
            await self.front(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own ASGI entry point: the innermost layer of `front`."""
        await super().__call__(scope, receive, send)
