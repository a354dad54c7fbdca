"""One MCP tool call to a model server, through the one model call (`proxy.modelcall`).

`call_model` does what ``/v1`` does for a request, through the same module: a share of
the model's lease from the proxy's lease pool (so swaps, fairness and lease sharing are
the same), the POST to the leased model server, the same retry and dead-server report
when the server cannot be reached or breaks off, the lease ended as soon as the answer
is read, errors normalised into the proxy's exception tree, and the same metrics
(endpoint label ``mcp:<tool>``). MCP calls are interactive: jobs yield to them. The
answer is read whole (bounded by `proxy.modelcall.ANSWER_LIMIT`): tools return whole
results.

While it waits for the lease, the manager's events become progress notifications
(`proxy.mcp.progress.wait_for_lease`); while the model server works, "still running"
ones, and for image models each new diffusion step read from the image server's
``GET /v1/progress`` (`StepPoll`, also through `proxy.modelcall`); for speech, each
sentence spoken, from the audio server's (the same shape), while its audio streams in.

Cancellable at every step: cancelling while queued withdraws the request from the
manager's queue; cancelling while the model server works closes the connection
(vLLM then stops generating), as a client disconnect does on ``/v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.context import ProxyContext
from proxy.errors import ProxyError, UpstreamError
from proxy.lease_pool import LeaseUse
from proxy.mcp.progress import Progress, wait_for_lease
from proxy.modelcall import ANSWER_LIMIT, ModelCall, ModelCalls
from wire.lease import LeaseGrant
from wire.model_server import AudioProgress, ImageProgress

ProgressBody = type[ImageProgress] | type[AudioProgress]
"""What a model server's ``GET /v1/progress`` answers (both have `step_of`)."""
RUN_TICK = 5.0
"""Seconds between "still running" progress notifications while the model server works."""
STEP_POLL = 0.5
"""Seconds between reads of an image server's diffusion steps."""
POLL_TIMEOUT = 2.0
"""Seconds one read of ``/v1/progress`` may take."""


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
    raw: bytes = b""
    """The answer's bytes, for a call made with `raw` (speech: audio, not JSON)."""
    media_type: str = ""
    """The answer's Content-Type (with `raw`)."""


async def call_model(
    ctx: ProxyContext,
    tool: str,
    model: str,
    endpoint: str,
    body: bytes,
    content_type: str,
    progress: Progress,
    running: str,
    steps: ProgressBody | None = None,
    *,
    step_word: str = "step",
    raw: bool = False,
    read_stream: Callable[[ModelCall], Awaitable[dict[str, Any]]] | None = None,
) -> Answer:
    """POST `body` to `endpoint` of `model`'s server under a lease; the answer as JSON.

    With `steps` (its body: `ImageProgress` for image models, `AudioProgress` for speech)
    the model server's ``GET /v1/progress`` is polled while it works, and
    each new step is reported ("`step_word` N of M": an image's diffusion steps, speech's
    sentences).

    `running` is the progress message sent once the model server has the request.
    With `raw` the answer is kept as bytes (`Answer.raw`), not parsed; `read_stream`
    reads an event stream answer (a streamed transcription) into the answer's data.
    Raises ProxyError subclasses (the manager's and the model server's errors too).
    """
    ticker = _Running(ctx.model_calls, progress, running, steps, step_word)

    async def wait(lease: Awaitable[LeaseUse]) -> LeaseUse:
        await ticker.stop()  # a retry: the server it watched is gone
        return await wait_for_lease(ctx, model, progress, lease)

    try:
        call = ctx.model_calls.call(
            model,
            endpoint,
            body,
            content_type,
            label=f"mcp:{tool}",
            wait=wait,
            on_lease=ticker.leased,
        )
        async with call:
            if not (raw and call.streamed):  # streamed speech: the steps go on while it comes
                await ticker.stop()
            if call.streamed and read_stream is not None:
                data = await read_stream(call)
                return Answer(
                    data=data,
                    waited=call.leased - call.started,
                    ran=time.perf_counter() - ticker.started,
                    loaded=progress.loaded,
                )
            if raw:  # speech: audio is streamed as it is synthesised; a tool returns it whole
                body = await _read_whole(call, model) if call.streamed else call.body or b""
                await ticker.stop()
                return Answer(
                    data={},
                    waited=call.leased - call.started,
                    ran=time.perf_counter() - ticker.started,
                    loaded=progress.loaded,
                    raw=body,
                    media_type=call.answer_type,
                )
            if call.streamed:  # only speech2txt asks for an event stream
                raise UpstreamError(f"The answer of '{model}' is an event stream, not JSON")
            try:
                data = orjson.loads(call.body or b"")
            except orjson.JSONDecodeError as exc:
                raise UpstreamError(f"The answer of '{model}' is not JSON") from exc
            if not isinstance(data, dict):
                raise UpstreamError(f"The answer of '{model}' is not a JSON object")
            done = time.perf_counter()
            return Answer(
                data=data,
                waited=call.leased - call.started,
                ran=done - ticker.started,
                loaded=progress.loaded,
            )
    finally:
        await ticker.stop()


