"""The proxy's FastAPI application: `create_app(settings, manager_client, http_client)`.

The lifespan builds one `aiohttp.ClientSession` per process for the manager (unless one
is handed in; then the caller owns and closes it), the `ManagerClient` (the manager's
HTTP API), the `LeasePool` above it, the `UpstreamPool` that all model traffic travels
on (proxy/upstream.py) and the `ModelCalls` that every caller reaches a model server
through (proxy/modelcall.py), the image store, the event hub (one manager event stream
for every browser) and the MCP session manager (``/mcp``, proxy/mcp/), and tears them
down in reverse order.
Every error, including unknown routes, validation errors and unexpected
exceptions, leaves as an OpenAI error envelope; never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.routing import Route

from proxy import routes_openai, routes_ops, routes_usage
from proxy.audio import AudioStore
from proxy.auth import ApiKeyMiddleware
from proxy.catalogue import Catalogue, HostSpec, load_catalogue
from proxy.context import ProxyContext
from proxy.event_hub import EventHub
from proxy.events import handle_event
from proxy.guard import Guard, default_hosts
from proxy.hosts import Fleet, HostLink
from proxy.hotpath import HotPath, ProxyApp, ServerErrors
from proxy.images import ImageStore
from proxy.jobs import batches as jobs_batches
from proxy.jobs import rpc as jobs_rpc
from proxy.jobs import stream as jobs_stream
from proxy.jobs.dispatcher import Dispatcher
from proxy.jobs.store import AsyncJobStore, JobStore
from proxy.keyfile import KeyFileWatcher, build_ring
from proxy.keys import KeyRing
from proxy.lease_pool import LeasePool
from proxy.limits import Limiter
from proxy.manager_client import ManagerClient
from proxy.mcp.server import McpEndpoint
from proxy.metrics import Metrics
from proxy.modelcall import ModelCalls
from proxy.routing import Router
from proxy.routing import cancel as cancel_task
from proxy.settings import ProxySettings
from proxy.upstream import UpstreamPool, set_keepalive
from proxy.usage import Usage, UsageCollector
from proxy.web import mount_ui, proxy_version
from wire.errors import PROXY, install_error_handlers
from wire.limits import BodyLimit
from wire.private import private_dir, write_private

log = logging.getLogger("proxy")


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "other")


def keepalive_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """A client socket with TCP keepalive (probes after 30 s idle, every 10 s, 3 tries), so a
    manager or model server that vanished without closing (a GPU PC that lost power, a
    dropped Wi-Fi link) is noticed in about a minute instead of never."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    set_keepalive(sock)
    return sock


def _write_usage(path: Path, raw: bytes) -> None:
    try:
        private_dir(path.parent, tighten=False)
        write_private(path, raw)
    except OSError as exc:
        log.error("cannot save the usage counts to %s: %s", path, exc)


async def save_usage(usage: Usage, path: Path, interval: float) -> None:
    """Save the usage counts every `interval` seconds when they changed (until cancelled):
    encoded on the loop, written in a thread."""
    while True:
        await asyncio.sleep(interval)
        if usage.dirty:
            await asyncio.to_thread(_write_usage, path, usage.snapshot())


def build_fleet(
    settings: ProxySettings,
    catalogue: Catalogue,
    http: aiohttp.ClientSession,
    manager_client: ManagerClient | None = None,
) -> Fleet:
    """The hosts of the catalogue (none listed: the one at HOMELAB_MANAGER_URL), each with
    its manager client and lease pool. With several hosts each client fails at once when its
    manager is away (outage window 0): the fleet places the request on another host, or
    waits for one, within HOMELAB_MANAGER_OUTAGE_WINDOW (`proxy.hosts.Fleet.choose`)."""
    specs = list(catalogue.hosts.values()) or [HostSpec(name=catalogue.host)]
    multi = len(specs) > 1
    links: list[HostLink] = []
    for spec in specs:
        if spec.url is None and manager_client is not None:
            client = manager_client
        else:
            client = ManagerClient(
                spec.url or settings.manager_url,
                spec.token or settings.manager_token.get_secret_value(),
                http,
                models_ttl=settings.models_cache_ttl,
                connect_timeout=settings.connect_timeout,
                outage_window=0.0 if multi else settings.manager_outage_window,
                lease_read_timeout=settings.lease_read_timeout,
                events_read_timeout=settings.events_read_timeout,
            )
        links.append(HostLink(spec, client, LeasePool(client, linger=settings.lease_linger)))
    return Fleet(
        links,
        known_path=settings.known_models_path(),
        outage_window=settings.manager_outage_window,
        wake_timeout=settings.wake_timeout,
    )


