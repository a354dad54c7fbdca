"""Fakes of the audio server's models (unit tier), and ways to serve the real app.

`FakeTranscriber` hears the segments it was given (after checking the upload decodes:
the real `formats.decode`); `FakeSpeaker` speaks each sentence as a block of PCM, and
can hold back after the first sentence until the test lets it go on (`gate`)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
import wave
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import uvicorn

from audioserver.api import create_app
from audioserver.formats import decode
from audioserver.meter import Meter
from audioserver.settings import Settings
from audioserver.stt import Heard, Segment, TranscribeJob
from audioserver.tts import SpeakJob, Voice
from tests.uvicorn_server import QuickServer

KEY = "audio-upstream-k3y"
RATE = 16000


def settings(kind: str = "stt", **overrides: object) -> Settings:
    values: dict[str, object] = {
        "type": kind,
        "model": "fake/voice.onnx" if kind == "tts" else "fake/whisper",
        "served_name": f"fake-{kind}",
        "queue_limit": 1,
        "max_upload_bytes": 64 * 1024,
        "max_input_chars": 200,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def wav(seconds: float = 0.5, rate: int = RATE) -> bytes:
    """A WAV of a quiet tone (real audio PyAV decodes)."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 3000).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


class FakeTranscriber:
    multilingual = True

    def __init__(self, texts: list[str] | None = None) -> None:
        self.texts = texts or [" Hello there.", " General Kenobi."]
        self.jobs: list[TranscribeJob] = []
        self.fail_after: int | None = None
        """Raise after this many segments (a model that breaks mid-stream)."""

    def transcribe(self, job: TranscribeJob) -> Iterator[Heard | Segment]:
        self.jobs.append(job)
        samples = decode(job.audio)
        duration = samples.size / RATE
        yield Heard(language=job.language or "en", duration=duration)
        step = duration / len(self.texts)
        for number, text in enumerate(self.texts):
            if self.fail_after is not None and number >= self.fail_after:
                raise RuntimeError("the fake model broke")
            yield Segment(number, number * step, (number + 1) * step, text)


class FakeSpeaker:
    def __init__(self, rate: int = 22050) -> None:
        self.voices = [Voice("fake-voice", "fake", "en_US", rate)]
        self.jobs: list[SpeakJob] = []
        self.gate: threading.Event | None = None
        """When set: after the first sentence, wait for it (the rest not yet spoken)."""
        self.spoken = 0
        """Sentences synthesised so far."""
        self.meter = Meter()

    def speak(self, job: SpeakJob) -> Iterator[bytes]:
        self.jobs.append(job)
        sentences = [s for s in job.text.split(".") if s.strip()]
        self.meter.begin(len(sentences))
        try:
            for number, _ in enumerate(sentences):
                if number == 1 and self.gate is not None and not self.gate.wait(timeout=30):
                    raise RuntimeError("the test never let the fake speaker go on")
                self.spoken += 1
                self.meter.advance(self.spoken)
                yield b"\x01\x00" * int(self.voices[0].sample_rate * 0.1 / job.speed)
        finally:
            self.meter.end()


def loader_for(model: object, gate: threading.Event | None = None) -> Callable[[Settings], object]:
    def load(_settings: Settings) -> object:
        if gate is not None and not gate.wait(timeout=30):
            raise RuntimeError("test load gate never opened")
        return model

    return load


@contextlib.asynccontextmanager
async def serve(
    app_settings: Settings, loader: Callable[[Settings], object]
) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan; yield a client talking to it in-process (whole answers)."""
    app = create_app(app_settings, loader)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://audio") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_http(app: object) -> AsyncIterator[str]:
    """Serve an ASGI app on loopback with uvicorn (answers really streamed); its URL."""
    for _ in range(5):
        port = _free_port()
        server = QuickServer(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
        )
        task = asyncio.create_task(server.serve())
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if server.started:
            break
        server.should_exit = True
        with contextlib.suppress(SystemExit):
            await task
    else:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def wait_ready(client: httpx.AsyncClient) -> dict:
    for _ in range(2000):
        body = (await client.get("/health")).json()
        if body["status"] != "loading":
            return body
        await asyncio.sleep(0.01)
    raise AssertionError("the fake model never loaded")
