"""Unit-tier stand-ins for the proxy's two peers, speaking their real HTTP contracts.

- `FakeManager`: a small FastAPI app implementing the manager's API as
  docs/architecture.md defines it, answering with the `wire` types the real manager
  sends (bearer token, /v1/models, leases with
  acquire/renew/release, /v1/events SSE, OpenAI error envelopes with
  ``"source": "manager"``). One model resident at a time; a swap takes
  ``swap_delay`` seconds and is announced on the event stream. Knobs (`busy`,
  `fail_start`) make it answer 429 / 503; counters let tests see what the proxy did.
- `FakeModelServer`: an aiohttp.web app shaped like vLLM's OpenAI server and the
  image server. It records every request's raw body, and the last user message
  steers it: ``"fail"`` (500, vLLM's old error shape), ``"bad"`` (400, vLLM's new
  shape), ``"die"`` (streams two chunks then drops the connection), ``"slow"``
  (streams one chunk, then waits for `gate` before the rest).

Both are served for real on loopback by `serve_asgi` / `serve_aiohttp`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.policy
import io
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from email.parser import BytesParser

import orjson
import uvicorn
from aiohttp import web
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image

from tests.uvicorn_server import QuickServer
from wire.errors import MANAGER, envelope
from wire.events import ContentionEvent, StateEvent, SwapEvent
from wire.models import ModelList, ModelStatus

PORTS = range(18400, 18500)
TOKEN = "fm-7Qx2kLp9Vd4Rw8Zs"


def free_port() -> int:
    """A port of this suite's range (18400-18499) that is free now, picked at random so
    that two runs at once (the machine is shared) rarely reach for the same one."""
    for port in random.sample(PORTS, len(PORTS)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18400-18499")


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nothing else takes it) but not listening."""
    with socket.socket() as sock:
        for port in PORTS:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            yield port
            return
    raise RuntimeError("no free port in 18400-18499")


