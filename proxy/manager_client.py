"""The proxy's side of the manager's HTTP contract (docs/architecture.md).

`ManagerClient` speaks to the manager over one shared `aiohttp.ClientSession`:
the model list (cached for ``models_ttl`` seconds, one fetch at a time), leases
(grant / renew / release), the manager's health, and its event stream. Requests
get their lease through `acquire()`, which shares one manager lease among
concurrent requests for a model (`proxy.lease_pool`).

Errors: every method that talks to the manager raises `ManagerUnavailable` when
it cannot be reached or answers something that is not its contract, and
`ManagerRefused` (status, envelope and ``Retry-After`` kept) when it answers an
error. A 401 or 422 from the manager is the proxy's own misconfiguration or bug,
never the client's, so it becomes a 502.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from proxy.errors import MANAGER, ManagerRefused, ManagerUnavailable, normalise_error_body
from proxy.lease_pool import LeasePool, LeaseUse
from wire.lease import LeaseGrant, LeaseRenewal
from wire.models import ModelList, ModelStatus

log = logging.getLogger("proxy.manager")

_SHORT = aiohttp.ClientTimeout(total=15.0)
_M = TypeVar("_M", bound=BaseModel)


class ManagerClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        session: aiohttp.ClientSession,
        *,
        models_ttl: float = 2.0,
        connect_timeout: float = 10.0,
        lease_linger: float = 0.05,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._models_ttl = models_ttl
        self._models: dict[str, ModelStatus] | None = None
        self._models_at = 0.0
        self._models_lock = asyncio.Lock()
        self._lease_timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout)
        self.leases = LeasePool(self, linger=lease_linger)
        """Shares leases among concurrent requests; `acquire()` goes through it."""

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
                if resp.status < 400:
                    return resp.status, raw
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ManagerUnavailable(
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

    async def models(self, *, max_age: float | None = None) -> dict[str, ModelStatus]:
        """The manager's ModelStatus objects keyed by id, at most `max_age` seconds old.

        Concurrent callers share one fetch. Raises ManagerUnavailable / ManagerRefused.
        """
        age = self._models_ttl if max_age is None else max_age
        if self._models is not None and time.monotonic() - self._models_at <= age:
            return self._models
        async with self._models_lock:
            if self._models is not None and time.monotonic() - self._models_at <= age:
                return self._models
            started = time.monotonic()
            _, raw = await self._call("GET", "/v1/models")
            listing = self._parse(ModelList, raw, "GET /v1/models")
            self._models = {m.id: m for m in listing.data}
            self._models_at = started
            return self._models

    def invalidate_models(self) -> None:
        """Make the next `models()` call fetch afresh (a state changed)."""
        self._models_at = float("-inf")

    async def acquire(self, model: str) -> LeaseUse:
        """A share of a lease on `model` for one request (`proxy.lease_pool`): call
        `.end()` on it when the model server is done, `.discard()` when the model server
        could not be reached. Blocks until `model` is ready (bounded by the manager's
        queue timeout). Raises ManagerRefused / ManagerUnavailable. Cancellable."""
        return await self.leases.acquire(model)

    async def grant(self, model: str) -> LeaseGrant:
        """POST /v1/leases: block until `model` is ready and a lease is granted (bounded
        by the manager's queue timeout). Cancellable: cancelling closes the connection,
        which withdraws the request from the manager's queue."""
        _, raw = await self._call(
            "POST", "/v1/leases", orjson.dumps({"model": model}), client_timeout=self._lease_timeout
        )
        return self._parse(LeaseGrant, raw, "POST /v1/leases")

    async def renew(self, lease_id: str) -> float:
        """Extend a lease; returns its new ttl in seconds."""
        _, raw = await self._call("POST", f"/v1/leases/{lease_id}/renew", b"{}")
        return self._parse(LeaseRenewal, raw, "lease renew").ttl

    async def release(self, lease_id: str) -> None:
        """Release a lease. Never raises (an expired lease is already free)."""
        try:
            await self._call("DELETE", f"/v1/leases/{lease_id}")
        except (ManagerUnavailable, ManagerRefused) as exc:
            log.warning("releasing lease %s failed: %s", lease_id, exc.message)

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
                timeout=self._lease_timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ManagerUnavailable(f"The manager's event stream cannot be opened: {exc}") from exc
        if resp.status >= 400:
            raw = await resp.read()
            resp.close()
            err = normalise_error_body(raw, resp.status, MANAGER)
            raise ManagerUnavailable(
                f"The manager refused its event stream: {err.message}", status=502
            )
        return resp

    async def aclose(self) -> None:
        """Release every pooled lease and wait (briefly) for the releases."""
        await self.leases.close()
