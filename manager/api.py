"""The manager's HTTP API (docs/architecture.md, "The manager's HTTP API").

`create_app(scheduler, settings)` builds the FastAPI app; its lifespan starts
the scheduler (adoption, housekeeping) and closes it. Every route but
`/healthz` needs `Authorization: Bearer <HOMELAB_MANAGER_TOKEN>`. Every error
is an OpenAI error envelope with `"source": "manager"`; this module is the only
place that maps the manager's exceptions to HTTP statuses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.routing import APIRouter
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from manager.errors import (
    BusyError,
    GpuMemoryNotReleased,
    LeaseNotFound,
    ManagerError,
    RuntimeFailure,
    StartFailed,
    UnknownModelError,
)
from manager.scheduler import Scheduler
from manager.settings import ManagerSettings

log = logging.getLogger(__name__)

MAX_LOG_TAIL = 5000
LOG_LINES_IN_ERRORS = 20
T = TypeVar("T")


# --------------------------------------------------------------------- errors


class Unauthorized(ManagerError):
    code = "invalid_api_key"


class ClientGone(ManagerError):
    code = "client_disconnected"


def envelope(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error body, marked as the manager's."""
    return {
        "error": {
            "message": message,
            "type": type_,
            "param": param,
            "code": code,
            "source": "manager",
        }
    }


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(envelope(message, type_, code, param), status_code=status, headers=headers)


def _start_failed_message(exc: StartFailed) -> str:
    text = str(exc)
    if exc.exit_code is not None:
        text += f" (exit code {exc.exit_code})"
    lines = [line for line in exc.logs.splitlines() if line.strip()][-LOG_LINES_IN_ERRORS:]
    if lines:
        text += "\nlast log lines:\n" + "\n".join(lines)
    return text


def manager_error_response(exc: ManagerError) -> JSONResponse:
    """Map one of the manager's exceptions to its status and envelope."""
    if isinstance(exc, Unauthorized):
        return error_response(
            401, str(exc), "authentication_error", exc.code, headers={"WWW-Authenticate": "Bearer"}
        )
    if isinstance(exc, UnknownModelError):
        return error_response(404, str(exc), "invalid_request_error", exc.code, "model")
    if isinstance(exc, LeaseNotFound):
        return error_response(404, str(exc), "invalid_request_error", exc.code, "lease_id")
    if isinstance(exc, BusyError):
        retry = str(max(1, math.ceil(exc.retry_after)))
        return error_response(
            429, str(exc), "rate_limit_error", exc.code, headers={"Retry-After": retry}
        )
    if isinstance(exc, StartFailed):
        return error_response(503, _start_failed_message(exc), "server_error", exc.code, "model")
    if isinstance(exc, GpuMemoryNotReleased | RuntimeFailure):
        return error_response(503, str(exc), "server_error", exc.code)
    if isinstance(exc, ClientGone):
        return error_response(499, str(exc), "invalid_request_error", exc.code)
    log.error("unmapped manager error: %r", exc)
    return error_response(500, str(exc), "server_error", exc.code)


