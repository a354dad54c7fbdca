"""The manager's HTTP API (docs/architecture.md, "The manager's HTTP API").

`create_app(scheduler, settings)` builds the FastAPI app; its lifespan starts
the scheduler (adoption, housekeeping) and closes it. Every route but
`/healthz` needs `Authorization: Bearer <HOMELAB_MANAGER_TOKEN>`. Every error
is an OpenAI error envelope with `"source": "manager"`: each of the manager's
exceptions carries its status (`manager.errors`), and `wire.errors` installs the
handlers. The wire types (lease, ModelStatus, events) are `wire`'s, the same the
proxy reads.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.routing import APIRouter
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from manager.errors import BusyError, Unauthorized
from manager.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from manager.metrics import render as render_metrics
from manager.scheduler import Scheduler
from manager.settings import ManagerSettings
from wire.disconnect import watch_disconnect
from wire.errors import MANAGER, install_error_handlers
from wire.events import SSE_HEADERS, SSE_MEDIA_TYPE, Event, event_stream, snapshot_frame
from wire.fanout import Subscription, TooManySubscribers
from wire.http_server import trust
from wire.lease import LeaseGrant, LeaseRenewal, LeaseRequest
from wire.limits import BodyLimit
from wire.models import EnsureAnswer, ModelList, StopAnswer

log = logging.getLogger(__name__)

MAX_LOG_TAIL = 5000
MAX_BODY_BYTES = 65536
"""Largest request body the manager accepts (its bodies are a few hundred bytes)."""
T = TypeVar("T")


# --------------------------------------------------------------------- dependencies

_bearer = HTTPBearer(auto_error=False, description="HOMELAB_MANAGER_TOKEN")


def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


def get_settings(request: Request) -> ManagerSettings:
    settings: ManagerSettings = request.app.state.settings
    return settings


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request (401) unless it carries the manager token. Constant-time compare."""
    expected = get_settings(request).manager_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(given, expected):
        raise Unauthorized(
            "missing or wrong bearer token"
            if credentials
            else "missing bearer token: send 'Authorization: Bearer <HOMELAB_MANAGER_TOKEN>'"
        )
    trust(request.scope)


def known_model(
    request: Request, name: Annotated[str, Path(description="A model name from models.json")]
) -> str:
    """The path's model name, checked against the catalogue first (404 lists the known ones)."""
    get_scheduler(request).spec(name)
    return name


SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
SettingsDep = Annotated[ManagerSettings, Depends(get_settings)]
ModelName = Annotated[str, Depends(known_model)]


# --------------------------------------------------------------------- helpers


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first (then `ClientDisconnected`)."""
    async with watch_disconnect(request.receive):
        return await work
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the block returns or raises)


def subscribe(scheduler: Scheduler, limit: int) -> tuple[Subscription[Event], bytes]:
    """A subscription and the `snapshot` frame taken at the same instant (no event can
    fall between them). Raises BusyError (429) when `limit` streams are open already."""
    try:
        subscription = scheduler.events.subscribe(limit=limit)
    except TooManySubscribers:
        raise BusyError(f"too many event streams are open ({limit}); retry later", 5.0) from None
    return subscription, snapshot_frame(scheduler.status())


# --------------------------------------------------------------------- routes

public = APIRouter()
router = APIRouter(dependencies=[Depends(require_token)])


@public.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness of the manager itself. No token."""
    return {"status": "ok"}


@router.get("/v1/models", response_model=ModelList)
async def list_models(scheduler: SchedulerDep) -> JSONResponse:
    listing = ModelList(data=scheduler.status(), gpu_budget_mib=scheduler.budget.mib)
    return JSONResponse(listing.to_wire())


