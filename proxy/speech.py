"""Speech for the proxy's own callers of the audio server: MCP tools and jobs.

The audio server's protocol (one process per stt or tts model; the contract of issue 24):
``POST /v1/audio/transcriptions`` (OpenAI multipart) with ``stream=true`` answers SSE, one
``transcript.text.delta`` event per recognised segment (``delta``, ``segment`` with its
``id``, ``start`` and ``end`` seconds, and ``duration``, the audio's total seconds) and a
final ``transcript.text.done`` with the whole ``text``; progress is ``end / duration``.

Here, once for both callers:

- `read_audio`: an audio argument as bytes: a data URL (or plain base64), or a link to
  this proxy's own generated audio (``…/v1/audio/files/<id>.<ext>``, the caller's own
  only). A foreign http(s) URL is refused: the proxy never fetches one.
- `transcription_form`: the multipart body of a streamed transcription request.
- `read_transcript`: the SSE stream of a `proxy.modelcall.ModelCall` read into a
  `Transcript`, each segment handed to `on_segment` as it comes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.audio import KNOWN, MEDIA, AudioStore, sniff_audio
from proxy.errors import UpstreamError
from proxy.keys import Principal
from proxy.modelcall import ModelCall

AUDIO_PATH = "/v1/audio/files/"
"""Where the proxy serves generated audio (`proxy.routes_ops.stored_audio`)."""
_OWN_PATH = re.compile(r"^(?:.*)/v1/audio/files/([A-Za-z0-9_-]{32}\.(?:" + "|".join(MEDIA) + r"))$")
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w-]+=[^;,]*)*;base64,", re.IGNORECASE)
TRANSCRIPT_FIELDS = ("language", "prompt", "temperature")
"""The optional fields of a transcription request the proxy's callers may set."""


class AudioArgumentError(ValueError):
    """An audio argument the proxy cannot take: `message` says why (for `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


def own_audio_name(value: str) -> str | None:
    """The stored file's name when `value` is a link to this proxy's audio (any host: the
    owner check is what guards it), else None."""
    value = value.strip()
    if not value.startswith(("http://", "https://", "/")):
        return None
    match = _OWN_PATH.match(urlsplit(value).path)
    return match.group(1) if match else None


def decode_data_url(value: str, param: str, limit: int) -> bytes:
    """The bytes of a base64 data URL (``data:audio/wav;base64,...``) or of plain base64,
    at most `limit` of them, checked to be an audio file we know by its bytes."""
    value = value.strip()
    head = _DATA_URL.match(value[:300])
    if value.startswith("data:") and head is None:
        raise AudioArgumentError(param, "a data URL must be base64: data:audio/wav;base64,...")
    encoded = value[head.end() :] if head else value
    if len(encoded) > limit * 4 // 3 + 8:
        raise AudioArgumentError(param, f"the audio is larger than {limit} bytes")
    try:
        data = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioArgumentError(param, "is not valid base64") from exc
    return checked_audio(data, param, limit)


def checked_audio(data: bytes, param: str, limit: int) -> bytes:
    """`data` if it is an audio file we know (`proxy.audio.KNOWN`) of at most
    `limit` bytes; else AudioArgumentError."""
    if len(data) > limit:
        raise AudioArgumentError(param, f"the audio is larger than {limit} bytes")
    if sniff_audio(data) is None:
        raise AudioArgumentError(param, f"is not a {KNOWN} audio file")
    return data


async def read_audio(
    store: AudioStore, value: str, param: str, limit: int, who: Principal
) -> bytes:
    """The bytes of an audio argument (module docstring); AudioArgumentError otherwise."""
    value = value.strip()
    if not value:
        raise AudioArgumentError(param, "is required: a data URL or a link this proxy returned")
    name = own_audio_name(value)
    if name is not None:
        found = await asyncio.to_thread(store.get_owned, name, who)
        if found is None:
            raise AudioArgumentError(param, "that audio link has expired or is not this key's")
        return checked_audio(found[0], param, limit)
    if value.startswith(("http://", "https://")):
        raise AudioArgumentError(
            param,
            "an http(s) URL must be an audio link this proxy returned (…/v1/audio/files/<id>); "
            "the proxy fetches nothing else: send the audio as a data URL",
        )
    return decode_data_url(value, param, limit)


def multipart(fields: dict[str, Any], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type: `fields` as text parts, `files`
    as ``name: (filename, bytes)`` parts."""
    boundary = "homelab-" + secrets.token_hex(12)
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += str(value).encode() + b"\r\n"
    for name, (filename, data) in files.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def transcription_form(model: str, audio: bytes, options: dict[str, Any]) -> tuple[bytes, str]:
    """The streamed transcription request for `model` (`TRANSCRIPT_FIELDS` from
    `options`, the rest ignored)."""
    fields: dict[str, Any] = {"model": model, "stream": "true", "response_format": "json"}
    for name in TRANSCRIPT_FIELDS:
        if options.get(name) is not None:
            fields[name] = options[name]
    ext = sniff_audio(audio) or "wav"
    return multipart(fields, {"file": (f"audio.{ext}", audio)})


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    """A transcription read from the audio server's stream."""

    text: str = ""
    duration: float | None = None
    segments: list[Segment] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        """The job's / the tool's structured result (like OpenAI's ``verbose_json``)."""
        return {
            "text": self.text,
            "duration": self.duration,
            "segments": [vars(s) for s in self.segments],
        }


OnSegment = Callable[[Segment, float | None], Awaitable[None] | None]
"""Called with each segment and the progress so far (0..1; None without a duration)."""


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def read_transcript(call: ModelCall, on_segment: OnSegment | None = None) -> Transcript:
    """Read a streamed transcription answer to its ``transcript.text.done`` event.

    Raises UpstreamError for an error event, or a stream that ends without the done
    event (and as `ModelCall.events` does when it breaks off)."""
    out = Transcript()
    done = False
    async for data in call.events():
        if not data or data == "[DONE]":
            continue
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        if isinstance(event.get("error"), dict):
            message = str(event["error"].get("message") or "the transcription failed")
            raise UpstreamError(f"The audio server failed: {message}", code="model_server_error")
        kind = event.get("type")
        if kind == "transcript.text.delta":
            given = event.get("segment")
            raw: dict[str, Any] = given if isinstance(given, dict) else {}
            seg = Segment(
                id=int(raw.get("id") or len(out.segments)),
                start=_number(raw.get("start")) or 0.0,
                end=_number(raw.get("end")) or 0.0,
                text=str(event.get("delta") or ""),
            )
            out.segments.append(seg)
            duration = _number(event.get("duration"))
            if duration is not None:
                out.duration = duration
            fraction = min(1.0, seg.end / duration) if duration else None
            if on_segment is not None:
                maybe = on_segment(seg, fraction)
                if maybe is not None:
                    await maybe
        elif kind == "transcript.text.done":
            out.text = str(event.get("text") or "")
            done = True
    if not done:
        raise UpstreamError(
            f"The transcription stream of '{call.model}' ended without its last event",
            code="stream_interrupted",
        )
    return out
