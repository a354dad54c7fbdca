"""The image server's HTTP surface: OpenAI's images API for one diffusers model.

Routes:
- `GET /health` -> `{"status": "loading"|"ready"|"failed", "error": str|null, "model": name,
  "loaded": {...}|null}` (200 while loading or ready, 503 once failed; `loaded`, once ready,
  is how the pipeline was loaded: `wire.image_options.ImageLoaded`).
- `GET /v1/models` -> the one model (with its sizes, max_n and, once loaded, what it can do).
- `POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (multipart)
  -> OpenAI's ImagesResponse with `b64_json` images.
- `POST /park`, `POST /unpark`, `GET /is_parked`: the warm tier (`imageserver.park`).

Every error is an OpenAI envelope with `"source": "model_server"`; each exception
carries its status (`imageserver.errors`) and `wire.errors` installs the handlers:
400 bad input (validation, size, n, images, masks, a task the model cannot do),
413 `request_too_large` (a body or an uploaded image over its limit, as in every
program), 404/405 unknown route or method, 429 queue full
(`Retry-After`), 503 model loading / failed to load (`Retry-After` while
loading) and **503 `out_of_memory`** when the device ran out of memory (the
request may succeed later or smaller; the server stays up), 500
`generation_failed` for any other pipeline error (message only, no traceback).

Request validation happens on the event loop (image decoding in a thread);
the pipeline runs on the one GPU worker thread, so /health always answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from imageserver.errors import (
    ClientGone,
    GenerationFailed,
    InvalidRequest,
    ModelNotReady,
    UnsupportedTask,
)
from imageserver.host import Loader, ModelHost
from imageserver.images import (
    OUTPUT_FORMATS,
    choose_size,
    decode_upload,
    encode_image,
    prepare_image,
    prepare_mask,
)
from imageserver.model import EditJob, GenerateJob, ImageModel, StepMeter
from imageserver.park import Parking
from imageserver.park import router as park_router
from imageserver.settings import Settings
from imageserver.upstream_key import UpstreamKey
from imageserver.worker import GpuWorker
from wire.errors import MODEL_SERVER, install_error_handlers
from wire.limits import BodyLimit
from wire.model_server import ImageHealth, ImageProgress

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 32000
MAX_SEED = 2**63 - 1


class GenerationRequest(BaseModel):
    """OpenAI's image generation body plus our optional extras. Unknown fields are ignored
    (quality, style, user, background, moderation, ...)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    steps: int | None = Field(default=None, ge=1, le=200)
    guidance: float | None = Field(default=None, ge=0, le=100)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)


def _get_host(request: Request) -> ModelHost:
    host: ModelHost = request.app.state.host
    return host


def _get_worker(request: Request) -> GpuWorker:
    worker: GpuWorker = request.app.state.worker
    return worker


def _get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


HostDep = Annotated[ModelHost, Depends(_get_host)]
WorkerDep = Annotated[GpuWorker, Depends(_get_worker)]
SettingsDep = Annotated[Settings, Depends(_get_settings)]
router = APIRouter()


def _check_common(
    settings: Settings, n: int, response_format: str | None, output_format: str | None
) -> str:
    """Validate n and the formats; return the output format."""
    if not 1 <= n <= settings.max_n:
        raise InvalidRequest(
            f"n must be between 1 and {settings.max_n} for this model, not {n}", param="n"
        )
    if response_format not in (None, "b64_json"):
        raise InvalidRequest(
            f"response_format {response_format!r} is not supported by the model server; use 'b64_json'",
            param="response_format",
        )
    fmt = output_format or "png"
    if fmt not in OUTPUT_FORMATS:
        raise InvalidRequest(
            f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}",
            param="output_format",
        )
    return fmt


def _steps(settings: Settings, steps: int | None) -> int:
    """The request's steps (default: the model's), refused above the model's `max_steps`."""
    if steps is not None and steps > settings.max_steps:
        raise InvalidRequest(
            f"steps must be at most {settings.max_steps} for this model, not {steps}",
            param="steps",
        )
    return steps or min(settings.steps, settings.max_steps)


