"""Running one job through the one model call (`proxy.modelcall`).

A job is an ordinary `/v1` request without a client: the same lease pool, the same
manager queue, retry and dead-server report, the same metrics and image URLs; it is
not interactive, so jobs yield to clients. A streamed chat is read from the model
server's own events as they come (`ModelCall.events`), and each content delta is
handed to `on_delta` (the dispatcher turns them into `token` events); a stream that
breaks off is the job's error. Cancelling `run_job` cancels the call, which closes
the upstream connection and releases the lease, exactly like a client disconnect.

A job runs as its owner: `run_job` sets `proxy.keys.PRINCIPAL` to the owner's principal,
looked up by name in the key ring when the job starts (so `proxy.modelcall` sees the
same principal as for that key's own requests, and a picture it stores is the owner's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.context import ProxyContext
from proxy.errors import InvalidRequest, KeyRevoked, NotFound, ProxyError, UpstreamError
from proxy.forward import answer_with_urls
from proxy.jobs.records import Job
from proxy.keys import OPEN, PRINCIPAL, KeyRing, Principal
from proxy.modelcall import ModelCall
from proxy.speech import (
    AudioArgumentError,
    Segment,
    checked_audio,
    decode_data_url,
    read_transcript,
    transcription_form,
)

TRANSCRIPTIONS = "/v1/audio/transcriptions"
"""A transcription job: its body's ``file`` is a data URL or a file id (`audio_of`)."""
OnSegment = Callable[[Segment, float | None], None]


