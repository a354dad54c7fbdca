"""The OpenAI-compatible routes: /v1/models and the forwarding endpoints.

Each forwarding route reads the body (bounded), looks only at the fields it
routes on, checks the model exists and has the right type (an unknown model is
a 404 listing the known ones, a wrong type a 400 naming the endpoints that model
serves), and returns a `Forward`, which takes the lease and forwards the body.
No pydantic request models: the request schemas below exist for the OpenAPI
document only.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from proxy.context import ProxyContext
from proxy.errors import (
    InvalidRequest,
    ModelNotFound,
    ProxyError,
    UnsupportedAudio,
    WrongModelType,
)
from proxy.forward import Forward
from proxy.images import UPLOAD_FORMATS, check_image_request, image_url_base, sniff_format
from proxy.keys import current, visible
from proxy.openapi_docs import ERRORS, audio_upload_schema, body_schema, edit_schema
from proxy.parsing import (
    check_stream,
    encode_form,
    form_int,
    form_text,
    model_name,
    parse_form,
    parse_object,
    read_body,
    require_json,
    routed_fields,
)
from wire.audio import SNIFF_BYTES, sniff_audio
from wire.models import ModelStatus

router = APIRouter()
Endpoint = Callable[[Request], Awaitable[Response]]
EDITS = "/v1/images/edits"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
SPEECH = "/v1/audio/speech"
VOICES = "/v1/audio/voices"
UPLOADS = (EDITS, TRANSCRIPTIONS, TRANSLATIONS)
"""The multipart routes: their body limit is HOMELAB_MAX_UPLOAD_BYTES, not HOMELAB_PROXY_MAX_BODY_BYTES."""
_STARTED = int(time.time())


def _ctx(request: Request) -> ProxyContext:
    ctx: ProxyContext = request.app.state.ctx
    return ctx


async def resolve_model(
    ctx: ProxyContext, name: str, want: str, endpoint: str, *, wait: bool = True
) -> ModelStatus:
    """The ModelStatus for `name` (the manager's, or a remote model's from the proxy's
    catalogue), checked to be of type `want`. `wait=False` (jobs and batches: accepted at
    once, run when a host is back): while every host is away, the last known catalogue
    answers (`proxy.hosts.Fleet.models`) instead of a wait for a manager.

    A name missing from the cached list is looked up once more (at most one
    fresh fetch a second), so a model added on the manager is found at once. A model
    with fallbacks does not wait for an unreachable manager: without its list, the
    type is its first remote fallback's.

    A model the caller's key may not use (`proxy.keys.current()`) is answered as an
    unknown one: 404 listing only the key's own models.
    """
    router = ctx.model_calls.router
    who = current()
    if not who.may_use(name):
        models = await ctx.manager.models(wait=wait)
        raise ModelNotFound(name, who.visible({*models, *router.remote}))
    info = router.status(name) if name in router.remote else None
    if info is None and name in router.routes:
        info = await _with_fallbacks(ctx, name)
    if info is None:
        models = await ctx.manager.models(wait=wait)
        info = models.get(name)
        if info is None:
            models = await ctx.manager.models(max_age=1.0, wait=wait)
            info = models.get(name)
            if info is None:
                raise ModelNotFound(name, who.visible({*models, *router.remote}))
    if info.type != want:
        every = {**(await _known(ctx)), **router.statuses()}
        fitting = [n for n in who.visible(every) if every[n].type == want]
        raise WrongModelType(name, info.type, endpoint, fitting)
    return info


async def _with_fallbacks(ctx: ProxyContext, name: str) -> ModelStatus | None:
    router = ctx.model_calls.router
    if ctx.manager.reachable:
        try:
            info = (await ctx.manager.models(wait=False)).get(name)
        except ProxyError:
            info = None
        if info is not None:
            return info
    for target in router.routes[name].targets:
        if target.endpoint is not None:
            return router.status(target.model)
    return None  # only host models: wait for the manager as without fallbacks


async def _known(ctx: ProxyContext) -> dict[str, ModelStatus]:
    try:
        return await ctx.manager.models(wait=False)
    except ProxyError:
        return {}


def model_object(m: ModelStatus, fallbacks: tuple[str, ...] = ()) -> dict[str, Any]:
    """An OpenAI model object carrying everything the manager reports about the model
    (type, backend, state, last_error, since, in_flight, waiting, description; sizes and
    max_n for image models; tools and vision for text models; endpoint and reachable for
    remote ones), and the models tried after it (`fallbacks`) when the catalogue lists any."""
    data = {**m.to_wire(), "object": "model", "created": _STARTED, "owned_by": "homelab-ai"}
    if fallbacks:
        data["fallbacks"] = list(fallbacks)
    return data


async def _every_model(
    request: Request,
) -> tuple[dict[str, ModelStatus], dict[str, tuple[str, ...]]]:
    """The manager's models and the catalogue's remote ones (a remote name hides a
    manager model of the same name), and each model's fallbacks."""
    ctx = _ctx(request)
    router = ctx.model_calls.router
    if not router.remote and not router.routes:
        return await ctx.manager.models(), {}
    try:
        local = await ctx.manager.models(wait=not router.remote)
    except ProxyError:
        if not router.remote:
            raise
        local = {}
    after = {n: tuple(t.model for t in r.targets[1:]) for n, r in router.routes.items()}
    return {**local, **router.statuses()}, after