async def _client_left(request: Request) -> None:
    """Return once the client has disconnected (the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _for_client(request: Request, job: GenerateJob | EditJob, work: Awaitable[T]) -> T:
    """Await `work` (the job on the GPU worker) while the client waits for it. If the
    client leaves first, the job is dropped: one still queued leaves the queue, a running
    one stops at its next step (`job.stop`). Raises ClientGone then."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        job.stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        log.info("the client left: its generation was dropped")
        raise ClientGone("the client closed the connection; the generation was dropped")
    finally:
        watcher.cancel()


def _new_seed() -> int:
    return secrets.randbelow(2**32)


async def _respond(images: list, fmt: str, width: int, height: int) -> dict[str, Any]:
    encoded = await asyncio.to_thread(lambda: [encode_image(im, fmt) for im in images])
    return {
        "created": int(time.time()),
        "data": [{"b64_json": b64, "revised_prompt": None} for b64 in encoded],
        "output_format": fmt,
        "size": f"{width}x{height}",
    }


# --------------------------------------------------------------------- routes


@router.get("/health")
async def health(host: HostDep, settings: SettingsDep) -> JSONResponse:
    """`wire.model_server.ImageHealth` (503 once failed)."""
    status, error = host.snapshot()
    loaded = None
    if status == "ready":
        with contextlib.suppress(ModelNotReady):
            loaded = getattr(host.ready_model(), "loaded", None)
    body = ImageHealth(status=status, error=error, model=settings.served_name, loaded=loaded)
    # `loaded` is only there once ready (older readers never see the key)
    shown = body.model_dump(exclude={"loaded"} if loaded is None else None)
    return JSONResponse(shown, status_code=body.http_status)


@router.get("/v1/progress")
async def progress(host: HostDep) -> ImageProgress:
    """The generation running now, `wire.model_server.ImageProgress` (diffusion steps of
    the current picture; all zero when idle, loading, or the pipeline reports none)."""
    try:
        meter = getattr(host.ready_model(), "meter", None)
    except ModelNotReady:
        meter = None
    return meter.snapshot() if meter is not None else StepMeter().snapshot()


@router.get("/v1/models")
async def models(host: HostDep, settings: SettingsDep) -> dict[str, Any]:
    try:
        caps = host.ready_model().capabilities
        capabilities: dict[str, Any] | None = {
            "pipeline": caps.pipeline,
            "generate": caps.generate,
            "edit": caps.edit,
            "inpaint": caps.inpaint,
        }
    except ModelNotReady:
        capabilities = None
    return {
        "object": "list",
        "data": [
            {
                "id": settings.served_name,
                "object": "model",
                "created": 0,
                "owned_by": "homelab-ai",
                "type": "image",
                "status": host.status,
                "sizes": list(settings.sizes),
                "max_n": settings.max_n,
                "capabilities": capabilities,
            }
        ],
    }


