"""The one way the proxy reaches a model server, whoever asks: HTTP forwarding
(`proxy.forward.Forward`, a thin ASGI adapter), MCP tool calls (`proxy.mcp.calls`) and
jobs (`proxy.jobs.runner`).

`ModelCalls.call(model, endpoint, body, content_type)` is an async context manager; on
entry it does, in order:

1. **Lease**: a share of a manager lease on `model` from the lease pool
   (`proxy.lease_pool.LeasePool`), for the caller's key (`proxy.keys.current()`: its
   name and class, the manager's fair share), which blocks while the model is queued
   or loading.
   An *interactive* call (a client waits: ``/v1``, MCP) is counted in `waiting` while it
   waits, so jobs (``interactive=False``) yield to it (`proxy.jobs.dispatcher`).
2. **POST** the body, unchanged, to the same `endpoint` on the leased server, with the
   lease's upstream key, on the lean keep-alive client (`proxy.upstream.UpstreamPool`,
   chosen over aiohttp's by measurement: docs/benchmarks.md, "Upstream client").
3. **The answer**: an error status (>= 400) raises the model server's error, normalised
   into an OpenAI envelope (`proxy.errors.normalise_error_body`). An event stream
   (``text/event-stream``) or audio (``audio/*``: speech, sent as it is synthesised) is
   handed over as it comes (`ModelCall.chunks`, or `ModelCall.events` for each event's
   data); anything else is read whole, bounded by `answer_limit`, into `ModelCall.body`.
   A call made with ``method="GET"`` (the audio server's ``/v1/audio/voices``) sends no
   body and is otherwise the same.

Retry policy: when the model server cannot be reached, or breaks off before the caller
got a byte (a whole answer that broke off while being read; a stream before its
headers), the lease is retired, the manager is told (`ManagerClient.report_unreachable`:
it checks the server at once and marks a dead one failed, so the next lease waits for a
fresh start) and, for an endpoint in ``HOMELAB_RETRY_ENDPOINTS``, the request is sent
once more on a fresh lease. A stream that breaks off later is never retried: the
manager is told the same way and `chunks` raises `UpstreamError` (``stream_interrupted``).

The lease is ended as soon as the model server is done (a whole answer read, a stream's
end), before the caller passes the answer on, so the manager handles the release while
the answer travels. Leaving the block closes the upstream response (a connection whose
answer is not complete is dropped, and vLLM then aborts the generation) and ends the
lease if still held. Cancellation at any step (a client disconnect) does the same;
cancelling while queued withdraws the request from the manager's queue.

Routing (`proxy.routing`, from the proxy's catalogue): a remote model is POSTed to its
endpoint with the endpoint's key, with no lease and no retry (an endpoint that cannot
be reached is a 503 ``endpoint_unavailable``); a model with fallbacks is tried on its
targets in the order `proxy.routing.order` gives, moving to the next one while nothing
has reached the caller and the error says the host or endpoint is away or busy (the body
gets the fallback's name as its ``model``). `ModelCall.served_by` names who served it.

Keys (docs/keys.md): on entry, before the lease, the caller's principal
(`proxy.keys.current()`: the request's key, or the job's owner) must be allowed the model
(else 404 ``model_not_found``, naming no other model) and is admitted by its limits
(`proxy.limits.Limiter`: 429 with Retry-After, no lease taken). Each call is counted once,
when it ends, in `proxy.usage.Usage` under the principal's name: one request, the tokens
of the answer's ``usage`` (a whole JSON answer, or a stream's usage event) and the
GPU-seconds, the time it held a lease (from the grant to the lease's end, every try; a
remote endpoint's call holds none).

Metrics, for every call: ``in_flight``, ``queue_wait`` (first lease), and ``requests`` /
``latency`` under `label` (the endpoint by default; MCP uses ``mcp:<tool>``) and the
model that served it (remote models and fallbacks included), with the status the
caller saw: the model server's, the error's, 502 for a broken stream, 499 when
cancelled.

Every error is a `proxy.errors.ProxyError`: the lean client's transport errors
(`proxy.upstream.UPSTREAM_ERRORS`) are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Literal

import msgspec
import orjson

from proxy.catalogue import Catalogue, RemoteEndpoint
from proxy.errors import (
    MODEL_SERVER,
    EndpointUnavailable,
    ManagerRefused,
    ManagerUnavailable,
    ModelNotFound,
    ProxyError,
    UpstreamError,
    normalise_error_body,
)
from proxy.hosts import Fleet, HostLink
from proxy.keys import Principal, current
from proxy.lease_pool import LeaseUse
from proxy.limits import Limiter
from proxy.metrics import Metrics
from proxy.routing import Router, Target, order, view
from proxy.upstream import UPSTREAM_ERRORS, Headers, UpstreamPool, UpstreamResponse
from wire.events import SSE_MEDIA_TYPE, SseParser
from wire.lease import LeaseGrant
from wire.models import ModelStatus

log = logging.getLogger("proxy.modelcall")

ANSWER_LIMIT = 256 * 1024 * 1024
"""Largest whole answer read by default (a few large pictures in base64)."""
ERROR_LIMIT = 1 << 20
"""Bytes of an error answer read: the start of an error is enough to report it."""

WaitForLease = Callable[[Awaitable[LeaseUse]], Awaitable[LeaseUse]]
"""Awaits the lease pool's acquire on the caller's behalf (MCP reports progress meanwhile)."""
OnLease = Callable[[LeaseGrant], Awaitable[None]]
"""Called with each lease granted, before the request goes out (MCP polls progress)."""
Method = Literal["POST", "GET"]
PickHost = Callable[[], Awaitable[HostLink]]
"""Several hosts: chooses the host a lease is asked of (`proxy.hosts.Fleet.choose`)."""


class _Tokens(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _WithUsage(msgspec.Struct):
    usage: _Tokens | None = None


_USAGE_MARKS = (b'"usage":{', b'"usage": {')
USAGE_SCAN_LIMIT = 1 << 20
"""Whole answers larger than this are not read for their usage (pictures have none)."""


def usage_of(raw: bytes | memoryview) -> _Tokens | None:
    """The ``usage`` of an OpenAI answer (a JSON object), None when it has none."""
    try:
        return msgspec.json.decode(raw, type=_WithUsage).usage
    except msgspec.DecodeError:  # ValidationError included
        return None


def usage_of_events(tail: bytes) -> _Tokens | None:
    """The last ``usage`` in the ``data:`` lines of a piece of an event stream."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data:") and any(m in line for m in _USAGE_MARKS):
            found = usage_of(line[5:].strip())
            if found is not None:
                return found
    return None