@dataclass
class Outcome:
    """What a job's model call produced: an HTTP status and the parsed answer."""

    status: int
    result: Any = None
    """The answer's JSON (for a streamed chat: the assembled message, see `ChatAssembler`)."""
    error: dict[str, Any] | None = None
    """The OpenAI error envelope's inner object when the call failed."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.status < 400


@dataclass
class ChatAssembler:
    """Builds the final chat message from `chat.completion.chunk` events."""

    content: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Any = None
    model: str | None = None
    error: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> str:
        """Take one chunk; return its content delta ('' if none)."""
        if isinstance(chunk.get("error"), dict):
            self.error = chunk["error"]
            return ""
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        delta_text = ""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                self.content.append(text)
                delta_text += text
            for call in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(
                    int(call.get("index", 0)),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                if fn.get("name"):
                    slot["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["function"]["arguments"] += fn["arguments"]
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return delta_text

    def result(self) -> dict[str, Any]:
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {
            "text": "".join(self.content),
            "tool_calls": calls or None,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "model": self.model,
        }


UNOWNED = Principal(name="")
"""Who runs a job stored before jobs had owners (every model, class normal)."""


def job_principal(ring: KeyRing, owner: str | None) -> Principal | None:
    """The principal a job of `owner` runs as, looked up by name in the key ring now (so
    a key's current models, class and limits apply); None when that key was revoked since.

    An open proxy runs everything as `OPEN` (an owner named before it opened: under that
    name). A job stored before owners existed runs as `UNOWNED`."""
    if owner is None:
        return UNOWNED
    if ring.open:
        return OPEN if owner == OPEN.name else Principal(name=owner, admin=True)
    return ring.by_name(owner)


async def run_job(
    ctx: ProxyContext,
    job: Job,
    on_delta: Callable[[str], None] | None = None,
    on_segment: OnSegment | None = None,
) -> Outcome:
    """Call the model for `job` (its endpoint, model, body) as its owner
    (`proxy.keys.PRINCIPAL` is the owner's principal for the call) and return the outcome.
    A job whose key was revoked since it was accepted fails without a model call
    (`KeyRevoked`, 401 ``key_revoked``). A transcription streams from the audio server:
    each segment's text goes to `on_delta` and the segment with the progress so far to
    `on_segment`. Never raises a ProxyError (it becomes the outcome's error). Cancellable."""
    principal = job_principal(ctx.ring, job.owner)
    if principal is None:
        return _failed(
            KeyRevoked(
                f"The key {job.owner!r} that submitted this job was revoked; the job did not run."
            )
        )
    who = PRINCIPAL.set(principal)
    try:
        if job.endpoint == TRANSCRIPTIONS:
            return await _transcribe(ctx, job, principal, on_delta, on_segment)
        return await _call(ctx, job, principal, on_delta)
    except ProxyError as exc:
        return _failed(exc)
    finally:
        PRINCIPAL.reset(who)


def _failed(exc: ProxyError) -> Outcome:
    envelope = exc.envelope()
    return Outcome(status=exc.status, result=envelope, error=envelope["error"])


async def _call(
    ctx: ProxyContext, job: Job, principal: Principal, on_delta: Callable[[str], None] | None
) -> Outcome:
    call = ctx.model_calls.call(
        job.model,
        job.endpoint,
        orjson.dumps(job.body),
        "application/json",
        interactive=False,
    )
    async with call:
        if call.streamed:
            return await _streamed(call, on_delta)
        raw = call.body or b""
        url_base = job.url_base
        if url_base is not None:
            raw = await answer_with_urls(ctx.images, raw, url_base, principal.name)
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = {"raw": raw[:2000].decode("utf-8", "replace")}
        return Outcome(status=call.status, result=parsed)


async def _streamed(call: ModelCall, on_delta: Callable[[str], None] | None) -> Outcome:
    """A streamed chat, assembled from the model server's own events as they come."""
    chat = ChatAssembler()
    async for data in call.events():
        if data == "[DONE]" or not data:
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if isinstance(chunk, dict):
            text = chat.feed(chunk)
            if text and on_delta is not None:
                on_delta(text)
    if chat.error is not None:
        return Outcome(status=502, error=chat.error)
    return Outcome(status=call.status, result=chat.result())


async def audio_of(ctx: ProxyContext, value: object, who: Principal, limit: int) -> bytes:
    """The audio of a transcription job's ``file``: a data URL (or base64), or the id of a
    file `who` uploaded (``purpose=user_data``). Raises InvalidRequest / NotFound (404
    ``file_not_found``, also for another key's file), naming ``file``."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("'file' must be a data URL or an uploaded file's id.", param="file")
    try:
        if value.startswith("file"):
            store = ctx.jobs.store
            meta = await store.get_file(value) if len(value) <= 200 else None
            if meta is None or not who.owns(meta.owner) or meta.expired(time.time()):
                raise NotFound(f"No file {value[:200]!r}.", param="file", code="file_not_found")
            return checked_audio(await store.file_content(value) or b"", "file", limit)
        return await asyncio.to_thread(decode_data_url, value, "file", limit)
    except AudioArgumentError as exc:
        raise InvalidRequest(f"'file' {exc.message}.", param="file") from exc


async def _transcribe(
    ctx: ProxyContext,
    job: Job,
    principal: Principal,
    on_delta: Callable[[str], None] | None,
    on_segment: OnSegment | None,
) -> Outcome:
    """A transcription job through the audio server's stream (`proxy.speech`)."""
    audio = await audio_of(ctx, job.body.get("file"), principal, ctx.settings.max_upload_bytes)
    body, ctype = transcription_form(job.model, audio, job.body)

    def said(segment: Segment, fraction: float | None) -> None:
        if on_delta is not None and segment.text:
            on_delta(segment.text)
        if on_segment is not None:
            on_segment(segment, fraction)

    call = ctx.model_calls.call(job.model, TRANSCRIPTIONS, body, ctype, interactive=False)
    async with call:
        if not call.streamed:
            raise UpstreamError(
                f"'{job.model}' answered a streamed transcription with {call.answer_type}",
                code="model_server_error",
            )
        transcript = await read_transcript(call, said)
    return Outcome(status=call.status, result=transcript.result())
