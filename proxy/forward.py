"""Forwarding one request to a model server, streaming or not, under a lease.

`Forward` is an ASGI response (`proxy.asgi.Watched`): a route validates the request
and returns one, and the work happens when the server calls it. A client that goes
away cancels the work, which closes the upstream connection (vLLM then aborts the
generation) and releases the lease.

Safe retry: a request to an endpoint in ``HOMELAB_RETRY_ENDPOINTS`` (chat, completions
and embeddings by default) whose model server could not be reached, or broke off before
the proxy sent the client a byte, is sent once more on a fresh lease, after the manager
was told (it checks the server at once and restarts a dead one). A stream already under
way is never retried.

Streaming (``text/event-stream`` from upstream) passes chunk by chunk, unbuffered
(``X-Accel-Buffering: no``). If the upstream dies mid-stream the client gets a
final ``data: {"error": {...}}`` event, which the openai SDK raises as
``APIError``. Everything else is read whole, so errors can be normalised and
image answers rewritten to URLs.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from starlette.types import Send

from proxy.asgi import SSE_HEADERS, TRANSPORT_ERRORS, Watched
from proxy.context import ProxyContext
from proxy.errors import MODEL_SERVER, ProxyError, UpstreamError, normalise_error_body
from proxy.images import urls_for
from proxy.lease_pool import LeaseUse
from proxy.upstream import UpstreamResponse
from wire.disconnect import watch_disconnect

log = logging.getLogger("proxy.forward")

_UPSTREAM_ERROR_LIMIT = 1 << 20


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
        """False for jobs (proxy.jobs): they are counted apart so jobs yield to clients."""

    async def run(self, send: Send, watch: watch_disconnect) -> None:
        ctx = self.ctx
        settings = ctx.settings
        metrics = ctx.metrics
        t0 = time.perf_counter()
        status = 499  # nginx's "client closed request", if we are cancelled
        held = None
        resp = None
        metrics.in_flight.inc()
        waiting = ctx.interactive_waiting if self.interactive else None
        attempts = 2 if self.endpoint in settings.retry_endpoints else 1
        try:
            for attempt in range(1, attempts + 1):
                last = attempt == attempts
                if waiting is not None:
                    waiting[self.model] += 1
                try:
                    held = await ctx.manager.acquire(self.model)
                finally:
                    if waiting is not None:
                        waiting[self.model] -= 1
                    if attempt == 1:
                        metrics.queue_wait.labels(self.model).observe(time.perf_counter() - t0)
                lease = held.lease
                try:
                    resp = await ctx.upstream.post(
                        lease.base_url + self.endpoint,
                        self.body,
                        {
                            "Content-Type": self.content_type,
                            "Accept-Encoding": "identity",
                            **lease.upstream_headers(),
                        },
                        connect_timeout=settings.connect_timeout,
                        read_timeout=settings.upstream_timeout,
                    )
                except TRANSPORT_ERRORS as exc:
                    await self._lost_server(held)
                    if not last:
                        continue  # nothing reached the client: ask again, once
                    raise UpstreamError(
                        f"The model server of '{self.model}' at {lease.base_url} cannot be "
                        f"reached: {exc.__class__.__name__}: {exc}",
                        code="model_server_unreachable",
                    ) from exc
                if resp.status >= 400:
                    try:
                        raw = await resp.read(_UPSTREAM_ERROR_LIMIT)
                    except TRANSPORT_ERRORS:
                        raw = b""
                    raise normalise_error_body(raw, resp.status, MODEL_SERVER)
                if resp.content_type == "text/event-stream":
                    status = await self._stream(resp, send, watch, held)
                    break
                try:
                    raw = await resp.read()
                except TRANSPORT_ERRORS as exc:
                    resp.close()
                    await self._lost_server(held)
                    if not last:
                        continue  # the answer broke off before the client got a byte
                    raise UpstreamError(
                        f"The model server's answer for '{self.model}' broke off: "
                        f"{exc.__class__.__name__}: {exc}",
                        code="model_server_error",
                    ) from exc
                held.end()
                status = await self._whole(resp, raw, send, watch)
                break
        except ProxyError as exc:
            status = exc.status
            if held is not None:
                held.end()
            watch.finish()
            await exc.send(send)
        finally:
            if resp is not None:
                resp.close()  # no-op once complete; otherwise drops the upstream connection
            if held is not None:
                held.end()
            metrics.in_flight.dec()
            metrics.requests.labels(self.endpoint, self.model, str(status)).inc()
            metrics.latency.labels(self.endpoint).observe(time.perf_counter() - t0)

    async def _lost_server(self, held: LeaseUse) -> None:
        """The model server could not be reached or broke off: nobody joins this lease any
        more, and the manager checks the server at once (a dead one is marked failed, so
        the next lease waits for a fresh start instead of landing on it)."""
        held.discard()
        await self.ctx.manager.report_unreachable(self.model)

    # The lease is ended as soon as the model server is done with the request, before
    # the last bytes go to the client: the manager then handles the release while
    # the answer travels, instead of just when the client's next request arrives.

    async def _stream(
        self, resp: UpstreamResponse, send: Send, watch: watch_disconnect, held: LeaseUse
    ) -> int:
        await send({"type": "http.response.start", "status": resp.status, "headers": SSE_HEADERS})
        at_boundary = True
        try:
            async for chunk in resp.iter_chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                at_boundary = chunk.endswith(b"\n\n")
        except TRANSPORT_ERRORS as exc:
            err = UpstreamError(
                f"The model server's stream for '{self.model}' broke off: {exc.__class__.__name__}: {exc}",
                code="stream_interrupted",
            )
            # A half-sent event cannot be withdrawn in SSE; end it so the error is its own event.
            tail = (b"" if at_boundary else b"\n\n") + b"data: " + err.body() + b"\n\n"
            await self._lost_server(held)
            watch.finish()
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            return err.status
        held.end()
        watch.finish()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return resp.status

    async def _whole(
        self, resp: UpstreamResponse, raw: bytes, send: Send, watch: watch_disconnect
    ) -> int:
        ctype = resp.headers.get("Content-Type", "application/json")
        if self.url_base is not None:
            raw = await asyncio.to_thread(self._to_urls, raw)
            ctype = "application/json"
        watch.finish()
        await send(
            {
                "type": "http.response.start",
                "status": resp.status,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", str(len(raw)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw, "more_body": False})
        return resp.status

    def _to_urls(self, raw: bytes) -> bytes:
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
        assert self.url_base is not None  # only called for response_format=url
        return orjson.dumps(urls_for(self.ctx.images, answer, self.url_base))
