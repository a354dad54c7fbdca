"""`HttpReadinessProbe`: is a model server ready, still loading, or failed? (the ReadinessProbe)

Text models (vLLM's OpenAI server): a refused or dropped connection means still
loading (vLLM binds its port only once the model is loaded; Docker's port proxy
accepts and then drops connections while nothing listens inside); `GET /health`
200 and the served name listed by `GET /v1/models` mean ready; `/health` 503
means the engine died. llama.cpp's `llama-server` (a text model's `backend`
"llama.cpp") binds its port at once and answers `/health` 503 "Loading model" while it
loads: there 503 means loading, and the same 200 plus listing means ready (a load that
fails ends the process, which the runtime reports).

Image models (homelab-ai's image server): `GET /health` answers
`wire.model_server.ImageHealth` (`{"status": "loading" | "ready" | "failed", "error":
str | null, "model": name}`) whatever its HTTP status; "failed" fails the start with
that error. Speech models (stt, tts: homelab-ai's audio server) the same with
`wire.model_server.AudioHealth`.

`wait_ready` has one shape for both: a first look after `first_delay` (20 ms), then
looks every `interval` (20 ms) until the spec's `start_timeout`, so a server that
became ready is noticed within about 20 ms (10 ms on average). Each look first
*knocks* (`knock`: one raw `GET /health` on a fresh connection; a refused connection,
or one that Docker's port proxy accepts and drops while nothing listens inside, means
still loading, for about 0.2 / 0.5 ms of CPU instead of httpx's 3 ms), and only a
server that answers gets the full `check` (for a text model whose knock got 200, only
`GET /v1/models`). A long GPU load should still not cost
tens of thousands of looks: the interval grows with the time waited,
to `backoff` (1%) of it, capped at `max_interval` (0.25 s). Loads up to 2 s are
looked at every 20 ms, a 10 s load every 0.1 s at its end, anything past 25 s every
0.25 s (about 650 looks for a 100 s load; `python -m bench.experiments.probe_cpu`
measures their CPU).

The runtime is asked too (`inspect`: does the server still run, and its upstream
key): on the first round, then every `runtime_interval` (0.1 s) but at most every
other look, before a failure verdict is reported, and at the timeout. So a server that exited while loading fails within
about 0.1 s (within 0.5 s after a long load) with its exit code and last 50 log
lines, without an engine call every 20 ms. One
`httpx.AsyncClient` serves every probe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import ValidationError

from manager.errors import RuntimeFailure, StartFailed
from manager.runtime import ContainerRuntime, Spec
from manager.spec import AudioModel, LanguageModel, TextModel
from wire.model_server import AudioHealth, ImageHealth

log = logging.getLogger(__name__)

LOG_LINES = 50
"""Log lines a StartFailed carries."""


@dataclass(frozen=True)
class Verdict:
    state: Literal["ready", "loading", "failed"]
    reason: str


class HttpReadinessProbe:
    """Readiness and liveness over HTTP. Create once per manager; `aclose()` at shutdown."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        first_delay: float = 0.02,
        interval: float = 0.02,
        backoff: float = 0.01,
        max_interval: float = 0.25,
        runtime_interval: float = 0.1,
        request_timeout: float = 5.0,
        exit_grace: float = 0.5,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """`client` defaults to a private AsyncClient that ignores proxy variables
        (model servers are reached directly). `wait_ready` looks after `first_delay`,
        then every `max(interval, backoff * seconds waited)` seconds, at most
        `max_interval`; it asks the runtime every `runtime_interval` seconds, at most
        every other look.
        `exit_grace`: how long `check_alive` waits before asking the runtime again about
        a server that stopped answering. `clock` (monotonic seconds; default the event
        loop's) and `sleep` (default `asyncio.sleep`) are for tests."""
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._first_delay = first_delay
        self._interval = interval
        self._backoff = backoff
        self._max_interval = max(max_interval, interval)
        self._runtime_interval = runtime_interval
        self._timeout = request_timeout
        self._exit_grace = exit_grace
        self._clock = clock
        self._sleep = sleep or asyncio.sleep

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> HttpReadinessProbe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- one look ---------------------------------------------------------------------------
    async def check(
        self,
        name: str,
        spec: Spec,
        base_url: str,
        *,
        within: float | None = None,
        api_key: str | None = None,
        health: int | None = None,
    ) -> Verdict:
        """One HTTP look at the server, each request bounded by `within` seconds (default:
        the probe's request timeout), sending the server's upstream key `api_key` when
        given. `health`: the status a knock just got from `GET /health`; a text model's
        200 is not asked again. Never raises for an unreachable or odd server."""
        limit = self._timeout if within is None else max(0.1, min(within, self._timeout))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if isinstance(spec, LanguageModel):
            loading_503 = isinstance(spec, TextModel) and spec.backend == "llama.cpp"
            return await self._check_text(
                name, base_url, limit, headers, health == 200, loading_503
            )
        if isinstance(spec, AudioModel):
            return await self._check_server(base_url, limit, headers, AudioHealth, "audio")
        return await self._check_server(base_url, limit, headers, ImageHealth, "image")

    async def _check_text(
        self,
        name: str,
        base_url: str,
        limit: float,
        headers: dict[str, str],
        healthy: bool,
        loading_503: bool = False,
    ) -> Verdict:
        """`loading_503`: the server answers /health 503 while it loads (llama.cpp's
        "Loading model"; it exits when loading fails) instead of when its engine died (vLLM)."""
        if not healthy:
            try:
                health = await self._client.get(
                    f"{base_url}/health", timeout=limit, headers=headers
                )
            except httpx.TransportError as exc:
                return Verdict("loading", f"not answering yet ({type(exc).__name__})")
            if health.status_code == 503 and loading_503:
                return Verdict("loading", "llama.cpp is loading the model (GET /health 503)")
            if health.status_code == 503:
                return Verdict(
                    "failed", "vLLM reports its engine is dead (GET /health answered 503)"
                )
            if health.status_code != 200:
                return Verdict("loading", f"GET /health answered {health.status_code}")
        try:
            listing = await self._client.get(
                f"{base_url}/v1/models", timeout=limit, headers=headers
            )
            ids = [m.get("id") for m in listing.json().get("data", []) if isinstance(m, dict)]
        except httpx.TransportError as exc:
            return Verdict("loading", f"GET /v1/models failed ({type(exc).__name__})")
        except (ValueError, AttributeError):
            return Verdict("loading", "GET /v1/models did not answer a model list")
        if name not in ids:
            return Verdict("loading", f"the server lists {ids}, not {name!r}")
        return Verdict("ready", "ready")

    async def _check_server(
        self,
        base_url: str,
        limit: float,
        headers: dict[str, str],
        shape: type[ImageHealth] | type[AudioHealth],
        kind: str,
    ) -> Verdict:
        """Our own servers' `GET /health` (`shape`: the image or the audio server's body)."""
        try:
            health = await self._client.get(f"{base_url}/health", timeout=limit, headers=headers)
        except httpx.TransportError as exc:
            return Verdict("loading", f"not answering yet ({type(exc).__name__})")
        try:
            body = shape.model_validate_json(health.content)
        except ValidationError:
            return Verdict(
                "loading",
                f"GET /health answered {health.status_code} without the {kind} server's health JSON",
            )
        if body.status == "ready":
            return Verdict("ready", "ready")
        if body.status == "failed":
            return Verdict("failed", f"the {kind} server failed: {body.error or 'no reason given'}")
        what = "its pipeline" if kind == "image" else "its model"
        return Verdict("loading", f"the {kind} server is loading {what}")

    async def knock(self, base_url: str, within: float, api_key: str | None = None) -> int | str:
        """The status code when something answers HTTP at `base_url` (a status line to
        `GET /health` within `within` seconds, sending the server's upstream key `api_key`
        when given: every path of a model server wants it), else why not ("connection
        refused", "connection closed", ...). Cheap: one raw connection, no httpx. Never raises."""
        url = httpx.URL(base_url)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(max(0.05, min(within, self._timeout))):
                reader, writer = await asyncio.open_connection(url.host, url.port)
                auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
                writer.write(
                    f"GET /health HTTP/1.1\r\nHost: {url.netloc.decode()}\r\n{auth}"
                    "Connection: close\r\n\r\n".encode()
                )
                line = await reader.readline()
        except ConnectionRefusedError:
            return "connection refused"
        except (ConnectionResetError, asyncio.IncompleteReadError):
            return "connection closed without an answer"
        except TimeoutError:
            return "no answer in time"
        except OSError as exc:
            return f"connection failed ({exc.strerror or type(exc).__name__})"
        finally:
            if writer is not None:
                writer.close()
        parts = line.split()
        if not line.startswith(b"HTTP/") or len(parts) < 2 or not parts[1].isdigit():
            return "connection closed without an answer" if not line else "not an HTTP answer"
        return int(parts[1])

    # ---- ReadinessProbe -----------------------------------------------------------------------
    def interval_after(self, waited: float) -> float:
        """Seconds between looks once `waited` seconds have passed since `wait_ready` began:
        `interval`, growing to `backoff * waited` for long loads, at most `max_interval`."""
        return min(self._max_interval, max(self._interval, self._backoff * waited))

    async def wait_ready(self, name: str, spec: Spec, runtime: ContainerRuntime) -> None:
        """Return once the server is ready (noticed within `interval_after(seconds waited)`).

        Raises StartFailed (with exit_code and the last 50 log lines where known) when the
        server is gone or exited (seen by the runtime within `runtime_interval` or two
        looks, whichever is longer),
        reports failure, or is not ready within `spec.start_timeout` seconds. Cancellable
        at every await.
        """
        clock = self._clock or asyncio.get_running_loop().time
        began = clock()
        deadline = began + spec.start_timeout
        base_url = runtime.base_url(spec)
        await self._sleep(min(self._first_delay, spec.start_timeout))
        last = "no answer yet"
        looked: float | None = None
        since = 0  # looks since the runtime was last asked
        api_key: str | None = None
        while True:
            now = clock()
            since += 1
            if looked is None or (now - looked >= self._runtime_interval and since >= 2):
                looked, since = now, 0
                gone, api_key = await self._look(name, spec, runtime)
                if gone is not None:
                    raise gone
            knocked = await self.knock(base_url, deadline - clock(), api_key)
            if isinstance(knocked, str):
                verdict = Verdict("loading", f"not answering yet ({knocked})")
            else:
                verdict = await self.check(
                    name, spec, base_url, within=deadline - clock(), api_key=api_key, health=knocked
                )
            if verdict.state == "ready":
                log.info("%s is ready at %s", name, base_url)
                return
            if verdict.state == "failed":
                # The server may be exiting right now: prefer its exit code if it has one.
                gone = await self._exited(name, spec, runtime)
                raise gone or StartFailed(
                    name, verdict.reason, logs=await self._logs(name, spec, runtime)
                )
            last = verdict.reason
            now = clock()
            remaining = deadline - now
            if remaining <= 0:
                gone = await self._exited(name, spec, runtime)
                raise gone or StartFailed(
                    name,
                    f"not ready within its start_timeout of {spec.start_timeout:g}s (last check: {last})",
                    logs=await self._logs(name, spec, runtime),
                )
            await self._sleep(min(self.interval_after(now - began), remaining))

    async def check_alive(self, name: str, spec: Spec, runtime: ContainerRuntime) -> str | None:
        """None while the server runs and answers healthy; otherwise why not. Never raises
        for an unhealthy server (a runtime error is reported as the reason)."""
        try:
            instance = await runtime.inspect(name, spec)
        except RuntimeFailure as exc:
            return f"cannot inspect the server: {exc}"
        if instance is None:
            return "the server is gone (no container or process)"
        if not instance.running:
            return _exit_reason(instance.exit_code)
        verdict = await self.check(name, spec, runtime.base_url(spec), api_key=instance.api_key)
        if verdict.state == "ready":
            return None
        # A server that is exiting drops connections a moment before the runtime sees it
        # exit: look again shortly, so the reason carries the exit code when there is one.
        await asyncio.sleep(self._exit_grace)
        try:
            instance = await runtime.inspect(name, spec)
        except RuntimeFailure:
            instance = None
        if instance is not None and not instance.running:
            return _exit_reason(instance.exit_code)
        if verdict.state == "loading":  # a ready server that stops answering is not loading
            return f"the server stopped answering: {verdict.reason}"
        return verdict.reason

    async def _exited(self, name: str, spec: Spec, runtime: ContainerRuntime) -> StartFailed | None:
        return (await self._look(name, spec, runtime))[0]

    async def _look(
        self, name: str, spec: Spec, runtime: ContainerRuntime
    ) -> tuple[StartFailed | None, str | None]:
        """(why the server is gone or None, its upstream key) from the runtime."""
        try:
            instance = await runtime.inspect(name, spec)
        except RuntimeFailure as exc:
            return StartFailed(name, f"cannot inspect the server: {exc}"), None
        if instance is None:
            return StartFailed(name, "the server is gone (no container or process)"), None
        if instance.running:
            return None, instance.api_key
        return StartFailed(
            name,
            _exit_reason(instance.exit_code),
            exit_code=instance.exit_code,
            logs=await self._logs(name, spec, runtime),
        ), None

    @staticmethod
    async def _logs(name: str, spec: Spec, runtime: ContainerRuntime) -> str:
        try:
            return await runtime.logs(name, spec, LOG_LINES)
        except RuntimeFailure as exc:
            return f"(logs unavailable: {exc})"


def _exit_reason(exit_code: int | None) -> str:
    if exit_code is None:
        return "the server is not running"
    return f"the server exited with code {exit_code}"