async def lease_request(request: Request) -> LeaseRequest:
    """The body as JSON whatever its Content-Type says (curl's default is a form type)."""
    try:
        return LeaseRequest.model_validate_json(await request.body() or b"null")
    except ValidationError as exc:
        errors = [dict(err, loc=("body", *err["loc"])) for err in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


@router.post(
    "/v1/leases",
    response_model=LeaseGrant,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": LeaseRequest.model_json_schema()}},
        }
    },
)
async def create_lease(
    body: Annotated[LeaseRequest, Depends(lease_request)], request: Request, scheduler: SchedulerDep
) -> LeaseGrant:
    """Blocks until the model is ready (or 429/503). A client that leaves stops waiting."""
    scheduler.spec(body.model)
    lease = await unless_disconnected(
        request, scheduler.acquire(body.model, key_name=body.key_name, key_class=body.key_class)
    )
    return lease.grant


@router.post("/v1/leases/{lease_id}/renew", response_model=LeaseRenewal)
async def renew_lease(lease_id: str, scheduler: SchedulerDep) -> LeaseRenewal:
    lease = scheduler.renew(lease_id)
    return LeaseRenewal(
        lease_id=lease.lease_id, ttl=lease.ttl, contended=scheduler.contended(lease.model)
    )


@router.delete("/v1/leases/{lease_id}", status_code=204)
async def release_lease(lease_id: str, scheduler: SchedulerDep) -> Response:
    scheduler.release(lease_id)
    return Response(status_code=204)


@router.post("/v1/models/{name}/ensure", response_model=EnsureAnswer)
async def ensure_model(name: ModelName, request: Request, scheduler: SchedulerDep) -> EnsureAnswer:
    state, base_url = await unless_disconnected(request, scheduler.ensure(name))
    return EnsureAnswer(model=name, state=state.wire, base_url=base_url)


@router.post("/v1/models/{name}/stop", response_model=StopAnswer)
async def stop_model(name: ModelName, scheduler: SchedulerDep) -> StopAnswer:
    state = await scheduler.stop(name)
    return StopAnswer(model=name, state=state.wire)


@router.post("/v1/models/{name}/check")
async def check_model(name: ModelName, scheduler: SchedulerDep) -> JSONResponse:
    """A proxy could not reach the model server: check it now (a dead server goes
    `failed`, so no lease is granted on it). Answers the model's ModelStatus."""
    return JSONResponse((await scheduler.check(name)).to_wire())


@router.get("/v1/models/{name}/logs", response_class=PlainTextResponse)
async def model_logs(
    name: ModelName,
    scheduler: SchedulerDep,
    tail: Annotated[int, Query(ge=1, le=MAX_LOG_TAIL)] = 100,
) -> PlainTextResponse:
    return PlainTextResponse(await scheduler.logs(name, tail))


@router.get("/v1/events")
async def events(scheduler: SchedulerDep, settings: SettingsDep) -> StreamingResponse:
    """`snapshot` first, then every event (`wire.events.event_stream`: each event framed
    once for every stream, a comment line every `sse_heartbeat` idle seconds); ends when
    the scheduler closes. At most HOMELAB_MAX_EVENT_STREAMS at once (the proxy needs
    one); one more is a 429."""
    subscription, snapshot = subscribe(scheduler, settings.max_event_streams)
    return StreamingResponse(
        event_stream(snapshot, subscription, settings.sse_heartbeat),
        media_type=SSE_MEDIA_TYPE,
        headers=SSE_HEADERS,
    )


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(scheduler: SchedulerDep) -> Response:
    """Prometheus text: the queue and live leases per model and API key name and class,
    each key's recent GPU-seconds (`manager.metrics`)."""
    return Response(render_metrics(scheduler), media_type=METRICS_CONTENT_TYPE)


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


# --------------------------------------------------------------------- the app


def create_app(
    scheduler: Scheduler, settings: ManagerSettings, *, manage_scheduler: bool = True
) -> FastAPI:
    """The manager's app. With `manage_scheduler`, the lifespan calls `scheduler.start()`
    (adoption, housekeeping) on start-up and `scheduler.close()` on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_scheduler:
            await scheduler.start()
        try:
            yield
        finally:
            if manage_scheduler:
                await scheduler.close()

    app = FastAPI(
        title="homelab-ai manager",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.scheduler = scheduler
    app.state.settings = settings
    app.include_router(public)
    app.include_router(router)
    install_error_handlers(app, MANAGER, validation_error=RequestValidationError)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, source=MANAGER)
    return app