async def _on_manager_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ManagerError)
    return manager_error_response(exc)


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    else:
        message = str(exc.detail)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(
        exc.status_code,
        message,
        type_,
        _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}"),
        headers=dict(exc.headers or {}),
    )


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return error_response(422, message, "invalid_request_error", "invalid_request", param)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error in the manager", "server_error", "internal_error")


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies over `max_bytes` with a 413 envelope.

    A declared Content-Length over the limit is refused before the app runs;
    a chunked body is counted as it is read (the app sees HTTPException 413).
    Streaming responses are not touched.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = error_response(
                413,
                f"request body is larger than {self.max_bytes} bytes",
                "invalid_request_error",
                "request_too_large",
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"request body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# --------------------------------------------------------------------- dependencies

_bearer = HTTPBearer(auto_error=False, description="HOMELAB_MANAGER_TOKEN")


def get_scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


def get_settings(request: Request) -> ManagerSettings:
    return request.app.state.settings


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


def known_model(
    request: Request, name: Annotated[str, Path(description="A model name from models.json")]
) -> str:
    """The path's model name, checked against the catalogue first (404 lists the known ones)."""
    get_scheduler(request).spec(name)
    return name


SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
SettingsDep = Annotated[ManagerSettings, Depends(get_settings)]
ModelName = Annotated[str, Depends(known_model)]


# --------------------------------------------------------------------- bodies


class LeaseRequest(BaseModel):
    """Only `model` is read; other fields are ignored (lenient at the API)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)


class LeaseOut(BaseModel):
    lease_id: str
    model: str
    type: str
    base_url: str
    ttl: float
    max_uses: int
    """How many proxy requests may share this lease (docs/architecture.md, "Leases")."""


class RenewOut(BaseModel):
    lease_id: str
    ttl: float


class EnsureOut(BaseModel):
    model: str
    state: str
    base_url: str


class StopOut(BaseModel):
    model: str
    state: str


# --------------------------------------------------------------------- helpers


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first (then raise ClientGone)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone("the client disconnected while waiting")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event frame (single-line JSON data)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def event_stream(scheduler: Scheduler, heartbeat: float) -> AsyncIterator[bytes]:
    """`snapshot` first, then every event, with a comment line every `heartbeat` idle seconds.

    Subscribing and taking the snapshot happen without a pause, so no event falls
    between them. Ends when the scheduler closes; unsubscribes when the stream ends.
    """
    subscription = scheduler.events.subscribe()
    try:
        yield sse("snapshot", [s.to_dict() for s in scheduler.status()])
        while True:
            try:
                event = await subscription.next(timeout=heartbeat)
            except StopAsyncIteration:
                return
            if event is None:
                yield b": keepalive\n\n"
            else:
                yield sse(event.kind, event.payload())
    finally:
        subscription.close()


# --------------------------------------------------------------------- routes

public = APIRouter()
router = APIRouter(dependencies=[Depends(require_token)])


@public.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness of the manager itself. No token."""
    return {"status": "ok"}


@router.get("/v1/models")
async def list_models(scheduler: SchedulerDep) -> dict[str, Any]:
    return {"object": "list", "data": [s.to_dict() for s in scheduler.status()]}


async def lease_request(request: Request) -> LeaseRequest:
    """The body as JSON whatever its Content-Type says (curl's default is a form type)."""
    try:
        return LeaseRequest.model_validate_json(await request.body() or b"null")
    except ValidationError as exc:
        errors = [dict(err, loc=("body", *err["loc"])) for err in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc


@router.post(
    "/v1/leases",
    response_model=LeaseOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": LeaseRequest.model_json_schema()}},
        }
    },
)
async def create_lease(
    body: Annotated[LeaseRequest, Depends(lease_request)], request: Request, scheduler: SchedulerDep
) -> LeaseOut:
    """Blocks until the model is ready (or 429/503). A client that leaves stops waiting."""
    scheduler.spec(body.model)
    lease = await unless_disconnected(request, scheduler.acquire(body.model))
    return LeaseOut(
        lease_id=lease.lease_id,
        model=lease.model,
        type=lease.type,
        base_url=lease.base_url,
        ttl=lease.ttl,
        max_uses=lease.max_uses,
    )


@router.post("/v1/leases/{lease_id}/renew", response_model=RenewOut)
async def renew_lease(lease_id: str, scheduler: SchedulerDep) -> RenewOut:
    lease = scheduler.renew(lease_id)
    return RenewOut(lease_id=lease.lease_id, ttl=lease.ttl)


@router.delete("/v1/leases/{lease_id}", status_code=204)
async def release_lease(lease_id: str, scheduler: SchedulerDep) -> Response:
    scheduler.release(lease_id)
    return Response(status_code=204)


@router.post("/v1/models/{name}/ensure", response_model=EnsureOut)
async def ensure_model(name: ModelName, request: Request, scheduler: SchedulerDep) -> EnsureOut:
    state, base_url = await unless_disconnected(request, scheduler.ensure(name))
    return EnsureOut(model=name, state=state.value, base_url=base_url)


@router.post("/v1/models/{name}/stop", response_model=StopOut)
async def stop_model(name: ModelName, scheduler: SchedulerDep) -> StopOut:
    state = await scheduler.stop(name)
    return StopOut(model=name, state=state.value)


@router.get("/v1/models/{name}/logs", response_class=PlainTextResponse)
async def model_logs(
    name: ModelName,
    scheduler: SchedulerDep,
    tail: Annotated[int, Query(ge=1, le=MAX_LOG_TAIL)] = 100,
) -> PlainTextResponse:
    return PlainTextResponse(await scheduler.logs(name, tail))


@router.get("/v1/events")
async def events(scheduler: SchedulerDep, settings: SettingsDep) -> StreamingResponse:
    return StreamingResponse(
        event_stream(scheduler, settings.sse_heartbeat),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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
    app.add_exception_handler(ManagerError, _on_manager_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