@router.get("/v1/models", responses=ERRORS, summary="List models with their type and state")
async def list_models(request: Request) -> Response:
    models, after = await _every_model(request)
    models = visible(models)
    data = [model_object(models[name], after.get(name, ())) for name in sorted(models)]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/v1/models/{model}", responses=ERRORS, summary="One model with its type and state")
async def get_model(request: Request, model: str) -> Response:
    models, after = await _every_model(request)
    models = visible(models)
    if model not in models:
        raise ModelNotFound(model[:200], sorted(models))
    return Response(
        orjson.dumps(model_object(models[model], after.get(model, ()))),
        media_type="application/json",
    )


async def _forward_json(request: Request, endpoint: str, want: str) -> Forward:
    ctx = _ctx(request)
    require_json(request)
    raw = await read_body(request)
    fields = routed_fields(raw)
    model = model_name(fields.model)
    check_stream(fields.stream)
    info = await resolve_model(ctx, model, want, endpoint)
    url_base = None
    if want == "image":
        fmt = fields.response_format
        check_image_request(info, fields.n, fields.size, fmt)
        if fmt == "url":  # only here is the whole (small: a prompt) body decoded
            raw = orjson.dumps({**parse_object(raw), "response_format": "b64_json"})
            url_base = image_url_base(ctx, request)
    return Forward(
        ctx,
        endpoint=endpoint,
        model=model,
        body=raw,
        content_type="application/json",
        url_base=url_base,
    )


async def _forward_edit(request: Request, endpoint: str, want: str) -> Forward:
    ctx = _ctx(request)
    limit = ctx.settings.max_upload_bytes
    raw = await read_body(request)
    form = await parse_form(request, raw, limit)
    try:
        model = model_name(form_text(form, "model"))
        images = [v for k, v in form.multi_items() if k in ("image", "image[]")]
        if not images or not all(isinstance(v, UploadFile) for v in images):
            raise InvalidRequest("'image' must be uploaded as a file part.", param="image")
        for upload in images:
            assert isinstance(upload, UploadFile)  # checked just above
            if sniff_format(await upload.read(16)) not in UPLOAD_FORMATS:
                raise InvalidRequest("'image' must be a PNG, JPEG or WebP file.", param="image")
        mask = form.get("mask")
        if mask is not None:
            if not isinstance(mask, UploadFile):
                raise InvalidRequest("'mask' must be uploaded as a file part.", param="mask")
            if sniff_format(await mask.read(16)) not in UPLOAD_FORMATS:
                raise InvalidRequest("'mask' must be a PNG, JPEG or WebP file.", param="mask")
        if form_text(form, "stream") not in (None, "true", "false"):
            raise InvalidRequest("'stream' must be true or false.", param="stream")
        info = await resolve_model(ctx, model, want, endpoint)
        fmt = form_text(form, "response_format")
        check_image_request(info, form_int(form, "n"), form_text(form, "size"), fmt)
        content_type = request.headers["content-type"]
        url_base = None
        if fmt == "url":
            raw, content_type = await encode_form(form, {"response_format": "b64_json"})
            url_base = image_url_base(ctx, request)
    finally:
        await form.close()
    return Forward(
        ctx,
        endpoint=endpoint,
        model=model,
        body=raw,
        content_type=content_type,
        url_base=url_base,
    )


TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


def check_transcript_format(value: object) -> None:
    """A transcription's ``response_format``: one of `TRANSCRIPT_FORMATS`, or absent."""
    if value is not None and value not in TRANSCRIPT_FORMATS:
        raise InvalidRequest(
            f"'response_format' must be one of {', '.join(TRANSCRIPT_FORMATS)}.",
            param="response_format",
        )