def create_app(
    settings: ProxySettings | None = None,
    manager_client: ManagerClient | None = None,
    http_client: aiohttp.ClientSession | None = None,
) -> FastAPI:
    """Build the proxy. `manager_client` / `http_client` let tests hand in their own.
    Raises `proxy.catalogue.CatalogueError` for a bad ``HOMELAB_CATALOGUE`` file."""
    settings = settings or ProxySettings()
    metrics = Metrics()
    router = Router(load_catalogue(settings.catalogue))  # CatalogueError: start-up stops
    # The keys: checked by the middleware; a job runs as its owner's principal in it.
    # Open (HOMELAB_API_KEYS=off): the key file is not read. Else the simple keys and the
    # key file's; a bad file raises KeyFileError here (`python -m proxy` names it).
    ring = (
        KeyRing() if settings.api_keys == [] else build_ring(settings.keys(), settings.key_path())
    )
    usage = Usage.load(settings.usage_path())
    metrics.registry.register(UsageCollector(usage))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        http = http_client or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, keepalive_timeout=30.0, socket_factory=keepalive_socket
            ),
            auto_decompress=False,
        )
        upstream = UpstreamPool(keepalive_timeout=30.0)
        fleet = build_fleet(settings, router.catalogue, http, manager_client)
        leases = fleet.first.leases
        waiting: Counter[str] = Counter()
        model_calls = ModelCalls(
            fleet=fleet,
            metrics=metrics,
            upstream=upstream,
            retry_endpoints=settings.retry_endpoints,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.upstream_timeout,
            waiting=waiting,
            router=router,
            limits=Limiter(usage),
        )
        with contextlib.ExitStack() as stack:
            image_dir = settings.image_dir or stack.enter_context(
                tempfile.TemporaryDirectory(prefix="homelab-proxy-images-")
            )
            ctx = ProxyContext(
                settings=settings,
                manager=fleet,
                leases=leases,
                model_calls=model_calls,
                metrics=metrics,
                events=EventHub(
                    fleet,
                    lambda parsed, link: handle_event(app.state.ctx, parsed, link),
                    max_subscribers=settings.max_event_clients,
                ),
                images=ImageStore(
                    Path(image_dir),
                    settings.image_url_ttl,
                    max_count=settings.image_store_max_count,
                    max_bytes=settings.image_store_max_bytes,
                    # a temporary folder is ours; one named in HOMELAB_IMAGE_DIR is made 0700
                    # only if the proxy creates it
                    tighten_folder=settings.image_dir is None,
                ),
                interactive_waiting=waiting,
                ring=ring,
            )
            audio_dir = settings.audio_dir or stack.enter_context(
                tempfile.TemporaryDirectory(prefix="homelab-proxy-audio-")
            )
            ctx.audio = AudioStore(
                Path(audio_dir),
                settings.audio_ttl,
                max_bytes=settings.audio_store_max_bytes,
                key_bytes=settings.audio_store_key_bytes,
                tighten_folder=settings.audio_dir is None,
            )
            app.state.ctx = ctx
            metrics.watch_leases(*(link.leases for link in fleet.links.values()))
            # the state folder is ours (0700); a folder named in HOMELAB_JOBS_URL is left
            # as it is if it exists (the store's files are 0600 either way)
            store = await asyncio.to_thread(
                JobStore, settings.job_store_url(), tighten_folder=settings.jobs_url is None
            )
            stack.callback(store.close)
            ctx.jobs = Dispatcher(
                ctx, AsyncJobStore(store), workers=settings.job_workers, ttl=settings.job_ttl
            )
            metrics.watch_streams(ctx.jobs.watchers)
            ctx.jobs.on_finished.append(lambda job: jobs_batches.on_job_finished(ctx.jobs, job))
            follower = asyncio.create_task(ctx.events.run(), name="manager-events")
            health = (
                asyncio.create_task(router.watch(model_calls.probe), name="endpoint-health")
                if router.catalogue.endpoints
                else None
            )
            background = [
                asyncio.create_task(
                    save_usage(usage, settings.usage_path(), settings.usage_save_interval),
                    name="usage-saver",
                )
            ]
            if not ring.open:
                watcher = KeyFileWatcher(settings.key_path(), ring, settings.keys())
                background.append(asyncio.create_task(watcher.run(), name="key-file"))
            try:
                await ctx.jobs.start()
                async with mcp_endpoint.running():
                    yield
            finally:
                await ctx.jobs.close()
                await cancel_task(health)
                for task in (follower, *background):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                _write_usage(settings.usage_path(), usage.snapshot())
                await fleet.close()
                for link in fleet.links.values():
                    await link.leases.close()
                await upstream.aclose()
                if http_client is None:
                    await http.close()

    app = ProxyApp(
        title="homelab-ai proxy",
        version=proxy_version(),
        description="One OpenAI-compatible endpoint for every model of the home lab. See docs/api.md.",
        lifespan=lifespan,
        # Swagger UI loads its scripts from a CDN into the proxy's origin (where the browser
        # keeps the API key): off unless HOMELAB_DOCS=true. /openapi.json is always there.
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
    )
    app.include_router(routes_openai.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_usage.router)
    mcp_endpoint = McpEndpoint(settings, lambda: app.state.ctx)
    app.router.routes.append(Route("/mcp", mcp_endpoint, methods=["GET", "POST", "DELETE"]))
    app.include_router(jobs_rpc.router)
    app.include_router(jobs_stream.router)
    app.include_router(jobs_batches.router)
    mount_ui(app, settings)

    def observe(request: Request, status: int) -> None:
        metrics.requests.labels(_route_label(request), "unknown", str(status)).inc()

    install_error_handlers(
        app, PROXY, validation_error=RequestValidationError, name="proxy", observe=observe
    )
    # The proxy's own middleware (proxy/hotpath.py), plain ASGI around FastAPI, built from
    # the inside out: requests meet ServerErrors, Guard, the API keys, the body limit, then
    # HotPath, which takes the forwarding routes past FastAPI's own layers.
    forwarding = HotPath(app.fastapi, routes=routes_openai.FORWARDING, metrics=metrics)
    limited = BodyLimit(
        forwarding,
        max_bytes=settings.proxy_max_body_bytes,
        per_path={
            **dict.fromkeys(routes_openai.UPLOADS, settings.max_upload_bytes),
            "/mcp": mcp_endpoint.limit,
            # a batch input file, plus room for the multipart framing and fields
            jobs_batches.FILES: settings.max_batch_file_bytes + jobs_batches.FORM_OVERHEAD,
        },
        source=PROXY,
    )
    guarded = Guard(
        ApiKeyMiddleware(limited, ring=ring),
        allowed_hosts=default_hosts(
            settings.proxy_host, settings.public_url, settings.allowed_hosts
        ),
    )
    app.front = ServerErrors(guarded, handler=app.exception_handlers[Exception])
    return app
