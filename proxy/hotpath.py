"""Dispatching the forwarding routes without FastAPI's router (pure ASGI).

The five forwarding endpoints take a `Request` and nothing else, so FastAPI's
route matching, dependency solving and per-request exit stacks buy them
nothing but CPU on the hottest path. `HotPath` sends ``POST`` requests for those
paths straight to the endpoint functions; everything else goes on to FastAPI.
The same endpoints stay declared on the FastAPI router, so the OpenAPI
document (and schemathesis) still describes them. Errors are handled as the
app's exception handlers would: an `ApiError` becomes its envelope, anything
else a logged 500 envelope; a body over the limit is left to `wire.limits.BodyLimit`.

`ProxyApp` goes one step further out: those requests skip FastAPI's and Starlette's own
layers too (server errors, telemetry, FastAPI's body limit, the exception middleware,
about 10% of the proxy's CPU per request under ``wrk -c1``). They take a lane of their
own: the app's user middleware (Guard, API keys, body limit, HotPath), inside
Starlette's ServerErrorMiddleware with the app's 500 handler, so a failure still leaves
as an OpenAI error envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.errors import ProxyError
from proxy.metrics import Metrics
from wire.errors import PROXY, ApiError
from wire.limits import BodyTooLarge

log = logging.getLogger("proxy")

Endpoint = Callable[[Request], Awaitable[Response]]


class HotPath:
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
        await response(scope, receive, send)


class ProxyApp(FastAPI):
    """FastAPI whose ``POST`` requests to `hot_paths` take the lane described above.

    Set `hot_paths` after the middleware and exception handlers are in place; the lane
    is built at the first such request."""

    hot_paths: frozenset[str] = frozenset()
    _lane: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in self.hot_paths
        ):
            scope["app"] = self
            if self._lane is None:
                self._lane = self._build_lane()
            await self._lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _build_lane(self) -> ASGIApp:
        app: ASGIApp = super().__call__  # reached by nothing HotPath serves
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        handler = self.exception_handlers.get(Exception) or self.exception_handlers.get(500)
        return ServerErrorMiddleware(app, handler=handler, debug=self.debug)
