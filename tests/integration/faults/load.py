"""Clients for the fault stack: the `openai` SDK (AsyncOpenAI, no SDK retries, so every
failure the system lets through is counted), and a record of what each request got.

An `Outcome.result` is `ok` only for the complete, correct answer: a chat answer equal to
the stand-in's deterministic reply (streamed: every delta joined, and the stream ended
normally), or an image list of the asked length. Anything else is a lost request, labelled
`http_<status>_<code>` (an OpenAI error envelope), `stream_cut` (an error event after the
stream began), `wrong_answer`, or `exception_<Type>` (no HTTP answer at all).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import openai


@dataclass
class Outcome:
    kind: str
    """`stream`, `plain` (chat, not streamed) or `image`."""
    model: str
    sent: float
    """time.monotonic() when sent."""
    ended: float = 0.0
    first_chunk: float | None = None
    """Streams: when the first content delta arrived."""
    result: str = "pending"
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.result == "ok"


def expected_reply(model: str, prompt: str) -> str:
    """The stand-in's answer to a one-message chat (tests/fixtures/fakevllm)."""
    return f"[{model}] {prompt}"


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


class Load:
    """Requests through the proxy; every one is kept in `outcomes` (also when cancelled)."""

    def __init__(self, proxy_url: str, api_key: str, timeout: float = 90.0) -> None:
        self.sdk = openai.AsyncOpenAI(
            base_url=proxy_url + "/v1", api_key=api_key, max_retries=0, timeout=timeout
        )
        self.outcomes: list[Outcome] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def chat(self, model: str, n_words: int, *, stream: bool) -> Outcome:
        outcome = Outcome("stream" if stream else "plain", model, time.monotonic())
        self._start(self._chat(outcome, words(n_words), stream))
        return outcome

    def image(self, model: str) -> Outcome:
        outcome = Outcome("image", model, time.monotonic())
        self._start(self._image(outcome))
        return outcome

    def _start(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    async def _chat(self, outcome: Outcome, prompt: str, stream: bool) -> None:
        self._record(outcome)
        messages = [{"role": "user", "content": prompt}]
        try:
            if stream:
                got = []
                reply = await self.sdk.chat.completions.create(
                    model=outcome.model, messages=messages, stream=True
                )
                async for chunk in reply:
                    if chunk.choices and chunk.choices[0].delta.content:
                        if outcome.first_chunk is None:
                            outcome.first_chunk = time.monotonic()
                        got.append(chunk.choices[0].delta.content)
                text = "".join(got)
            else:
                answer = await self.sdk.chat.completions.create(
                    model=outcome.model, messages=messages
                )
                text = answer.choices[0].message.content or ""
            good = text == expected_reply(outcome.model, prompt)
            outcome.result = "ok" if good else "wrong_answer"
        except BaseException as exc:  # noqa: BLE001 (every failure is counted, then re-raised if cancel)
            outcome.result = classify(exc, outcome)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            outcome.ended = time.monotonic()

    async def _image(self, outcome: Outcome) -> None:
        self._record(outcome)
        try:
            answer = await self.sdk.images.generate(
                model=outcome.model, prompt="a fault test", size="64x64", n=1
            )
            outcome.result = "ok" if len(answer.data or []) == 1 else "wrong_answer"
        except BaseException as exc:  # noqa: BLE001
            outcome.result = classify(exc, outcome)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            outcome.ended = time.monotonic()

    async def drain(self, timeout: float = 90.0) -> None:  # noqa: ASYNC109 (a bound, not a cancel scope)
        """Wait for every request started so far (cancel the rest after `timeout`)."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def aclose(self) -> None:
        await self.drain(5)
        await self.sdk.close()


def classify(exc: BaseException, outcome: Outcome) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, openai.APIStatusError):
        outcome.retry_after = exc.response.headers.get("retry-after")
        body = exc.body if isinstance(exc.body, dict) else {}
        inner = body.get("error", body) if isinstance(body, dict) else {}
        code = inner.get("code") if isinstance(inner, dict) else None
        return f"http_{exc.status_code}_{code}"
    if isinstance(exc, openai.APIError) and outcome.first_chunk is not None:
        return "stream_cut"
    if isinstance(exc, openai.APIError) and outcome.kind == "stream":
        return "stream_cut_before_content"
    return f"exception_{type(exc).__name__}"


def tally(outcomes: list[Outcome]) -> dict[str, int]:
    """Outcome counts by result (sorted keys), e.g. {"ok": 40, "stream_cut": 3}."""
    return dict(sorted(Counter(o.result for o in outcomes).items()))


def lost(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]
