"""The proxy's FastAPI application: `create_app(settings, manager_client, http_client)`.

The lifespan builds one `aiohttp.ClientSession` per process (unless one is
handed in; then the caller owns and closes it), the `ManagerClient`, the image
store and the event follower, and tears them down in reverse order.
Every error, including unknown routes, validation errors and unexpected
exceptions, leaves as an OpenAI error envelope; never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from proxy import routes_openai, routes_ops
from proxy.auth import ApiKeyMiddleware
from proxy.context import ProxyContext
from proxy.errors import InvalidRequest, NotFound, ProxyError, error_response
from proxy.events import follow_events
from proxy.hotpath import HotPath
from proxy.images import ImageStore
from proxy.manager_client import ManagerClient
from proxy.metrics import Metrics
from proxy.settings import ProxySettings
from proxy.web import mount_ui, proxy_version

log = logging.getLogger("proxy")


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "other")


def create_app(
    settings: ProxySettings | None = None,
    manager_client: ManagerClient | None = None,
    http_client: aiohttp.ClientSession | None = None,
) -> FastAPI:
    """Build the proxy. `manager_client` / `http_client` let tests hand in their own."""
    settings = settings or ProxySettings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        http = http_client or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
            auto_decompress=False,
        )
        manager = manager_client or ManagerClient(
            settings.manager_url,
            settings.manager_token.get_secret_value(),
            http,
            models_ttl=settings.models_cache_ttl,
            connect_timeout=settings.connect_timeout,
            lease_linger=settings.lease_linger,
        )
        with contextlib.ExitStack() as stack:
            image_dir = settings.image_dir or stack.enter_context(
                tempfile.TemporaryDirectory(prefix="homelab-proxy-images-")
            )
            ctx = ProxyContext(
                settings=settings,
                manager=manager,
                http=http,
                metrics=metrics,
                images=ImageStore(image_dir, settings.image_url_ttl),
                upstream_timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=settings.connect_timeout,
                    sock_read=settings.upstream_timeout,
                ),
            )
            app.state.ctx = ctx
            follower = asyncio.create_task(follow_events(ctx), name="manager-events")
            try:
                yield
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
                await manager.aclose()
                if http_client is None:
                    await http.close()

    app = FastAPI(
        title="homelab-ai proxy",
        version=proxy_version(),
        description="One OpenAI-compatible endpoint for every model of the home lab. See docs/api.md.",
        lifespan=lifespan,
    )
    app.include_router(routes_openai.router)
    app.include_router(routes_ops.router)
    mount_ui(app, settings)
    app.add_middleware(HotPath, routes=routes_openai.FORWARDING, metrics=metrics)
    app.add_middleware(ApiKeyMiddleware, keys=[k.get_secret_value() for k in settings.api_keys])

    def reply(request: Request, exc: ProxyError) -> Response:
        metrics.requests.labels(_route_label(request), "unknown", str(exc.status)).inc()
        return error_response(exc)

    @app.exception_handler(ProxyError)
    async def _proxy_error(request: Request, exc: ProxyError) -> Response:
        return reply(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err: ProxyError = NotFound(f"No such endpoint: {request.method} {request.url.path}")
        else:
            err = ProxyError(
                str(exc.detail),
                status=exc.status_code,
                type="invalid_request_error" if exc.status_code < 500 else "server_error",
                code="method_not_allowed" if exc.status_code == 405 else None,
                headers=dict(exc.headers or {}),
            )
        return reply(request, err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        return reply(
            request,
            InvalidRequest(first.get("msg", "Invalid request"), param=".".join(loc) or None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return reply(request, ProxyError("Internal error in the proxy; see its log."))

    return app