@contextlib.asynccontextmanager
async def serve_asgi(app) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on the running loop; yields its base URL.

    A port taken between picking and binding (another test run) means another try."""
    for _ in range(5):
        port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        server = QuickServer(config)
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


@contextlib.asynccontextmanager
async def serve_aiohttp(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    for attempt in range(5):
        port = free_port()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            break
        except OSError:
            if attempt == 4:
                raise
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def png_bytes(
    width: int = 8, height: int = 8, colour: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


def _envelope(status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    etype = {
        401: "authentication_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error")
    body = envelope(message, type=etype, code=code, source=MANAGER)
    return JSONResponse(body, status_code=status, headers=headers)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class FakeManager:
    def __init__(
        self, models: dict[str, dict], base_url: str, *, swap_delay: float = 0.0, ttl: float = 60.0
    ):
        self.models = models
        self.base_url = base_url
        self.urls: dict[str, str] = {}
        """A model's own server where it has one (else `base_url`)."""
        self.swap_delay = swap_delay
        self.ttl = ttl
        self.resident: str | None = None
        self.states = {name: "stopped" for name in models}
        self.leases: dict[str, str] = {}
        self.granted = 0
        self.lease_requests: list[dict] = []
        """Every POST /v1/leases body, in order (who waits: `key_name`, `key_class`)."""
        self.granted_ids: list[str] = []
        """Every lease id granted, in order (`leases` forgets the released ones)."""
        self.released: list[str] = []
        self.renewed: list[str] = []
        self.renew_gate: asyncio.Event | None = None
        """When set, renewals are answered only once it is set (held in flight)."""
        self.renewing = 0
        """Renewal requests in flight now."""
        self.abandoned = 0
        self.busy = False
        self.max_uses: int | None = 8
        """What lease answers carry as max_uses (the real manager: 0, unbounded, while no
        other model waits; 1 under contention); None leaves the field out (a manager
        before max_uses)."""
        self.max_concurrent: int | None = 8
        """What lease answers carry as max_concurrent; None leaves the field out (1)."""
        self.contended = False
        """What renewals answer as ``contended`` (another model waits)."""
        self.gate: asyncio.Event | None = None
        """When set, lease answers wait until it is set (a grant held back in the queue)."""
        self.fail_start: set[str] = set()
        self.start_logs = ""
        """Log lines a failed start's message carries (as the real manager's does)."""
        self.model_fetches = 0
        self.checked: list[str] = []
        """Models a proxy reported unreachable (POST /v1/models/{name}/check)."""
        self.restart_on_check: str | None = None
        """When set, a check "restarts" the model there (base_url becomes this)."""
        self.gpu_budget_mib: int | None = None
        """The GPU budget its list says (the real manager's ``manager.budget``)."""
        self.waiting: dict[str, int] = {}
        """Lease requests its list says wait, per model."""
        self.subscribers: list[asyncio.Queue] = []
        self._lock = asyncio.Lock()
        self.app = self._build()

    def status(self, name: str) -> dict:
        """The model's `wire.models.ModelStatus`, as the real manager sends it."""
        spec = self.models[name]
        image = spec["type"] == "image"
        return ModelStatus(
            id=name,
            type=spec["type"],
            state=self.states[name],
            since=time.time(),
            in_flight=sum(1 for m in self.leases.values() if m == name),
            waiting=self.waiting.get(name, 0),
            gpu_memory_mib=spec.get("gpu_memory_mib"),
            description=f"fake {spec['type']} model",
            sizes=spec.get("sizes", ["64x64"]) if image else None,
            max_n=spec.get("max_n", 2) if image else None,
        ).to_wire()

    def publish_contention(self, *models: str) -> None:
        """Send a ``contention`` event naming `models`, as the real manager does when
        another model starts waiting for their memory."""
        event = ContentionEvent(models=list(models), at=time.time())
        self._publish(event.kind, event.payload())

    def _publish(self, event: str, data: dict) -> None:
        for queue in self.subscribers:
            queue.put_nowait((event, data))

    def _set_state(self, name: str, state: str) -> None:
        previous, self.states[name] = self.states[name], state
        event = StateEvent(model=name, state=state, previous=previous, at=time.time())
        self._publish(event.kind, event.payload())

    async def _make_resident(self, name: str) -> None:
        async with self._lock:
            if self.resident != name:
                previous = self.resident
                if previous:
                    self._set_state(previous, "stopping")
                    self._set_state(previous, "stopped")
                self._set_state(name, "starting")
                await asyncio.sleep(self.swap_delay)
                self._set_state(name, "ready")
                self.resident = name
                swap = SwapEvent(from_model=previous, to=name, at=time.time())
                self._publish(swap.kind, swap.payload())

    async def _grantable(self, name: str) -> None:
        await self._make_resident(name)
        if self.gate is not None:
            await self.gate.wait()

    def _build(self) -> FastAPI:
        app = FastAPI()
        fake = self

        @app.middleware("http")
        async def auth(request: Request, call_next):
            if (
                request.url.path != "/healthz"
                and request.headers.get("authorization") != f"Bearer {TOKEN}"
            ):
                return _envelope(401, "bad manager token", "unauthorized")
            return await call_next(request)

        @app.get("/healthz")
        async def healthz():
            return {"status": "ok"}

        @app.get("/v1/models")
        async def models():
            fake.model_fetches += 1
            data = [ModelStatus.model_validate(fake.status(n)) for n in sorted(fake.models)]
            return ModelList(data=data, gpu_budget_mib=fake.gpu_budget_mib).to_wire()

        @app.post("/v1/models/{name}/check")
        async def check(name: str):
            fake.checked.append(name)
            if fake.restart_on_check is not None:
                fake.base_url = fake.restart_on_check
            return fake.status(name)

        @app.post("/v1/leases")
        async def lease(request: Request):
            body = await request.json()
            fake.lease_requests.append(body)
            name = body.get("model")
            if name not in fake.models:
                known = ", ".join(sorted(fake.models))
                return _envelope(
                    404,
                    f"model {name!r} is not in models.json; known models: {known}",
                    "model_not_found",
                )
            if fake.busy:
                return _envelope(429, "queue full", "busy", headers={"Retry-After": "3"})
            if name in fake.fail_start:
                fake.states[name] = "failed"
                logs = f"\nlast log lines:\n{fake.start_logs}" if fake.start_logs else ""
                return _envelope(
                    503, f"model {name!r} failed to start: exit code 1{logs}", "model_start_failed"
                )
            # Like the real manager: a caller that hangs up leaves the queue.
            work = asyncio.create_task(fake._grantable(name))
            gone = asyncio.create_task(_disconnected(request))
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                work.cancel()
                fake.abandoned += 1
                return Response(status_code=499)
            gone.cancel()
            lease_id = uuid.uuid4().hex
            fake.leases[lease_id] = name
            fake.granted += 1
            fake.granted_ids.append(lease_id)
            answer = {
                "lease_id": lease_id,
                "model": name,
                "type": fake.models[name]["type"],
                "base_url": fake.urls.get(name, fake.base_url),
                "ttl": fake.ttl,
            }
            if fake.max_uses is not None:
                answer["max_uses"] = fake.max_uses
            if fake.max_concurrent is not None:
                answer["max_concurrent"] = fake.max_concurrent
            return answer

        @app.post("/v1/leases/{lease_id}/renew")
        async def renew(lease_id: str):
            if lease_id not in fake.leases:
                return _envelope(404, "no such lease", "lease_not_found")
            fake.renewed.append(lease_id)
            fake.renewing += 1
            try:
                if fake.renew_gate is not None:
                    await fake.renew_gate.wait()
            finally:
                fake.renewing -= 1
            return {"lease_id": lease_id, "ttl": fake.ttl, "contended": fake.contended}

        @app.delete("/v1/leases/{lease_id}")
        async def release(lease_id: str):
            if fake.leases.pop(lease_id, None) is None:
                return _envelope(404, "no such lease", "lease_not_found")
            fake.released.append(lease_id)
            return Response(status_code=204)

        @app.get("/v1/events")
        async def events():
            queue: asyncio.Queue = asyncio.Queue()
            fake.subscribers.append(queue)

            async def stream():
                try:
                    snapshot = [fake.status(n) for n in sorted(fake.models)]
                    yield b"event: snapshot\ndata: " + orjson.dumps(snapshot) + b"\n\n"
                    while True:
                        event, data = await queue.get()
                        yield (
                            f"event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"
                        )
                finally:
                    fake.subscribers.remove(queue)

            return StreamingResponse(stream(), media_type="text/event-stream")

        return app


class FakeModelServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes, dict]] = []
        self.gate = asyncio.Event()
        self.finished = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.break_next = 0
        """How many of the next whole chat answers break off half-sent (a server killed
        mid-answer)."""
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_post("/v1/images/generations", self.generations)
        self.app.router.add_post("/v1/images/edits", self.edits)

    async def _record(self, request: web.Request) -> bytes:
        raw = await request.read()
        self.requests.append((request.path, raw, dict(request.headers)))
        return raw

    @staticmethod
    def _last_text(body: dict) -> str:
        messages = body.get("messages") or [{}]
        content = messages[-1].get("content", "")
        if isinstance(content, list):
            return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await self._record(request))
        text = self._last_text(body)
        if text == "fail":
            return web.json_response(
                {
                    "object": "error",
                    "message": "engine exploded",
                    "type": "InternalServerError",
                    "code": 500,
                },
                status=500,
            )
        if text == "bad":
            return web.json_response(
                {
                    "error": {
                        "message": "messages are bad",
                        "type": "BadRequestError",
                        "param": "messages",
                        "code": 400,
                    }
                },
                status=400,
            )
        words = f"echo {text}".split()
        if not body.get("stream") and self.break_next > 0:
            self.break_next -= 1
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b'{"id": "chatcmpl-fake", "object": "chat.comp')
            request.transport.abort()
            return resp
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 1,
                        "completion_tokens": len(words),
                        "total_tokens": 1 + len(words),
                    },
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i, word in enumerate(words):
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": (" " if i else "") + word},
                            "finish_reason": None,
                        }
                    ],
                }
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                if text.startswith("die") and i == 1:
                    request.transport.abort()
                    return resp
                if text == "slow" and i == 0:
                    await self.gate.wait()
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.finished.set()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return resp

    async def completions(self, request: web.Request) -> web.Response:
        body = orjson.loads(await self._record(request))
        return web.json_response(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "text": f"echo {body.get('prompt')}",
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
            }
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await self._record(request))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response(
            {
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.5, 0.5, 0.0]}
                    for i in range(len(inputs))
                ],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    @staticmethod
    def _images(n: int, size: str) -> web.Response:
        w, h = (int(x) for x in size.split("x"))
        b64 = base64.b64encode(png_bytes(w, h)).decode()
        return web.json_response({"created": 1, "data": [{"b64_json": b64} for _ in range(n)]})

    async def generations(self, request: web.Request) -> web.Response:
        body = orjson.loads(await self._record(request))
        if body.get("response_format") == "url":
            return web.json_response(
                {
                    "error": {
                        "message": "only b64_json",
                        "type": "BadRequestError",
                        "param": "response_format",
                        "code": 400,
                    }
                },
                status=400,
            )
        return self._images(int(body.get("n") or 1), body.get("size") or "64x64")

    async def edits(self, request: web.Request) -> web.Response:
        raw = await self._record(request)
        head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        form: dict[str, object] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            form[name] = payload if part.get_filename() else payload.decode()
        if not isinstance(form.get("image"), bytes):
            return web.json_response(
                {
                    "error": {
                        "message": "image file required",
                        "type": "BadRequestError",
                        "param": "image",
                        "code": 400,
                    }
                },
                status=400,
            )
        if form.get("response_format") == "url":
            return web.json_response(
                {
                    "error": {
                        "message": "only b64_json",
                        "type": "BadRequestError",
                        "param": "response_format",
                        "code": 400,
                    }
                },
                status=400,
            )
        return self._images(int(form.get("n") or 1), str(form.get("size") or "64x64"))