class ModelCalls:
    """Every call to a model server goes through here (module docstring). One per process,
    built in the app's lifespan."""

    def __init__(
        self,
        *,
        fleet: Fleet,
        metrics: Metrics,
        upstream: UpstreamPool,
        retry_endpoints: Iterable[str],
        connect_timeout: float,
        read_timeout: float,
        waiting: Counter[str] | None = None,
        router: Router | None = None,
        limits: Limiter | None = None,
    ) -> None:
        """`fleet`: the hosts (their managers and lease pools, placement);
        `read_timeout`: longest silence from a model server; `waiting`: interactive
        calls waiting for a lease now, per model (shared with the job dispatcher);
        `router`: the catalogue's remote models and fallbacks (none by default);
        `limits`: the keys' limits and, in its `usage`, what each key used."""
        if limits is None:
            from proxy.usage import Usage

            limits = Limiter(Usage())
        self.limits = limits
        self.fleet, self.metrics = fleet, metrics
        self.upstream = upstream
        self.retry_endpoints = frozenset(retry_endpoints)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.waiting: Counter[str] = Counter() if waiting is None else waiting
        self.router = router or Router(Catalogue())

    def call(
        self,
        model: str,
        endpoint: str,
        body: bytes | memoryview,
        content_type: str,
        *,
        interactive: bool = True,
        label: str | None = None,
        answer_limit: int = ANSWER_LIMIT,
        wait: WaitForLease | None = None,
        on_lease: OnLease | None = None,
        method: Method = "POST",
    ) -> ModelCall:
        """One call (use with ``async with``). Raises ProxyError on entry: the manager's
        errors (from the lease), the model server's, ``model_server_unreachable``,
        ``model_server_error`` (broke off), ``answer_too_large``. `method` ``GET`` sends
        no body (`body` is ignored)."""
        return ModelCall(
            self,
            model,
            endpoint,
            body,
            content_type,
            interactive=interactive,
            label=label or endpoint,
            answer_limit=answer_limit,
            wait=wait,
            on_lease=on_lease,
            method=method,
        )

    async def get(self, lease: LeaseGrant, path: str, *, within: float) -> tuple[int, bytes]:
        """A short ``GET path`` on a leased model server (the image server's
        ``/v1/progress``), the answer read whole (at most `ERROR_LIMIT` bytes) within
        `within` seconds: (status, body). No retry, report or metrics: it only reads a
        side channel of a call in flight. Raises UpstreamError."""
        try:
            async with asyncio.timeout(within):
                resp = await self.upstream.get(
                    lease.base_url + path,
                    {"Accept-Encoding": "identity", **lease.upstream_headers()},
                    connect_timeout=self.connect_timeout,
                    read_timeout=within,
                )
                try:
                    return resp.status, await resp.read(ERROR_LIMIT)
                finally:
                    resp.close()
        except UPSTREAM_ERRORS as exc:
            raise UpstreamError(
                f"GET {path} on the model server failed: {exc.__class__.__name__}: {exc}",
                code="model_server_unreachable",
            ) from exc

    async def probe(self, endpoint: RemoteEndpoint) -> str | None:
        """A remote endpoint's health: ``GET <base_url>/models`` with its key answered 200
        (None), or why not. The caller bounds the time (`proxy.routing.Router.watch`)."""
        try:
            resp = await self.upstream.get(
                endpoint.base_url + "/models",
                {"Accept-Encoding": "identity", **endpoint.headers()},
                connect_timeout=self.connect_timeout,
                read_timeout=self.connect_timeout,
            )
            try:
                raw = await resp.read(ERROR_LIMIT)
            finally:
                resp.close()
        except UPSTREAM_ERRORS as exc:
            return f"{exc.__class__.__name__}: {exc}"
        if resp.status != 200:
            err = normalise_error_body(raw, resp.status, MODEL_SERVER)
            return f"GET /models answered {resp.status}: {err.message}"
        return None

    async def lost_server(self, held: LeaseUse, model: str, link: HostLink) -> None:
        """`model`'s server on `link` could not be reached or broke off: nobody joins this
        lease any more, and that host's manager checks the server at once."""
        held.discard()
        await link.client.report_unreachable(model)


