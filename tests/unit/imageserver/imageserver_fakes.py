"""Fakes and helpers for the image server's unit tier.

`FakeModel` implements `imageserver.model.ImageModel` (the protocol the real
`DiffusersModel` implements): it draws a flat image of the requested size and
records every job. A `gate` (threading.Event) makes its calls block until a
test opens it, and `started` tells the test a call is running on the worker
thread, so queue and responsiveness tests need no sleeps.
`serve()` runs the app's lifespan and hands back an httpx client over ASGI.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from PIL import Image

from imageserver.api import create_app
from imageserver.errors import GenerationFailed, OutOfMemory
from imageserver.model import Capabilities, EditJob, GenerateJob
from imageserver.settings import Settings

TEXT2IMAGE = Capabilities(pipeline="FakeText2ImagePipeline", generate=True, edit=True, inpaint=True)
EDIT_ONLY = Capabilities(pipeline="FakeEditPipeline", generate=False, edit=True, inpaint=False)
GENERATE_ONLY = Capabilities(pipeline="FakeOnlyPipeline", generate=True, edit=False, inpaint=False)


@dataclass
class FakeModel:
    capabilities: Capabilities = TEXT2IMAGE
    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    jobs: list[GenerateJob | EditJob] = field(default_factory=list)
    fail_next: Exception | None = None
    threads: set[str] = field(default_factory=set)
    stopped: list[GenerateJob | EditJob] = field(default_factory=list)
    """Jobs stopped mid-run because their `stop` was set."""

    def __post_init__(self) -> None:
        self.gate.set()  # open unless a test closes it

    def _work(self, job: GenerateJob | EditJob) -> list[Image.Image]:
        self.threads.add(threading.current_thread().name)
        self.started.set()
        deadline = time.monotonic() + 30
        while not self.gate.wait(timeout=0.01):  # like denoising steps, each checks job.stop
            if job.stop.is_set():
                self.stopped.append(job)
                raise GenerationFailed("stopped: nobody waits for it")
            if time.monotonic() > deadline:
                raise GenerationFailed("test gate never opened")
        self.jobs.append(job)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return [Image.new("RGB", (job.width, job.height), (i * 40, 0, 0)) for i in range(job.n)]

    def generate(self, job: GenerateJob) -> list[Image.Image]:
        return self._work(job)

    def edit(self, job: EditJob) -> list[Image.Image]:
        return self._work(job)


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": "fake/model",
        "served_name": "fake-image",
        "device": "cpu",
        "sizes": "64x64,128x64",
        "max_n": 3,
        "steps": 2,
        "queue_limit": 2,
        "max_upload_bytes": 64 * 1024,
        "warmup_steps": 1,
    }
    values.update(overrides)
    return Settings(**values)


def loader_for(
    model: FakeModel, gate: threading.Event | None = None
) -> Callable[[Settings], FakeModel]:
    """A loader returning `model`, optionally blocking until `gate` is set."""

    def load(_settings: Settings) -> FakeModel:
        if gate is not None and not gate.wait(timeout=30):
            raise RuntimeError("test load gate never opened")
        return model

    return load


@asynccontextmanager
async def serve(
    app_settings: Settings, loader: Callable[[Settings], object]
) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan; yield a client talking to it in-process."""
    app = create_app(app_settings, loader)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://imageserver") as client:
            yield client


def png(size: tuple[int, int], mode: str = "RGB", color: object = (10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")  # type: ignore[arg-type]
    return buffer.getvalue()


def decode_b64_png(b64: str) -> Image.Image:
    import base64

    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


OOM = OutOfMemory("out of memory on cuda making 1 image(s) of 64x64: CUDA out of memory")
