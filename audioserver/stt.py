"""Speech to text: the `Transcriber` protocol, its faster-whisper implementation, and the
answer formats of OpenAI's transcription API.

`Transcriber.transcribe(job)` is a generator run on the worker thread: it first yields the
`Heard` (language and duration, once the audio is decoded), then each `Segment` as
Whisper finishes it, so a stream can send segments while the rest is still being heard.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from audioserver.errors import InvalidRequest, LoadFailed
from audioserver.formats import decode
from audioserver.meter import Meter
from audioserver.settings import Settings

Task = Literal["transcribe", "translate"]
TEXT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


@dataclass(frozen=True)
class TranscribeJob:
    audio: bytes
    task: Task = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0


@dataclass(frozen=True)
class Heard:
    """What is known once the audio is decoded and its language chosen."""

    language: str
    duration: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0

    def verbose(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seek": 0,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "tokens": self.tokens,
            "temperature": self.temperature,
            "avg_logprob": self.avg_logprob,
            "compression_ratio": self.compression_ratio,
            "no_speech_prob": self.no_speech_prob,
        }


class Transcriber(Protocol):
    multilingual: bool
    """False for an English-only model (``*.en``): it cannot translate other languages."""
    meter: Meter
    """Whole seconds heard of the audio's, while `transcribe` runs."""

    def transcribe(self, job: TranscribeJob) -> Iterator[Heard | Segment]:
        """Yield a `Heard`, then the segments. Blocks; raises UndecodableAudio."""
        ...


class WhisperTranscriber:
    """A faster-whisper (CTranslate2) Whisper model."""

    def __init__(self, settings: Settings) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise LoadFailed(f"faster-whisper is not installed: {exc}") from exc
        compute = settings.compute_type
        if compute == "default":
            compute = "int8" if settings.device == "cpu" else "float16"
        try:
            self._model = WhisperModel(settings.model, device=settings.device, compute_type=compute)
        except Exception as exc:
            raise LoadFailed(f"cannot load the Whisper model {settings.model!r}: {exc}") from exc
        self.multilingual = bool(self._model.model.is_multilingual)
        self.meter = Meter()

    def transcribe(self, job: TranscribeJob) -> Iterator[Heard | Segment]:
        samples = decode(job.audio)
        language = job.language
        if not self.multilingual:
            if language not in (None, "en"):
                raise InvalidRequest(
                    f"this model hears English only, not {language!r}", param="language"
                )
            language = "en"
        segments, info = self._model.transcribe(
            samples,
            task=job.task,
            language=language,
            initial_prompt=job.prompt or None,
            temperature=job.temperature or 0.0,
            vad_filter=False,
        )
        yield Heard(language=info.language, duration=float(info.duration))
        self.meter.begin(math.ceil(info.duration))
        try:
            yield from self._segments(segments)
        finally:
            self.meter.end()

    def _segments(self, segments: Iterator[Any]) -> Iterator[Segment]:
        for number, seg in enumerate(segments):
            self.meter.advance(int(seg.end))
            yield Segment(
                id=number,
                start=float(seg.start),
                end=float(seg.end),
                text=seg.text,
                tokens=list(seg.tokens),
                temperature=float(seg.temperature or 0.0),
                avg_logprob=float(seg.avg_logprob),
                compression_ratio=float(seg.compression_ratio),
                no_speech_prob=float(seg.no_speech_prob),
            )

    def warm_up(self) -> None:
        """Hear one second of silence: a broken model fails here, not on a client."""
        segments, _ = self._model.transcribe(np.zeros(16000, dtype=np.float32), language="en")
        for _ in segments:
            pass


def whole_text(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments).strip()


def _stamp(seconds: float, sep: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def render(
    fmt: str, task: Task, heard: Heard, segments: list[Segment]
) -> tuple[str | dict[str, Any], str]:
    """The answer in `fmt` and its media type: a JSON object (json, verbose_json) or text."""
    text = whole_text(segments)
    if fmt == "json":
        return {"text": text}, "application/json"
    if fmt == "verbose_json":
        return {
            "task": task,
            "language": heard.language,
            "duration": round(heard.duration, 3),
            "text": text,
            "segments": [s.verbose() for s in segments],
        }, "application/json"
    if fmt == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        blocks = [
            f"{n}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text.strip()}\n"
            for n, s in enumerate(segments, 1)
        ]
        return "\n".join(blocks), "application/x-subrip; charset=utf-8"
    blocks = [
        f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks), "text/vtt; charset=utf-8"