async def _forward_audio(request: Request, endpoint: str, want: str) -> Forward:
    """A transcription or translation: an audio file (checked by its first bytes, not its
    name or declared type) and the routed fields, forwarded as the client sent them."""
    ctx = _ctx(request)
    raw = await read_body(request)
    form = await parse_form(request, raw, ctx.settings.max_upload_bytes)
    try:
        model = model_name(form_text(form, "model"))
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("'file' must be uploaded as a file part.", param="file")
        if sniff_audio(await upload.read(SNIFF_BYTES)) is None:
            raise UnsupportedAudio(
                "'file' is not audio of a known format (by its content): send flac, m4a, "
                "mp3, mp4, ogg, wav or webm.",
                param="file",
            )
        if form_text(form, "stream") not in (None, "true", "false"):
            raise InvalidRequest("'stream' must be true or false.", param="stream")
        check_transcript_format(form_text(form, "response_format"))
        await resolve_model(ctx, model, want, endpoint)
    finally:
        await form.close()
    return Forward(
        ctx,
        endpoint=endpoint,
        model=model,
        body=raw,
        content_type=request.headers["content-type"],
    )


Handler = Callable[[Request, str, str], Awaitable[Forward]]


@dataclass(frozen=True)
class ForwardingRoute:
    """``POST path``: a request for a model of `model_type`, checked by `handler` and
    forwarded to the same path on the model server. `name` names the OpenAPI operation."""

    path: str
    name: str
    model_type: str
    handler: Handler
    schema: dict[str, Any]
    summary: str

    async def endpoint(self, request: Request) -> Response:
        return await self.handler(request, self.path, self.model_type)


ROUTES = (
    ForwardingRoute(
        "/v1/chat/completions",
        "chat_completions",
        "text",
        _forward_json,
        body_schema("chat"),
        "Chat completion (text models; SSE when stream is true)",
    ),
    ForwardingRoute(
        "/v1/completions",
        "completions",
        "text",
        _forward_json,
        body_schema("completion"),
        "Text completion (text models; SSE when stream is true)",
    ),
    ForwardingRoute(
        "/v1/embeddings",
        "embeddings",
        "embedding",
        _forward_json,
        body_schema("embedding"),
        "Embeddings (embedding models)",
    ),
    ForwardingRoute(
        "/v1/images/generations",
        "images_generations",
        "image",
        _forward_json,
        body_schema("image"),
        "Generate images (image models)",
    ),
    ForwardingRoute(
        EDITS,
        "images_edits",
        "image",
        _forward_edit,
        edit_schema(),
        "Edit an uploaded image (image models; multipart/form-data)",
    ),
    ForwardingRoute(
        TRANSCRIPTIONS,
        "audio_transcriptions",
        "stt",
        _forward_audio,
        audio_upload_schema(),
        "Transcribe speech (stt models; multipart/form-data; SSE by segment when stream is true)",
    ),
    ForwardingRoute(
        TRANSLATIONS,
        "audio_translations",
        "stt",
        _forward_audio,
        audio_upload_schema(translation=True),
        "Speech to English text (stt models; multipart/form-data)",
    ),
    ForwardingRoute(
        SPEECH,
        "audio_speech",
        "tts",
        _forward_json,
        body_schema("speech"),
        "Speak text (tts models; the audio streamed sentence by sentence)",
    ),
)
"""The forwarding routes, each declared once: FastAPI's router (so /openapi.json
describes them) and `proxy.hotpath.HotPath` (which serves them) are both built here."""

for _route in ROUTES:
    router.add_api_route(
        _route.path,
        _route.endpoint,
        methods=["POST"],
        name=_route.name,
        openapi_extra=_route.schema,
        responses=ERRORS,
        summary=_route.summary,
    )

FORWARDING: dict[str, Endpoint] = {route.path: route.endpoint for route in ROUTES}
"""The forwarding endpoints by path, for `proxy.hotpath.HotPath`."""


@router.get(
    VOICES,
    responses=ERRORS,
    summary="The voices of a tts model (?model=NAME)",
)
async def list_voices(request: Request, model: str | None = None) -> Response:
    """``GET /v1/audio/voices?model=NAME``: the tts model's voices, from its server (the
    model is leased, and started if it is not running, like any call)."""
    ctx = _ctx(request)
    if not model:
        every = {**(await _known(ctx)), **ctx.model_calls.router.statuses()}
        fitting = [n for n in current().visible(every) if every[n].type == "tts"]
        raise InvalidRequest(
            f"Name the tts model: {VOICES}?model=NAME. "
            f"Models for {VOICES}: {', '.join(fitting) or '(none configured)'}.",
            param="model",
        )
    name = model_name(model)
    await resolve_model(ctx, name, "tts", VOICES)
    call = ctx.model_calls.call(name, VOICES, b"", "application/json", method="GET")
    async with call:
        raw = call.body or b""
        return Response(
            raw,
            status_code=call.status,
            media_type=call.answer_type,
            headers={"X-Homelab-Served-By": call.served_by},
        )
