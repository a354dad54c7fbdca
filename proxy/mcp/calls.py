"""One MCP tool call to a model server, through the proxy's own lease pool.

`call_model` does what ``/v1`` does for a request (proxy/forward.py): a share of the
model's lease from `ctx.manager.acquire` (so swaps, fairness and lease sharing are
the same), one POST to the leased model server with the proxy's client session and
timeouts, the lease ended as soon as the answer is read, errors normalised into the
proxy's exception tree, and the same metrics (endpoint label ``mcp:<tool>``). The
answer is read whole (bounded by `ANSWER_LIMIT`): tools return whole results.

Cancellable at every step: cancelling while queued withdraws the request from the
manager's queue; cancelling while the model server works closes the connection
(vLLM then stops generating), as a client disconnect does on ``/v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from proxy.asgi import TRANSPORT_ERRORS
from proxy.context import ProxyContext
from proxy.errors import MODEL_SERVER, ProxyError, UpstreamError, normalise_error_body
from proxy.mcp.progress import Progress, wait_for_lease
from wire.model_server import ImageProgress

ANSWER_LIMIT = 256 * 1024 * 1024
"""Largest model-server answer read (a few large pictures in base64)."""
_ERROR_LIMIT = 1 << 20
RUN_TICK = 5.0
"""Seconds between "still running" progress notifications while the model server works."""
STEP_POLL = 0.5
"""Seconds between reads of an image server's diffusion steps."""
_POLL_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


@dataclass
class Answer:
    """A model server's JSON answer and what the call cost (seconds)."""

    data: dict[str, Any]
    waited: float
    """Until the lease was granted: queueing plus any swap (including the load)."""
    ran: float
    """The model server's part."""
    loaded: float | None
    """The load this call waited for, when it waited for one."""


async def call_model(
    ctx: ProxyContext,
    tool: str,
    model: str,
    endpoint: str,
    body: bytes,
    content_type: str,
    progress: Progress,
    running: str,
    steps: bool = False,
) -> Answer:
    """POST `body` to `endpoint` of `model`'s server under a lease; the answer as JSON.

    With `steps` (image models) the image server's ``GET /v1/progress`` is polled while
    it works, and each new diffusion step is reported ("step N of M").

    `running` is the progress message sent once the model server has the request.
    Raises ProxyError subclasses (the manager's and the model server's errors too).
    """
    metrics = ctx.metrics
    label = f"mcp:{tool}"
    t0 = time.perf_counter()
    status = 499
    held = None
    metrics.in_flight.inc()
    try:
        try:
            held = await wait_for_lease(ctx, model, progress)
        finally:
            metrics.queue_wait.labels(model).observe(time.perf_counter() - t0)
        waited = time.perf_counter() - t0
        await progress.say(80.0, running)
        t1 = time.perf_counter()
        lease = held.lease
        try:
            auth = lease.upstream_headers()
            poll = StepPoll(ctx, lease.base_url, auth) if steps else None
            raw = await _while_running(
                _post(ctx, lease.base_url + endpoint, body, content_type, auth),
                progress,
                running,
                poll,
            )
        except TRANSPORT_ERRORS as exc:
            held.discard()
            raise UpstreamError(
                f"The model server of '{model}' at {lease.base_url} failed: "
                f"{exc.__class__.__name__}: {exc}",
                code="model_server_unreachable",
            ) from exc
        held.end()
        if raw is None:
            raise UpstreamError(f"The answer of '{model}' is larger than {ANSWER_LIMIT} bytes")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"The answer of '{model}' is not JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamError(f"The answer of '{model}' is not a JSON object")
        status = 200
        return Answer(
            data=data, waited=waited, ran=time.perf_counter() - t1, loaded=progress.loaded
        )
    except ProxyError as exc:
        status = exc.status
        raise
    finally:
        if held is not None:
            held.end()
        metrics.in_flight.dec()
        metrics.requests.labels(label, model, str(status)).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - t0)


async def _post(
    ctx: ProxyContext, url: str, body: bytes, content_type: str, auth: dict[str, str]
) -> bytes | None:
    """POST (with the lease's upstream key headers `auth`) and read the whole answer (None
    when it is over ANSWER_LIMIT). Raises the model server's error as a ProxyError, and
    aiohttp's transport errors as they are."""
    async with ctx.http.post(
        url,
        data=body,
        headers={"Content-Type": content_type, "Accept-Encoding": "identity", **auth},
        timeout=ctx.upstream_timeout,
    ) as resp:
        limit = _ERROR_LIMIT if resp.status >= 400 else ANSWER_LIMIT
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                if resp.status >= 400:
                    break  # the start of an error is enough to report it
                return None
            chunks.append(chunk)
        raw = b"".join(chunks)
        if resp.status >= 400:
            raise normalise_error_body(raw, resp.status, MODEL_SERVER)
        return raw


class StepPoll:
    """Reads the image server's ``GET /v1/progress`` (`wire.model_server.ImageProgress`).

    A server without it (404, an older image server or a stand-in) is not asked again.
    Never raises: progress is only a message."""

    def __init__(self, ctx: ProxyContext, base_url: str, auth: dict[str, str]) -> None:
        self._ctx, self._url, self._auth = ctx, base_url + "/v1/progress", auth
        self.dead = False

    async def __call__(self) -> tuple[int, int] | None:
        """(step, steps) of the running generation, or None."""
        if self.dead:
            return None
        try:
            async with self._ctx.http.get(
                self._url, headers=self._auth, timeout=_POLL_TIMEOUT
            ) as resp:
                if resp.status == 404:
                    self.dead = True
                    return None
                if resp.status != 200:
                    return None
                return ImageProgress.model_validate_json(await resp.read()).step_of()
        except (*TRANSPORT_ERRORS, ValueError):  # pydantic's ValidationError is a ValueError
            return None


async def _while_running(
    work: Coroutine[Any, Any, bytes | None],
    progress: Progress,
    running: str,
    poll: StepPoll | None = None,
) -> bytes | None:
    """Await `work`, reporting each new diffusion step `poll` finds (every STEP_POLL s) and,
    every RUN_TICK seconds without news, how long it has been running (which also keeps
    MCP clients' read timeouts from firing on a long generation). Cancelling cancels
    `work`, which closes the connection to the model server."""
    task = asyncio.ensure_future(work)
    started = last_said = time.monotonic()
    last_step: tuple[int, int] | None = None
    try:
        while True:
            polling = poll is not None and not poll.dead
            done, _ = await asyncio.wait({task}, timeout=STEP_POLL if polling else RUN_TICK)
            if done:
                return task.result()
            now = time.monotonic()
            if polling and poll is not None:
                step = await poll()
                if step is not None and step != last_step:
                    last_step, last_said = step, now
                    await progress.say(
                        80.0 + 19.0 * step[0] / step[1], f"{running}: step {step[0]} of {step[1]}"
                    )
                    continue
            if now - last_said >= RUN_TICK - 0.01:
                last_said = now
                elapsed = now - started
                await progress.say(
                    80.0 + 19.0 * elapsed / (elapsed + 60.0), f"{running}: {elapsed:.0f} s"
                )
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