class ModelCall:
    """One call to a model server (`ModelCalls.call`). After entry: `status`, `headers`,
    `lease`, and either `body` (a whole answer) or `streamed` (read `chunks` or `events`)."""

    def __init__(
        self,
        calls: ModelCalls,
        model: str,
        endpoint: str,
        body: bytes | memoryview,
        content_type: str,
        *,
        interactive: bool,
        label: str,
        answer_limit: int,
        wait: WaitForLease | None,
        on_lease: OnLease | None,
        method: Method = "POST",
    ) -> None:
        self._calls = calls
        self._method = method
        self.model, self.endpoint, self.label = model, endpoint, label
        self._body, self._content_type = body, content_type
        self._interactive, self._limit = interactive, answer_limit
        self._wait, self._on_lease = wait, on_lease
        self._held: LeaseUse | None = None
        self._link: HostLink | None = None
        """The host whose lease this call holds (None: a remote endpoint)."""
        self._resp: UpstreamResponse | None = None
        self._outcome = 499  # nginx's "client closed request", if cancelled
        self.started = 0.0
        """`time.perf_counter()` at entry."""
        self.leased = 0.0
        """`time.perf_counter()` when the lease this answer came on was granted."""
        self.status = 0
        """The model server's HTTP status (< 400 once entered)."""
        self.headers = Headers()
        self.streamed = False
        """The answer is an event stream or audio: read it with `chunks` (or `events`)."""
        self.body: bytes | None = None
        """The whole answer, when not streamed."""
        self.lease: LeaseGrant | None = None
        """The manager's lease it was served on (None for a remote endpoint)."""
        self.served = model
        """The model that served it: `model`, or a fallback of it (`proxy.routing`)."""
        self.served_by = ""
        """``<model>@<host or endpoint>``: the ``X-Homelab-Served-By`` answer header."""
        self.who: Principal = current()
        """Whose call this is (counted and limited under its name)."""
        self._admitted = False
        self._slot = False
        self._lease_start: float | None = None
        self.gpu_seconds = 0.0
        """Seconds this call held a lease so far (every try)."""
        self._usage_tail: bytes | None = None
        self.tokens: _Tokens | None = None
        """The answer's ``usage`` (prompt and completion tokens), when it reported one."""

    @property
    def answer_type(self) -> str:
        """The answer's Content-Type header (JSON when the server sent none)."""
        return str(self.headers.get("content-type") or "application/json")

    # -- entry and exit ----------------------------------------------------------

    async def __aenter__(self) -> ModelCall:
        self.started = time.perf_counter()
        self._calls.metrics.calls_in_flight += 1
        try:
            who = self.who
            if not who.may_use(self.model):
                raise ModelNotFound(self.model, None)
            self._slot = self._calls.limits.admit(who, interactive=self._interactive)
            self._admitted = True
            await self._open()
        except BaseException as exc:
            self._close(exc)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(exc)

    def _stop_clock(self) -> None:
        """The lease this call held ends now: count the time it was held."""
        if self._lease_start is not None:
            self.gpu_seconds += time.perf_counter() - self._lease_start
            self._lease_start = None

    def _read_tokens(self, raw: bytes) -> None:
        """The tokens of a whole answer's ``usage`` (not for pictures: they are large)."""
        if len(raw) <= USAGE_SCAN_LIMIT and "/images/" not in self.endpoint:
            self.tokens = usage_of(raw)

    def _count(self) -> None:
        """Count the call under its principal (once, at the end)."""
        limits = self._calls.limits
        if self._slot:
            limits.release(self.who)
        tokens = self.tokens
        if tokens is None and self._usage_tail is not None:
            tokens = self.tokens = usage_of_events(self._usage_tail)
        limits.usage.record(
            self.who.name,
            self.served,
            time.time(),
            gpu_seconds=self.gpu_seconds,
            prompt_tokens=tokens.prompt_tokens if tokens else 0,
            completion_tokens=tokens.completion_tokens if tokens else 0,
        )

    def _close(self, exc: BaseException | None) -> None:
        if self._resp is not None:
            self._resp.close()  # no-op once complete; otherwise drops the connection
            self._resp = None
        if self._held is not None:
            self._stop_clock()
            self._held.end()
        if isinstance(exc, ProxyError):
            self._outcome = exc.status
        elif exc is not None:
            self._outcome = 499
        metrics = self._calls.metrics
        metrics.calls_in_flight -= 1
        metrics.answered(self.label, self.served, self._outcome, time.perf_counter() - self.started)
        if self._admitted:
            self._admitted = False
            self._count()

    async def _lease(self, model: str, first: bool, pick: PickHost | None) -> LeaseUse:
        """A share of a lease on `model`: from `self._link`'s pool, or (`pick`, several
        hosts) from the pool of the host `pick` chooses, waited for inside the same wait
        (MCP reports progress meanwhile: waiting for a host, or one being woken)."""
        calls = self._calls
        waiting = calls.waiting if self._interactive else None
        if waiting is not None:
            waiting[model] += 1
        try:
            who = self.who  # the caller's key, read once at the call's start
            if pick is None:
                assert self._link is not None
                acquire = self._link.leases.acquire(model, (who.name, who.priority))
            else:
                acquire = self._pick_and_acquire(model, pick, (who.name, who.priority))
            return await (self._wait(acquire) if self._wait is not None else acquire)
        finally:
            if waiting is not None:
                waiting[model] -= 1
            if first:
                calls.metrics.waited(model, time.perf_counter() - self.started)

    async def _pick_and_acquire(self, model: str, pick: PickHost, key: tuple[str, str]) -> LeaseUse:
        link = self._link = await pick()
        self.served_by = model + "@" + link.name
        return await link.leases.acquire(model, key)

    async def _open(self) -> None:
        calls = self._calls
        router = calls.router
        route = router.routes.get(self.model)
        if route is None:  # no fallbacks: one target (the host's, unless remote)
            target = router.remote.get(self.model)
            if target is None:
                await self._open_local(self.model)
            else:
                await self._open_remote(target)
            return
        models: dict[str, ModelStatus] = {}
        fleet = calls.fleet
        if fleet.reachable:
            try:
                models = await fleet.models(wait=False)
            except ProxyError:
                models = {}
        targets = order(
            route,
            view(fleet.reachable, models, calls.waiting, router.health, route.targets),
        )
        for number, target in enumerate(targets, 1):
            try:
                if target.endpoint is None:
                    await self._open_local(target.model)
                else:
                    await self._open_remote(target)
                return
            except ProxyError as exc:
                if number == len(targets) or not _divert(exc):
                    raise
                self._drop_try()
                log.info("%s failed (%s): trying the next fallback", target.served_by, exc.code)

    def _body_for(self, model: str) -> bytes | memoryview:
        """The body with `model` as its model (a fallback of another name); else unchanged."""
        if model == self.model or self._content_type != "application/json":
            return self._body
        try:
            data = orjson.loads(self._body)
        except orjson.JSONDecodeError:
            return self._body
        return orjson.dumps({**data, "model": model}) if isinstance(data, dict) else self._body

    async def _open_remote(self, target: Target) -> None:
        """POST to a remote endpoint of the catalogue with its key; no lease, no retry."""
        calls, endpoint = self._calls, target.endpoint
        assert endpoint is not None
        self.served_by, self.served = target.served_by, target.model
        try:
            resp = self._resp = await self._send(
                endpoint.base_url + self.endpoint.removeprefix("/v1"),
                self._body_for(target.model),
                endpoint.headers(),
            )
        except UPSTREAM_ERRORS as exc:
            why = f"{exc.__class__.__name__}: {exc}"
            calls.router.mark(endpoint.name, False, why)
            raise EndpointUnavailable(
                f"The endpoint '{endpoint.name}' of '{target.model}' cannot be reached: {why}",
                headers={"Retry-After": "5"},
            ) from exc
        calls.router.mark(endpoint.name, True)
        self.status, self.headers = resp.status, resp.headers
        if resp.status in (401, 403):  # the proxy's key, not the client's: a 502
            raise UpstreamError(
                f"The endpoint '{endpoint.name}' refused the proxy's key for "
                f"'{target.model}' ({resp.status}); check its key_file in the catalogue.",
                code="endpoint_key_refused",
            )
        await _raise_for_status(resp)
        self._outcome = resp.status
        if _streams(resp.content_type):
            self.streamed = True
            return
        try:
            raw = await resp.read(self._limit + 1)
        except UPSTREAM_ERRORS as exc:
            raise UpstreamError(
                f"The answer of '{target.model}' from '{endpoint.name}' broke off: "
                f"{exc.__class__.__name__}: {exc}",
                code="model_server_error",
            ) from exc
        self.body = self._bounded(raw, target.model)
        self._read_tokens(raw)

    async def _open_local(self, model: str) -> None:
        """Lease `model` from a host's manager and POST to its server: the host placement
        chooses (`proxy.hosts.Fleet.choose`); when that host is away or busy before
        anything reached the caller, the next one, each with its own lease (a lease never
        spans two hosts). One host: its manager, as always."""
        fleet = self._calls.fleet
        if not fleet.multi:
            self._link = fleet.first
            self.served_by = model + "@" + fleet.first.name
            await self._open_on(model, None)
            return
        tried: set[str] = set()

        def pick() -> Awaitable[HostLink]:
            return fleet.choose(model, tried)

        while True:
            self._link = None
            try:
                await self._open_on(model, pick)
                return
            except ProxyError as exc:
                link = self._link
                if link is None or not _divert(exc):
                    raise  # no host came (choose's 503), or an answer to pass on
                if isinstance(exc, ManagerUnavailable):
                    fleet.mark_down(link)
                tried.add(link.name)
                self._drop_try()
                log.info("%s failed (%s): placing it on another host", self.served_by, exc.code)

    def _drop_try(self) -> None:
        """Forget a failed try that reached nobody: its answer and its lease."""
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        if self._held is not None:
            self._stop_clock()
            self._held.end()
            self._held = None
        self.streamed, self.lease = False, None

    async def _open_on(self, model: str, pick: PickHost | None) -> None:
        """Lease `model` from `self._link`'s manager (or, with `pick`, the host it picks)
        and POST to its server (retry policy in the module docstring)."""
        calls = self._calls
        self.served = model
        body = self._body_for(model)
        attempts = 2 if self.endpoint in calls.retry_endpoints else 1
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            held = self._held = await self._lease(model, attempt == 1, pick)
            link = self._link
            assert link is not None
            lease = self.lease = held.lease
            self.leased = self._lease_start = time.perf_counter()
            if self._on_lease is not None:
                await self._on_lease(lease)
            try:
                resp = self._resp = await self._send(
                    lease.base_url + self.endpoint, body, lease.upstream_headers()
                )
            except UPSTREAM_ERRORS as exc:
                self._stop_clock()
                await calls.lost_server(held, model, link)
                if not last:
                    continue  # nothing reached the caller: ask again, once
                raise UpstreamError(
                    f"The model server of '{model}' at {lease.base_url} cannot be "
                    f"reached: {exc.__class__.__name__}: {exc}",
                    code="model_server_unreachable",
                ) from exc
            self.status, self.headers = resp.status, resp.headers
            await _raise_for_status(resp)
            if _streams(resp.content_type):
                self.streamed = True
                self._outcome = resp.status
                return
            try:
                raw = await resp.read(self._limit + 1)
            except UPSTREAM_ERRORS as exc:
                resp.close()
                self._resp = None
                self._stop_clock()
                await calls.lost_server(held, model, link)
                if not last:
                    continue  # the answer broke off before the caller got a byte
                raise UpstreamError(
                    f"The model server's answer for '{model}' broke off: "
                    f"{exc.__class__.__name__}: {exc}",
                    code="model_server_error",
                ) from exc
            self.body = self._bounded(raw, model)
            self._stop_clock()
            held.end()
            self._read_tokens(raw)
            self._outcome = resp.status
            return

    async def _send(
        self, url: str, body: bytes | memoryview, auth: Mapping[str, str]
    ) -> UpstreamResponse:
        """The request on the lean client: a POST of `body`, or a GET (`method`)."""
        calls = self._calls
        if self._method == "GET":
            return await calls.upstream.get(
                url,
                {"Accept-Encoding": "identity", **auth},
                connect_timeout=calls.connect_timeout,
                read_timeout=calls.read_timeout,
            )
        return await calls.upstream.post(
            url,
            body,
            {"Content-Type": self._content_type, "Accept-Encoding": "identity", **auth},
            connect_timeout=calls.connect_timeout,
            read_timeout=calls.read_timeout,
        )

    def _bounded(self, raw: bytes, model: str) -> bytes:
        """`raw`, unless it is over the answer limit (``answer_too_large``)."""
        if len(raw) > self._limit:
            raise UpstreamError(
                f"The answer of '{model}' is larger than {self._limit} bytes",
                code="answer_too_large",
            )
        return raw

    # -- a streamed answer ---------------------------------------------------------

    async def chunks(self) -> AsyncIterator[bytes]:
        """The event stream's (or audio's) bytes as they arrive, unbuffered. The lease ends when the
        stream does. A stream that breaks off retires the lease, tells the manager, and
        raises UpstreamError (``stream_interrupted``, 502)."""
        resp, held = self._resp, self._held  # held: None for a remote endpoint (no lease)
        if not self.streamed or resp is None:
            raise RuntimeError("chunks() is for an open streamed answer")
        try:
            async for chunk in resp.iter_chunks():
                if b'"usage"' in chunk and any(m in chunk for m in _USAGE_MARKS):
                    self._usage_tail = chunk
                yield chunk
        except UPSTREAM_ERRORS as exc:
            err = UpstreamError(
                f"The model server's stream for '{self.model}' broke off: "
                f"{exc.__class__.__name__}: {exc}",
                code="stream_interrupted",
            )
            self._outcome = err.status
            self._stop_clock()
            if held is not None and self._link is not None:
                await self._calls.lost_server(held, self.served, self._link)
            raise err from exc
        self._stop_clock()
        if held is not None:
            held.end()

    async def events(self) -> AsyncIterator[str]:
        """Each event's data (``[DONE]`` included), parsed from `chunks` with
        `wire.events.SseParser`; raises as `chunks` does."""
        parser = SseParser()
        rest = b""
        async for chunk in self.chunks():
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                frame = parser.feed(line)
                if frame is not None:
                    yield frame[1]
        if rest:
            parser.feed(rest)
        frame = parser.feed(b"")
        if frame is not None:
            yield frame[1]


def _streams(content_type: str) -> bool:
    """An answer passed on as it comes: an event stream, or audio (speech is sent as it is
    synthesised, sentence by sentence)."""
    return content_type == SSE_MEDIA_TYPE or content_type.startswith("audio/")


async def _raise_for_status(resp: UpstreamResponse) -> None:
    """An error answer (>= 400) raised as the model server's, normalised (its start read)."""
    if resp.status >= 400:
        try:
            raw = await resp.read(ERROR_LIMIT)
        except UPSTREAM_ERRORS:
            raw = b""
        raise normalise_error_body(raw, resp.status, MODEL_SERVER)


def _divert(exc: ProxyError) -> bool:
    """An error after which the next fallback is tried: the host or endpoint is away or
    busy, or the model server could not be reached (nothing reached the caller)."""
    if isinstance(exc, ManagerUnavailable | EndpointUnavailable):
        return True
    if isinstance(exc, ManagerRefused):
        return exc.status in (429, 503)
    return exc.code == "model_server_unreachable"
