"""`HttpReadinessProbe`: is a model server ready, still loading, or failed? (the ReadinessProbe)

Text models (vLLM's OpenAI server): a refused or dropped connection means still
loading (vLLM binds its port only once the model is loaded; Docker's port proxy
accepts and then drops connections while nothing listens inside); `GET /health`
200 and the served name listed by `GET /v1/models` mean ready; `/health` 503
means the engine died.

Image models (homelab-ai's image server): `GET /health` answers JSON
`{"status": "loading" | "ready" | "failed", "error": str | null}` whatever its
HTTP status; "failed" fails the start with that error.

`wait_ready` has one shape for both: a short first delay (0.1 s), then polls
with a growing interval capped at 0.5 s until the spec's `start_timeout`. The cap
is low on purpose: a ready server waits on average half an interval before the
manager notices, and a look at a server still loading costs almost nothing (a
refused connection on the model host). Every round it asks
the runtime first, so a server that exited fails at once with its exit code
and last 50 log lines. One `httpx.AsyncClient` serves every probe.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

import httpx

from manager.errors import RuntimeFailure, StartFailed
from manager.runtime import ContainerRuntime, Spec
from manager.spec import TextModel

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
        first_delay: float = 0.1,
        max_interval: float = 0.5,
        request_timeout: float = 5.0,
        exit_grace: float = 0.5,
    ) -> None:
        """`client` defaults to a private AsyncClient that ignores proxy variables
        (model servers are reached directly). `exit_grace`: how long `check_alive` waits
        before asking the runtime again about a server that stopped answering."""
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(trust_env=False, follow_redirects=False)
        self._first_delay = first_delay
        self._max_interval = max_interval
        self._timeout = request_timeout
        self._exit_grace = exit_grace

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
    ) -> Verdict:
        """One HTTP look at the server, each request bounded by `within` seconds (default:
        the probe's request timeout), sending the server's upstream key `api_key` when
        given. Never raises for an unreachable or odd server."""
        limit = self._timeout if within is None else max(0.1, min(within, self._timeout))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if isinstance(spec, TextModel):
            return await self._check_text(name, base_url, limit, headers)
        return await self._check_image(base_url, limit, headers)

    async def _check_text(
        self, name: str, base_url: str, limit: float, headers: dict[str, str]
    ) -> Verdict:
        try:
            health = await self._client.get(f"{base_url}/health", timeout=limit, headers=headers)
        except httpx.TransportError as exc:
            return Verdict("loading", f"not answering yet ({type(exc).__name__})")
        if health.status_code == 503:
            return Verdict("failed", "vLLM reports its engine is dead (GET /health answered 503)")
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

    async def _check_image(self, base_url: str, limit: float, headers: dict[str, str]) -> Verdict:
        try:
            health = await self._client.get(f"{base_url}/health", timeout=limit, headers=headers)
        except httpx.TransportError as exc:
            return Verdict("loading", f"not answering yet ({type(exc).__name__})")
        try:
            body = health.json()
            status = body.get("status")
        except (ValueError, AttributeError):
            return Verdict(
                "loading", f"GET /health answered {health.status_code} without status JSON"
            )
        if status == "ready":
            return Verdict("ready", "ready")
        if status == "failed":
            return Verdict(
                "failed", f"the image server failed: {body.get('error') or 'no reason given'}"
            )
        if status == "loading":
            return Verdict("loading", "the image server is loading its pipeline")
        return Verdict("loading", f"GET /health answered an unknown status {status!r}")

    # ---- ReadinessProbe -----------------------------------------------------------------------
    async def wait_ready(self, name: str, spec: Spec, runtime: ContainerRuntime) -> None:
        """Return once the server is ready.

        Raises StartFailed (with exit_code and the last 50 log lines where known) when the
        server is gone or exited, reports failure, or is not ready within
        `spec.start_timeout` seconds. Cancellable at every await.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.start_timeout
        base_url = runtime.base_url(spec)
        interval = self._first_delay
        await asyncio.sleep(min(interval, spec.start_timeout))
        last = "no answer yet"
        while True:
            gone, api_key = await self._look(name, spec, runtime)
            if gone is not None:
                raise gone
            verdict = await self.check(
                name, spec, base_url, within=deadline - loop.time(), api_key=api_key
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
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StartFailed(
                    name,
                    f"not ready within its start_timeout of {spec.start_timeout:g}s (last check: {last})",
                    logs=await self._logs(name, spec, runtime),
                )
            interval = min(interval * 1.5, self._max_interval)
            await asyncio.sleep(min(interval, remaining))

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
