"""The proxy's side of the manager's HTTP contract (docs/architecture.md).

`ManagerClient` speaks to the manager over one shared `aiohttp.ClientSession`:
the model list (cached for ``models_ttl`` seconds, one fetch at a time), leases
(grant / renew / release), the dead-server report, the manager's health, and its event
stream. It is the manager's HTTP API and nothing else: the lease pool that shares
leases among requests (`proxy.lease_pool`) is its own part, built by the app above it.

Errors: every method that talks to the manager raises `ManagerUnavailable` when
it cannot be reached or answers something that is not its contract, and
`ManagerRefused` (status, envelope and ``Retry-After`` kept) when it answers an
error. A 401 or 422 from the manager is the proxy's own misconfiguration or bug,
never the client's, so it becomes a 502.

Outages (a manager restarting: Docker Desktop, an update): when the manager cannot
be reached (`ManagerUnreachable`: refused, dropped, timed out) or says it is shutting
down, a lease request is retried with exponential backoff (0.1 s doubling to 2 s,
jittered) for ``outage_window`` seconds counted from the first failure, so a restart
of a few seconds costs the client only the wait; after the window the client gets a
503 ``manager_unavailable`` with ``Retry-After``. The model list is served from the
last one fetched while the manager is away. A release that could not be delivered is
retried in the background until the manager answers (for up to ``SETTLE_WINDOW``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from proxy.errors import (
    MANAGER,
    ManagerRefused,
    ManagerUnavailable,
    ManagerUnreachable,
    ProxyError,
    normalise_error_body,
)
from proxy.settings import ProxySettings
from wire.lease import LeaseGrant, LeaseRenewal
from wire.models import ModelList, ModelStatus

log = logging.getLogger("proxy.manager")

_SHORT = aiohttp.ClientTimeout(total=15.0)
_M = TypeVar("_M", bound=BaseModel)
T = TypeVar("T")
OUTAGE_RETRY_AFTER = 5
"""Retry-After (seconds) on the 503 a client gets once the outage window has passed."""
SETTLE_WINDOW = 600.0
"""Seconds a release that could not be delivered is retried in the background."""
NO_WAIT_LOCK = 1.0
"""Seconds `ManagerClient.models(wait=False)` waits for another caller's fetch."""
SHUTTING_DOWN = "manager_shutting_down"
"""The manager's error code while it shuts down (a restart): retried like an outage."""


class ManagerClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        session: aiohttp.ClientSession,
        *,
        models_ttl: float = ProxySettings.default("models_cache_ttl"),
        connect_timeout: float = ProxySettings.default("connect_timeout"),
        outage_window: float = ProxySettings.default("manager_outage_window"),
        lease_read_timeout: float = ProxySettings.default("lease_read_timeout"),
        events_read_timeout: float = ProxySettings.default("events_read_timeout"),
    ) -> None:
        """The defaults are the settings' own (proxy.settings). `lease_read_timeout`: longest wait for a lease answer (the manager's queue timeout
        plus a margin: a manager that stopped answering without closing the connection is
        given up on then); `events_read_timeout`: longest silence on the event stream (a few
        of the manager's heartbeats)."""
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._models_ttl = models_ttl
        self._models: dict[str, ModelStatus] | None = None
        self._models_at = 0.0
        self.gpu_budget_mib: int | None = None
        """The manager's GPU budget, from its last model list (None: none, or not known)."""
        self._models_lock = asyncio.Lock()
        self._lease_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=lease_read_timeout
        )
        self._events_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=events_read_timeout
        )
        self.outage_window = outage_window
        """Seconds a lease request rides out an unreachable manager (module docstring)."""
        self.reachable = True
        """The manager answered the last request (or event stream) the proxy sent it; False
        from a failed connection until its next answer. Read by the fallback choice
        (`proxy.routing`); no request is made to learn it."""

    # -- plumbing ---------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        client_timeout: aiohttp.ClientTimeout = _SHORT,
    ) -> tuple[int, bytes]:
        """One request; returns (status, body) for a 2xx, raises for anything else."""
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                data=body,
                headers=self._json_headers if body is not None else self._headers,
                timeout=client_timeout,
            ) as resp:
                raw = await resp.read()
                self.reachable = True
                if resp.status < 400:
                    return resp.status, raw
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.reachable = False
            raise ManagerUnreachable(
                f"The manager at {self.base_url} cannot be reached: {exc.__class__.__name__}: {exc}"
            ) from exc
        err = normalise_error_body(raw, resp.status, MANAGER)
        if resp.status in (401, 403, 422):
            raise ManagerUnavailable(
                f"The manager refused the proxy's request ({resp.status}: {err.message}); "
                "check HOMELAB_MANAGER_TOKEN on both sides.",
                status=502,
                code="manager_misconfigured",
            )
        headers = {"Retry-After": retry_after} if retry_after else None
        raise ManagerRefused(
            err.message,
            param=err.param,
            status=err.status,
            type=err.type,
            code=err.code,
            headers=headers,
        )

    async def _ride_out(
        self, call: Callable[[], Awaitable[T]], window: float, *, wait_max: float = 2.0
    ) -> T:
        """`call()`, retried with backoff while the manager is away (`is_outage`), for at
        most `window` seconds from the first failure. Past it, the last error is raised
        as a 503 with Retry-After. Cancellable."""
        first_failure: list[float] = []

        def stop(state: RetryCallState) -> bool:
            now = time.monotonic()
            if not first_failure:
                first_failure.append(now)
            return now - first_failure[0] >= window

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait_exponential_jitter(multiplier=0.1, max=wait_max, jitter=0.1),
            retry=retry_if_exception(is_outage),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await call()
        except ProxyError as exc:
            if not is_outage(exc):
                raise
            raise ManagerUnavailable(
                f"{exc.message} (the proxy retried for {window:g} s)",
                headers={"Retry-After": str(OUTAGE_RETRY_AFTER)},
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover (tenacity returns or raises)

    def _json(self, raw: bytes, what: str) -> dict[str, Any]:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ManagerUnavailable(f"The manager's answer to {what} is not JSON") from exc
        if not isinstance(data, dict):
            raise ManagerUnavailable(f"The manager's answer to {what} is not a JSON object")
        return data

    @staticmethod
    def _parse(model: type[_M], raw: bytes, what: str) -> _M:
        """The manager's answer as its `wire` type; ManagerUnavailable if it is not one."""
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors()
            where, why = "the answer", "invalid"
            if errors:
                where = ".".join(str(p) for p in errors[0]["loc"]) or where
                why = errors[0]["msg"]
            raise ManagerUnavailable(
                f"The manager's answer to {what} is not its contract ({where}: {why})"
            ) from exc

    # -- the contract -----------------------------------------------------------

    async def models(
        self, *, max_age: float | None = None, wait: bool = True
    ) -> dict[str, ModelStatus]:
        """The manager's ModelStatus objects keyed by id, at most `max_age` seconds old.

        Concurrent callers share one fetch. Without a list yet, an unreachable manager is
        waited for (`outage_window`) unless `wait` is False (a model with fallbacks).
        Raises ManagerUnavailable / ManagerRefused.
        """
        age = self._models_ttl if max_age is None else max_age
        if self._models is not None and time.monotonic() - self._models_at <= age:
            return self._models
        if not wait and self._models is None and not self.reachable:
            raise ManagerUnavailable(f"The manager at {self.base_url} cannot be reached")
        try:
            async with asyncio.timeout(None if wait else NO_WAIT_LOCK):
                await self._models_lock.acquire()
        except TimeoutError:  # another caller rides out an outage with the lock held
            if self._models is None:
                raise ManagerUnavailable(
                    f"The manager at {self.base_url} cannot be reached"
                ) from None
            return self._models
        try:
            if self._models is not None and time.monotonic() - self._models_at <= age:
                return self._models
            started = time.monotonic()
            try:
                _, raw = await self._ride_out(
                    lambda: self._call("GET", "/v1/models"),
                    0.0 if self._models is not None or not wait else self.outage_window,
                )
            except ManagerUnavailable:
                if self._models is None:
                    raise
                log.info("the manager is away: routing on its last model list")
                return self._models
            listing = self._parse(ModelList, raw, "GET /v1/models")
            self._models = {m.id: m for m in listing.data}
            self._models_at = started
            self.gpu_budget_mib = listing.gpu_budget_mib
            return self._models
        finally:
            self._models_lock.release()

    @property
    def last(self) -> dict[str, ModelStatus] | None:
        """The last model list fetched (however old); None before the first."""
        return self._models

    def fresh(self, max_age: float | None = None) -> bool:
        """The last list is at most `max_age` seconds old (default: the cache's ttl) and
        was not invalidated since."""
        age = self._models_ttl if max_age is None else max_age
        return self._models is not None and time.monotonic() - self._models_at <= age

    def invalidate_models(self) -> None:
        """Make the next `models()` call fetch afresh (a state changed)."""
        self._models_at = float("-inf")

    async def grant(self, model: str, key_name: str = "", key_class: str = "normal") -> LeaseGrant:
        """POST /v1/leases: block until `model` is ready and a lease is granted (bounded
        by the manager's queue timeout), for the API key named `key_name` of class
        `key_class` (the manager's fair share; never the key itself). Cancellable:
        cancelling closes the connection, which withdraws the request from the manager's
        queue."""
        body = orjson.dumps({"model": model, "key_name": key_name, "key_class": key_class})
        _, raw = await self._ride_out(
            lambda: self._call("POST", "/v1/leases", body, client_timeout=self._lease_timeout),
            self.outage_window,
        )
        return self._parse(LeaseGrant, raw, "POST /v1/leases")

    async def renew(self, lease_id: str) -> LeaseRenewal:
        """Extend a lease: its new ttl in seconds, and whether another model waits for its
        model's memory (``contended``: stop sharing it)."""
        _, raw = await self._call("POST", f"/v1/leases/{lease_id}/renew", b"{}")
        return self._parse(LeaseRenewal, raw, "lease renew")

    async def release(self, lease_id: str) -> None:
        """Release a lease. Never raises (an expired lease is already free). While the manager
        is away the release is retried (backoff up to 5 s) for `SETTLE_WINDOW` seconds, so a
        restarted manager that kept the lease learns it is free. Cancellable."""
        try:
            await self._ride_out(
                lambda: self._call("DELETE", f"/v1/leases/{lease_id}"), SETTLE_WINDOW, wait_max=5.0
            )
        except (ManagerUnavailable, ManagerRefused) as exc:
            log.warning("releasing lease %s failed: %s", lease_id, exc.message)

    async def report_unreachable(self, model: str) -> None:
        """Tell the manager `model`'s server could not be reached (POST
        /v1/models/{model}/check): it checks at once and marks a dead one failed. Waits
        for that check (at most 10 s); never raises."""
        self.invalidate_models()
        try:
            await self._call(
                "POST",
                f"/v1/models/{quote(model, safe='')}/check",
                b"{}",
                client_timeout=aiohttp.ClientTimeout(total=10.0),
            )
        except (ManagerUnavailable, ManagerRefused) as exc:
            log.warning("reporting %s unreachable to the manager failed: %s", model, exc.message)

    async def health(self) -> dict[str, Any]:
        """The manager's /healthz answer. Raises ManagerUnavailable."""
        _, raw = await self._call(
            "GET", "/healthz", client_timeout=aiohttp.ClientTimeout(total=5.0)
        )
        return self._json(raw, "GET /healthz")

    async def open_events(self) -> aiohttp.ClientResponse:
        """Open the manager's SSE stream (GET /v1/events). The caller must `.close()` it."""
        try:
            resp = await self._session.get(
                self.base_url + "/v1/events",
                headers={**self._headers, "Accept": "text/event-stream"},
                timeout=self._events_timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.reachable = False
            raise ManagerUnavailable(f"The manager's event stream cannot be opened: {exc}") from exc
        self.reachable = True
        if resp.status >= 400:
            raw = await resp.read()
            resp.close()
            err = normalise_error_body(raw, resp.status, MANAGER)
            raise ManagerUnavailable(
                f"The manager refused its event stream: {err.message}", status=502
            )
        return resp


def is_outage(exc: BaseException) -> bool:
    """The manager is away (unreachable, or answering that it is shutting down), as
    opposed to an answer: worth retrying."""
    if isinstance(exc, ManagerUnreachable):
        return True
    return isinstance(exc, ManagerRefused) and exc.code == SHUTTING_DOWN