@router.post("/v1/images/generations")
async def generations(
    request: Request,
    body: GenerationRequest,
    host: HostDep,
    worker: WorkerDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    fmt = _check_common(settings, body.n, body.response_format, body.output_format)
    width, height = choose_size(body.size, settings.size_pairs)
    request.app.state.parking.check_not_parked()
    model = host.ready_model()
    if not model.capabilities.generate:
        raise UnsupportedTask(
            f"model {settings.served_name!r} ({model.capabilities.pipeline}) edits images and "
            "cannot generate from text alone; use POST /v1/images/edits"
        )
    job = GenerateJob(
        prompt=body.prompt,
        n=body.n,
        width=width,
        height=height,
        steps=_steps(settings, body.steps),
        seed=body.seed if body.seed is not None else _new_seed(),
        guidance=body.guidance,
        negative_prompt=body.negative_prompt,
    )
    images = await _for_client(request, job, worker.run(model.generate, job))
    return await _respond(images, fmt, width, height)


@router.post("/v1/images/edits")
async def edits(
    request: Request,
    host: HostDep,
    worker: WorkerDep,
    settings: SettingsDep,
    prompt: Annotated[str, Form(min_length=1, max_length=MAX_PROMPT_CHARS)],
    image: Annotated[UploadFile | None, File()] = None,
    image_list: Annotated[list[UploadFile] | None, File(alias="image[]")] = None,
    mask: Annotated[UploadFile | None, File()] = None,
    model: Annotated[str | None, Form()] = None,
    n: Annotated[int, Form()] = 1,
    size: Annotated[str | None, Form()] = None,
    response_format: Annotated[str | None, Form()] = None,
    output_format: Annotated[str | None, Form()] = None,
    seed: Annotated[int | None, Form(ge=0, le=MAX_SEED)] = None,
    steps: Annotated[int | None, Form(ge=1, le=200)] = None,
    guidance: Annotated[float | None, Form(ge=0, le=100)] = None,
    strength: Annotated[float | None, Form(gt=0, le=1)] = None,
    negative_prompt: Annotated[str | None, Form(max_length=MAX_PROMPT_CHARS)] = None,
) -> dict[str, Any]:
    fmt = _check_common(settings, n, response_format, output_format)
    width, height = choose_size(size, settings.size_pairs)
    uploads = ([image] if image is not None else []) + list(image_list or [])
    if len(uploads) != 1:
        raise InvalidRequest(
            f"send exactly one image to edit ('image'), not {len(uploads)}", param="image"
        )
    limit = settings.max_upload_bytes
    image_bytes = await uploads[0].read(limit + 1)
    mask_bytes = await mask.read(limit + 1) if mask is not None else None
    source = await asyncio.to_thread(decode_upload, image_bytes, param="image", max_bytes=limit)
    mask_image = None
    if mask_bytes is not None:
        raw_mask = await asyncio.to_thread(decode_upload, mask_bytes, param="mask", max_bytes=limit)
        mask_image = prepare_mask(raw_mask, source.size, (width, height))
    source = await asyncio.to_thread(prepare_image, source, (width, height))
    request.app.state.parking.check_not_parked()
    loaded = host.ready_model()
    caps = loaded.capabilities
    if mask_image is not None and not caps.inpaint:
        raise UnsupportedTask(
            f"model {settings.served_name!r} ({caps.pipeline}) cannot do masked edits; "
            + ("send the image without a mask" if caps.edit else "it cannot edit images"),
            param="mask",
        )
    if mask_image is None and not caps.edit:
        raise UnsupportedTask(
            f"model {settings.served_name!r} ({caps.pipeline}) cannot edit images"
            + ("; it needs a mask (inpainting only)" if caps.inpaint else ""),
            param="image" if caps.inpaint else None,
        )
    job = EditJob(
        prompt=prompt,
        image=source,
        mask=mask_image,
        n=n,
        width=width,
        height=height,
        steps=_steps(settings, steps),
        seed=seed if seed is not None else _new_seed(),
        guidance=guidance,
        strength=strength,
        negative_prompt=negative_prompt,
    )
    images = await _for_client(request, job, worker.run(loaded.edit, job))
    return await _respond(images, fmt, width, height)


# --------------------------------------------------------------------- the app


def create_app(settings: Settings, loader: Loader | None = None) -> FastAPI:
    """Build the app. `loader` builds the model (default: the real diffusers loader,
    imported lazily so the port is up before torch is imported). Loading starts
    in the lifespan, in the background."""
    if loader is None:

        def loader(s: Settings) -> ImageModel:  # runs on the worker thread: torch loads there
            from imageserver.diffusers_model import load_diffusers_model

            return load_diffusers_model(s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = GpuWorker(settings.queue_limit)
        host = ModelHost(settings, loader, worker)
        app.state.worker, app.state.host = worker, host
        app.state.parking = Parking(settings, host, worker)
        host.start()
        try:
            yield
        finally:
            worker.shutdown()

    app = FastAPI(
        title="homelab-ai image server",
        description="OpenAI images API over one diffusers pipeline.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(router)
    app.include_router(park_router)
    _install_error_handlers(app)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, source=MODEL_SERVER)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(UpstreamKey, key=key)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    install_error_handlers(
        app, MODEL_SERVER, validation_error=RequestValidationError, name="image server"
    )

    @app.exception_handler(GenerationFailed)
    async def _generation_failed(request: Request, exc: GenerationFailed) -> Response:
        log.error("generation failed: %s", exc.message, exc_info=exc.__cause__)
        return exc.response(MODEL_SERVER)
