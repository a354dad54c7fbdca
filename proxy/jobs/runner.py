"""Running one job through the proxy's own forwarding path (`proxy.forward.Forward`).

A job is an ordinary `/v1` request without a client: the same lease pool, the same
manager queue, the same metrics and image URLs. `run_job` calls the `Forward` ASGI
response with a `send` that captures the answer; a streamed chat is parsed as it
comes, and each content delta is handed to `on_delta` (the dispatcher turns them
into `token` events). Cancelling `run_job` cancels the forward, which closes the
upstream connection and releases the lease, exactly like a client disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.context import ProxyContext
from proxy.forward import Forward
from proxy.jobs.records import Job


@dataclass
class Outcome:
    """What a job's forward produced: an HTTP status and the parsed answer."""

    status: int
    result: Any = None
    """The answer's JSON (for a streamed chat: the assembled message, see `ChatAssembler`)."""
    error: dict[str, Any] | None = None
    """The OpenAI error envelope's inner object when the forward failed."""

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


class _Capture:
    """The ASGI `send` of a job: keeps the status, and the body or the parsed stream."""

    def __init__(self, on_delta: Callable[[str], None] | None) -> None:
        self.status = 0
        self.streamed = False
        self.body = bytearray()
        self.buffer = b""
        self.chat = ChatAssembler()
        self.on_delta = on_delta

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = dict(message.get("headers") or [])
            self.streamed = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body":
            data = message.get("body", b"")
            if self.streamed:
                self._feed(data)
            else:
                self.body += data

    def _feed(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                line = line.rstrip(b"\r")
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]" or not payload:
                    continue
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(chunk, dict):
                    text = self.chat.feed(chunk)
                    if text and self.on_delta is not None:
                        self.on_delta(text)


async def _never_disconnect() -> dict[str, Any]:
    await asyncio.Future()  # cancelled with the forward
    raise AssertionError("unreachable")


async def run_job(
    ctx: ProxyContext, job: Job, on_delta: Callable[[str], None] | None = None
) -> Outcome:
    """Forward `job` (its endpoint, model, body) and return the outcome. Cancellable."""
    body = job.body
    forward = Forward(
        ctx,
        endpoint=job.endpoint,
        model=job.model,
        body=orjson.dumps(body),
        content_type="application/json",
        url_base=job.url_base,
        interactive=False,
    )
    capture = _Capture(on_delta)
    scope = {"type": "http", "method": "POST", "path": job.endpoint, "headers": []}
    await forward(scope, _never_disconnect, capture)
    if capture.streamed:
        if capture.chat.error is not None:
            return Outcome(status=502, error=capture.chat.error)
        return Outcome(status=capture.status, result=capture.chat.result())
    try:
        parsed = orjson.loads(bytes(capture.body)) if capture.body else None
    except orjson.JSONDecodeError:
        parsed = {"raw": bytes(capture.body[:2000]).decode("utf-8", "replace")}
    if capture.status >= 400:
        inner = parsed.get("error") if isinstance(parsed, dict) else None
        if not isinstance(inner, dict):
            inner = {"message": f"HTTP {capture.status}", "type": "server_error"}
        return Outcome(status=capture.status, result=parsed, error=inner)
    return Outcome(status=capture.status, result=parsed)