async def _read_whole(call: ModelCall, model: str) -> bytes:
    """A streamed answer (speech) read to its end, bounded by `ANSWER_LIMIT` (raises
    UpstreamError ``answer_too_large`` beyond it, and as `ModelCall.chunks` does)."""
    out = bytearray()
    async for chunk in call.chunks():
        out += chunk
        if len(out) > ANSWER_LIMIT:
            raise UpstreamError(
                f"The answer of '{model}' is larger than {ANSWER_LIMIT} bytes",
                code="answer_too_large",
            )
    return bytes(out)


class StepPoll:
    """Reads a model server's ``GET /v1/progress``: the image server's
    (`wire.model_server.ImageProgress`) or the audio server's (`AudioProgress`, the
    same fields).

    A server without it (404, an older image server or a stand-in) is not asked again.
    Never raises: progress is only a message."""

    def __init__(
        self, calls: ModelCalls, lease: LeaseGrant, body: ProgressBody = ImageProgress
    ) -> None:
        self._calls, self._lease, self._body = calls, lease, body
        self.dead = False

    async def __call__(self) -> tuple[int, int] | None:
        """(step, steps) of the running generation, or None."""
        if self.dead:
            return None
        try:
            status, raw = await self._calls.get(self._lease, "/v1/progress", within=POLL_TIMEOUT)
            if status == 404:
                self.dead = True
                return None
            if status != 200:
                return None
            return self._body.model_validate_json(raw).step_of()
        except (ProxyError, ValueError):  # pydantic's ValidationError is a ValueError
            return None


class _Running:
    """While the model server works: each new diffusion step a `StepPoll` finds (every
    STEP_POLL s) and, every RUN_TICK seconds without news, how long it has been running
    (which also keeps MCP clients' read timeouts from firing on a long generation).
    Started by each lease (`leased`; a retry starts afresh on its new lease)."""

    def __init__(
        self,
        calls: ModelCalls,
        progress: Progress,
        running: str,
        steps: ProgressBody | None,
        word: str,
    ) -> None:
        self._calls, self._progress, self._running, self._steps = calls, progress, running, steps
        self._word = word
        self._task: asyncio.Task[None] | None = None
        self.started = time.perf_counter()

    async def leased(self, lease: LeaseGrant) -> None:
        await self.stop()
        await self._progress.say(80.0, self._running)
        self.started = time.perf_counter()
        poll = StepPoll(self._calls, lease, self._steps) if self._steps else None
        self._task = asyncio.create_task(self._tick(poll), name="mcp-running")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _tick(self, poll: StepPoll | None) -> None:
        progress, running = self._progress, self._running
        started = last_said = time.monotonic()
        last_step: tuple[int, int] | None = None
        while True:
            polling = poll is not None and not poll.dead
            await asyncio.sleep(STEP_POLL if polling else RUN_TICK)
            now = time.monotonic()
            if polling and poll is not None:
                step = await poll()
                if step is not None and step != last_step:
                    last_step, last_said = step, now
                    await progress.say(
                        80.0 + 19.0 * step[0] / step[1],
                        f"{running}: {self._word} {step[0]} of {step[1]}",
                    )
                    continue
            if now - last_said >= RUN_TICK - 0.01:
                last_said = now
                elapsed = now - started
                await progress.say(
                    80.0 + 19.0 * elapsed / (elapsed + 60.0), f"{running}: {elapsed:.0f} s"
                )
