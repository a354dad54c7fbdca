"""The audio server's HTTP surface: OpenAI's audio API for one speech model.

Routes (the contract: wire.model_server, wire.audio):
- `GET /health` -> `wire.model_server.AudioHealth` (200 while loading or ready, 503 once
  failed); the only path open without the upstream key.
- `GET /v1/models` -> the one model, with its type; `GET /v1/progress` ->
  `wire.model_server.AudioProgress` (the running request's sentences or seconds).
- stt: `POST /v1/audio/transcriptions` and `POST /v1/audio/translations` (multipart:
  file, model, language, prompt, temperature, response_format json|text|srt|vtt|
  verbose_json, stream). With `stream=true` an event stream: one
  `{"type": "transcript.text.delta", "delta", "segment": {"id", "start", "end"},
  "duration"}` event per segment as Whisper finishes it, then
  `{"type": "transcript.text.done", "text"}`.
- tts: `POST /v1/audio/speech` (JSON: input, voice, response_format mp3|opus|aac|flac|
  wav|pcm, speed), the audio streamed sentence by sentence, its rate in `X-Sample-Rate`;
  `GET /v1/audio/voices`.

Errors are OpenAI envelopes with `"source": "model_server"` (`audioserver.errors`): 400
bad parameters or the other type's endpoint, 413 an upload or body over its limit, 415 an
upload that is not audio (by its first bytes), 422 audio that does not decode, 429 queue
full, 503 loading or failed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from audioserver.errors import InferenceFailed, InvalidRequest, ModelNotReady, WrongEndpoint
from audioserver.formats import SPEECH_FORMATS, Encoder, check_upload
from audioserver.host import Loader, ModelHost
from audioserver.meter import Meter
from audioserver.settings import Settings
from audioserver.stt import TEXT_FORMATS, Heard, Segment, Task, TranscribeJob, Transcriber, render
from audioserver.stt import whole_text as _whole_text
from audioserver.tts import Speaker, SpeakJob, pick_voice
from audioserver.upstream_key import UpstreamKey
from audioserver.worker import Stream, Worker
from wire.audio import SAMPLE_RATE_HEADER, SPEECH_MEDIA_TYPES
from wire.errors import MODEL_SERVER, ApiError, install_error_handlers
from wire.events import SSE_HEADERS, SSE_MEDIA_TYPE, data_frame
from wire.limits import BodyLimit
from wire.model_server import AudioHealth, AudioProgress

log = logging.getLogger(__name__)

DELTA = "transcript.text.delta"
DONE = "transcript.text.done"
"""OpenAI's event types of a streamed transcription."""


class SpeechRequest(BaseModel):
    """OpenAI's speech body. Unknown fields are ignored (instructions, ...)."""

    model_config = ConfigDict(extra="ignore")

    input: str = Field(min_length=1)
    model: str | None = None
    voice: str | None = None
    response_format: str = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio"] | None = None


def _host(request: Request) -> ModelHost[Any]:
    host: ModelHost[Any] = request.app.state.host
    return host


def _worker(request: Request) -> Worker:
    worker: Worker = request.app.state.worker
    return worker


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


HostDep = Annotated[ModelHost[Any], Depends(_host)]
WorkerDep = Annotated[Worker, Depends(_worker)]
SettingsDep = Annotated[Settings, Depends(_settings)]
router = APIRouter()


def _needs(settings: Settings, kind: str, endpoint: str) -> None:
    if settings.type != kind:
        other = (
            "/v1/audio/speech and /v1/audio/voices"
            if settings.type == "tts"
            else "/v1/audio/transcriptions and /v1/audio/translations"
        )
        raise WrongEndpoint(
            f"model {settings.served_name!r} is a {settings.type} model and cannot serve "
            f"{endpoint}; it serves {other}",
            param="model",
        )


# --------------------------------------------------------------------- routes


@router.get("/health")
async def health(host: HostDep, settings: SettingsDep) -> JSONResponse:
    """`wire.model_server.AudioHealth` (503 once failed)."""
    status, error = host.snapshot()
    body = AudioHealth(status=status, error=error, model=settings.served_name, type=settings.type)
    return JSONResponse(body.model_dump(), status_code=body.http_status)


@router.get("/v1/progress")
async def progress(host: HostDep) -> AudioProgress:
    """The request running now, `wire.model_server.AudioProgress` (sentences spoken, or
    seconds heard; all zero when idle or loading)."""
    try:
        meter: Meter | None = getattr(host.ready_model(), "meter", None)
    except ModelNotReady:
        meter = None
    return meter.snapshot() if meter is not None else AudioProgress()


@router.get("/v1/models")
async def models(host: HostDep, settings: SettingsDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": settings.served_name,
                "object": "model",
                "created": 0,
                "owned_by": "homelab-ai",
                "type": settings.type,
                "status": host.snapshot()[0],
            }
        ],
    }


async def _transcribe(
    request: Request,
    task: Task,
    host: ModelHost[Any],
    worker: Worker,
    settings: Settings,
    file: UploadFile,
    language: str | None,
    prompt: str | None,
    temperature: float,
    response_format: str,
    stream: bool,
) -> Response:
    _needs(settings, "stt", request.url.path)
    if response_format not in TEXT_FORMATS:
        raise InvalidRequest(
            f"response_format must be one of {', '.join(TEXT_FORMATS)}, not {response_format!r}",
            param="response_format",
        )
    data = await file.read(settings.max_upload_bytes + 1)
    check_upload(data, settings.max_upload_bytes)
    model: Transcriber = host.ready_model()
    job = TranscribeJob(
        audio=data, task=task, language=language or None, prompt=prompt, temperature=temperature
    )
    items: Stream[Heard | Segment] = await worker.stream(lambda: model.transcribe(job))
    if stream:
        return StreamingResponse(
            _events(items), media_type=SSE_MEDIA_TYPE, headers=dict(SSE_HEADERS)
        )
    heard: Heard | None = None
    segments: list[Segment] = []
    async for item in items:
        if isinstance(item, Heard):
            heard = item
        else:
            segments.append(item)
    if heard is None:
        raise InferenceFailed("the model heard nothing and said so not")
    body, media_type = render(response_format, task, heard, segments)
    if isinstance(body, dict):
        return JSONResponse(body)
    return Response(body, media_type=media_type)


