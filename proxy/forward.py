"""HTTP forwarding: the ASGI adapter of a ``/v1`` request over the one model call
(`proxy.modelcall`), which takes the lease, posts, retries, reports a dead server and
counts the metrics.

`Forward` is an ASGI response (`proxy.asgi.Watched`): a route validates the request
and returns one, and the work happens when the server calls it. A client that goes
away cancels the work, which closes the upstream connection (vLLM then aborts the
generation) and releases the lease.

Streaming (``text/event-stream`` from upstream) passes chunk by chunk, unbuffered
(``X-Accel-Buffering: no``). If the upstream dies mid-stream the client gets a
final ``data: {"error": {...}}`` event, which the openai SDK raises as
``APIError``. Audio (``audio/*``, speech as it is synthesised) passes the same way with
its own Content-Type and ``X-Sample-Rate``; one that breaks off is cut (the connection
ends without the chunked body's end, which clients report as an incomplete read): audio
has no place for an error event. Everything else is read whole, so errors can be normalised and
image answers rewritten to URLs (`answer_with_urls`).

Every answer a model gave carries ``X-Homelab-Served-By: <model>@<host or endpoint>``
(`SERVED_BY`): the model that served it (a fallback's name when one did) and where.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import Send

from proxy import keys
from proxy.asgi import SSE_HEADERS, Watched
from proxy.context import ProxyContext
from proxy.errors import ProxyError, UpstreamError
from proxy.images import ImageStore, urls_for
from proxy.modelcall import ModelCall
from wire.audio import SAMPLE_RATE_HEADER
from wire.disconnect import watch_disconnect
from wire.events import SSE_MEDIA_TYPE

SERVED_BY = b"x-homelab-served-by"
"""The answer header naming who served it: ``<model>@<host or endpoint>`` (docs/api.md)."""


class Forward(Watched):
    """POST the request body, unchanged, to the same `endpoint` on the leased model server."""

    def __init__(
        self,
        ctx: ProxyContext,
        *,
        endpoint: str,
        model: str,
        body: bytes,
        content_type: str,
        url_base: str | None = None,
        interactive: bool = True,
    ) -> None:
        self.ctx, self.endpoint, self.model = ctx, endpoint, model
        self.body, self.content_type = body, content_type
        self.url_base = url_base
        """Set for images with response_format=url: b64 answers become URLs under it."""
        self.interactive = interactive
        """False for jobs: they are counted apart so jobs yield to clients."""

    async def run(self, send: Send, watch: watch_disconnect) -> None:
        call = self.ctx.model_calls.call(
            self.model,
            self.endpoint,
            self.body,
            self.content_type,
            interactive=self.interactive,
        )
        try:
            async with call:
                if call.streamed:
                    await self._stream(call, send, watch)
                    return
                raw, ctype = call.body or b"", call.answer_type
                if self.url_base is not None:
                    raw = await answer_with_urls(
                        self.ctx.images, raw, self.url_base, keys.current().name
                    )
                    ctype = "application/json"
                watch.finish()
                await send(
                    {
                        "type": "http.response.start",
                        "status": call.status,
                        "headers": [
                            (b"content-type", ctype.encode()),
                            (b"content-length", str(len(raw)).encode()),
                            (SERVED_BY, call.served_by.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": raw, "more_body": False})
        except ProxyError as exc:
            watch.finish()
            await exc.send(send)

    @staticmethod
    async def _stream(call: ModelCall, send: Send, watch: watch_disconnect) -> None:
        events = call.answer_type.partition(";")[0].strip().lower() == SSE_MEDIA_TYPE
        if events:
            headers = [*SSE_HEADERS, (SERVED_BY, call.served_by.encode())]
        else:
            headers = [
                (b"content-type", call.answer_type.encode("latin-1")),
                (b"x-accel-buffering", b"no"),
                (SERVED_BY, call.served_by.encode()),
            ]
            rate = call.headers.get(SAMPLE_RATE_HEADER)
            if rate:
                headers.append((SAMPLE_RATE_HEADER.lower().encode(), str(rate).encode("latin-1")))
        await send({"type": "http.response.start", "status": call.status, "headers": headers})
        at_boundary = True
        try:
            async for chunk in call.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                at_boundary = chunk.endswith(b"\n\n")
        except UpstreamError as err:
            if not events:
                raise AudioCut(str(err)) from err
            # A half-sent event cannot be withdrawn in SSE; end it so the error is its own event.
            tail = (b"" if at_boundary else b"\n\n") + b"data: " + err.body() + b"\n\n"
            watch.finish()
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            return
        watch.finish()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class AudioCut(Exception):
    """Streamed audio broke off after its answer began: the server drops the connection."""


async def answer_with_urls(images: ImageStore, raw: bytes, url_base: str, owner: str) -> bytes:
    """An images answer with each ``b64_json`` stored and replaced by its URL under
    `url_base` (response_format=url), in a thread. Raises UpstreamError (``bad_image``)."""
    return await asyncio.to_thread(_to_urls, images, raw, url_base, owner)


def _to_urls(images: ImageStore, raw: bytes, url_base: str, owner: str) -> bytes:
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(
            "The model server's images answer is not JSON", code="bad_image"
        ) from exc
    if not isinstance(answer, dict):
        raise UpstreamError(
            "The model server's images answer is not a JSON object", code="bad_image"
        )
    return orjson.dumps(urls_for(images, answer, url_base, owner))