async def _events(items: Stream[Heard | Segment]) -> AsyncIterator[bytes]:
    """The streamed transcription's events (module docstring). An error after the first
    event becomes a last ``data: {"error": ...}`` event (the answer has begun)."""
    duration = 0.0
    segments: list[Segment] = []
    try:
        async for item in items:
            if isinstance(item, Heard):
                duration = item.duration
                continue
            segments.append(item)
            yield data_frame(
                {
                    "type": DELTA,
                    "delta": item.text,
                    "segment": {
                        "id": item.id,
                        "start": round(item.start, 3),
                        "end": round(item.end, 3),
                    },
                    "duration": round(duration, 3),
                }
            )
    except Exception as exc:
        err = exc if isinstance(exc, ApiError) else InferenceFailed(f"transcription failed: {exc}")
        log.error("a streamed transcription failed: %s", err.message, exc_info=exc)
        yield data_frame(err.envelope(MODEL_SERVER))
        return
    yield data_frame({"type": DONE, "text": _whole_text(segments)})


@router.post("/v1/audio/transcriptions")
async def transcriptions(
    request: Request,
    host: HostDep,
    worker: WorkerDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form(max_length=16)] = None,
    prompt: Annotated[str | None, Form(max_length=4096)] = None,
    temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
    response_format: Annotated[str, Form()] = "json",
    stream: Annotated[bool, Form()] = False,
) -> Response:
    return await _transcribe(
        request,
        "transcribe",
        host,
        worker,
        settings,
        file,
        language,
        prompt,
        temperature,
        response_format,
        stream,
    )


@router.post("/v1/audio/translations")
async def translations(
    request: Request,
    host: HostDep,
    worker: WorkerDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form(max_length=4096)] = None,
    temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
    response_format: Annotated[str, Form()] = "json",
    stream: Annotated[bool, Form()] = False,
) -> Response:
    """Speech in any language the model knows, as English text (an English-only model
    transcribes English)."""
    return await _transcribe(
        request,
        "translate",
        host,
        worker,
        settings,
        file,
        None,
        prompt,
        temperature,
        response_format,
        stream,
    )


@router.post("/v1/audio/speech")
async def speech(
    request: Request,
    body: SpeechRequest,
    host: HostDep,
    worker: WorkerDep,
    settings: SettingsDep,
) -> Response:
    _needs(settings, "tts", "/v1/audio/speech")
    fmt = body.response_format
    if fmt not in SPEECH_FORMATS:
        raise InvalidRequest(
            f"response_format must be one of {', '.join(SPEECH_FORMATS)}, not {fmt!r}",
            param="response_format",
        )
    if len(body.input) > settings.max_input_chars:
        raise InvalidRequest(
            f"input is longer than this model's {settings.max_input_chars} characters",
            param="input",
        )
    speaker: Speaker = host.ready_model()
    voice = pick_voice(speaker.voices, body.voice) if body.voice else speaker.voices[0]
    job = SpeakJob(text=body.input, voice=voice, speed=body.speed)

    def produce() -> Iterator[bytes]:
        encoder = Encoder(fmt, voice.sample_rate)
        yield b""  # started: an error before this is an error answer, not a cut stream
        for pcm in speaker.speak(job):
            piece = encoder.feed(pcm)
            if piece:
                yield piece
        yield encoder.finish()

    pieces: Stream[bytes] = await worker.stream(produce)
    return StreamingResponse(
        _audio(pieces),
        media_type=SPEECH_MEDIA_TYPES[fmt],
        headers={SAMPLE_RATE_HEADER: str(voice.sample_rate), "X-Accel-Buffering": "no"},
    )


async def _audio(pieces: Stream[bytes]) -> AsyncIterator[bytes]:
    async for piece in pieces:
        if piece:
            yield piece


@router.get("/v1/audio/voices")
async def voices(host: HostDep, settings: SettingsDep) -> dict[str, Any]:
    _needs(settings, "tts", "/v1/audio/voices")
    speaker: Speaker = host.ready_model()
    return {"object": "list", "data": [v.wire() for v in speaker.voices]}


# --------------------------------------------------------------------- the app


def default_loader(settings: Settings) -> object:
    """The real model of the settings' type (imported here: the port is up first)."""
    if settings.type == "stt":
        from audioserver.stt import WhisperTranscriber

        return WhisperTranscriber(settings)
    from audioserver.tts import PiperSpeaker

    return PiperSpeaker(settings)


def create_app(settings: Settings, loader: Loader | None = None) -> FastAPI:
    """Build the app. `loader` builds the model (default: faster-whisper or Piper by the
    settings' type). Loading starts in the lifespan, in the background."""
    load = loader or default_loader

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = Worker(settings.queue_limit)
        host: ModelHost[object] = ModelHost(settings, load, worker)
        app.state.worker, app.state.host = worker, host
        host.start()
        try:
            yield
        finally:
            worker.shutdown()

    app = FastAPI(
        title="homelab-ai audio server",
        description="OpenAI audio API over one speech model (faster-whisper or Piper).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(router)
    install_error_handlers(
        app, MODEL_SERVER, validation_error=RequestValidationError, name="audio server"
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, source=MODEL_SERVER)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(UpstreamKey, key=key)
    return app
