"""The proxy's lease pool: one manager lease per model, shared by concurrent requests.

Asking the manager for a lease and releasing it costs two HTTP round trips per
request; the pool makes that one pair per `max_uses` requests. The manager says in
each lease how many proxy requests may share it (``max_uses``: its batch bound
when no other model was waiting at grant time, 1 under contention), so its
fairness between models still counts requests (docs/architecture.md, "Leases").

How a request gets its share (`LeasePool.acquire`):

* It joins the model's *current* lease when that one is still open (not retired
  by a failed renewal, a lost lease or a broken model server), not past its
  expiry, and has admitted fewer than ``max_uses`` requests.
* Otherwise it rides on a grant request already in flight for the model when that
  one has room (fewer riders than the model's last ``max_uses``), or starts a new
  one. When the grant arrives its riders are admitted in arrival order, up to
  ``max_uses``; the ones left over try again. A refused grant (429, 503, ...) fails
  all its riders with the manager's error. A grant request whose riders have all
  gone (clients disconnected) is cancelled, which withdraws it from the manager's
  queue.
* The request ends its share with `LeaseUse.end()` (or `discard()` when the model
  server could not be reached or broke off: nobody joins that lease any more).
  When a lease's last share ends it is released to the manager, after
  ``linger`` seconds without a new request when it is still the current,
  open lease (0: at once); a lease that reached ``max_uses`` or was retired is
  released as soon as it drains.

Each live lease has one renewal timer (at half its ttl). A renewal refused with
404 means the manager no longer knows the lease (expired): it is retired and not
released; while the manager cannot be reached (restarting) the renewal is tried
again every `RENEW_RETRY` seconds and the lease kept; any other renewal failure
retires it (requests in flight go on, new ones get a fresh lease) and renewals go
on. `close()` (proxy shutdown) fails the
waiting riders, releases every lease and waits for the releases (bounded).

Everything runs on one event loop; state changes happen between awaits, so no lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from proxy.errors import ManagerRefused, ManagerUnavailable, ManagerUnreachable
from wire.lease import LeaseGrant

log = logging.getLogger("proxy.leases")

RELEASE_WAIT = 5.0
"""Seconds `close()` waits for releases and renewals still running."""
RENEW_RETRY = 2.0
"""Seconds between renewal attempts while the manager cannot be reached."""


class LeaseSource(Protocol):
    """The manager's lease calls (`proxy.manager_client.ManagerClient` implements them)."""

    async def grant(self, model: str) -> LeaseGrant:
        """Block until a lease on `model` is granted; cancellable. Raises ProxyError."""

    async def renew(self, lease_id: str) -> float:
        """Extend a lease; its new ttl. Raises ManagerRefused (404: unknown lease) or
        ManagerUnavailable."""

    async def release(self, lease_id: str) -> None:
        """Release a lease. Never raises."""


class _Shared:
    """One manager lease and the requests sharing it."""

    __slots__ = ("lease", "refs", "uses", "open", "lost", "done", "expires_at", "linger", "renewal")

    def __init__(self, lease: LeaseGrant, now: float) -> None:
        self.lease = lease
        self.refs = 0
        """Requests holding a share now."""
        self.uses = 0
        """Requests admitted in all (never more than `lease.max_uses`)."""
        self.open = True
        """False once retired: requests in flight go on, nobody joins."""
        self.lost = False
        """The manager no longer knows it (renewal answered 404): nothing to release."""
        self.done = False
        """Released (or lost and drained)."""
        self.expires_at = now + lease.ttl if lease.ttl > 0 else float("inf")
        self.linger: asyncio.TimerHandle | None = None
        self.renewal: asyncio.TimerHandle | None = None


class LeaseUse:
    """One request's share of a pooled lease. `end()` and `discard()` never block or raise,
    and only the first call of either counts."""

    __slots__ = ("_pool", "_shared", "_ended", "lease")

    def __init__(self, pool: LeasePool, shared: _Shared) -> None:
        self._pool, self._shared, self._ended = pool, shared, False
        self.lease = shared.lease

    def end(self) -> None:
        """The model server is done with this request."""
        if not self._ended:
            self._ended = True
            self._pool._drop(self._shared)

    def discard(self) -> None:
        """The model server could not be reached (or broke off): retire the lease, then end."""
        if not self._ended:
            self._pool._retire(self._shared)
            self.end()


class _Ask:
    """A grant request in flight and the requests waiting on it, oldest first."""

    __slots__ = ("task", "riders")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.riders: list[asyncio.Future[LeaseUse | None]] = []


class LeasePool:
    """Shares manager leases among concurrent requests. Use on one event loop."""

    def __init__(self, source: LeaseSource, *, linger: float = 0.05) -> None:
        self._source = source
        self.linger = linger
        self._current: dict[str, _Shared] = {}
        self._live: set[_Shared] = set()
        self._asks: dict[str, list[_Ask]] = {}
        self._hint: dict[str, int] = {}
        """Per model: `max_uses` of its last grant (how many riders one ask may carry)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- requests ---------------------------------------------------------------

    async def acquire(self, model: str) -> LeaseUse:
        """A share of a lease on `model`: joined at once when possible, else after a grant.

        Raises what the grant raises (ManagerRefused, ManagerUnavailable) and
        ManagerUnavailable (503) once the pool is closed. Cancellable: a cancelled
        request takes no share (one handed to it at that instant is ended).
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ManagerUnavailable("The proxy is shutting down", status=503)
            shared = self._current.get(model)
            if shared is not None:
                if self._joinable(shared, loop.time()):
                    return self._join(shared)
                self._retire(shared)
            ask = self._ask_for(model)
            rider: asyncio.Future[LeaseUse | None] = loop.create_future()
            ask.riders.append(rider)
            try:
                use = await rider
            except asyncio.CancelledError:
                self._leave(model, ask, rider)
                raise
            if use is not None:
                return use
            # The grant had no room left for this request: try again.

    def _ask_for(self, model: str) -> _Ask:
        room = self._hint.get(model, 1)
        for ask in self._asks.get(model, ()):
            if len(ask.riders) < room:
                return ask
        ask = _Ask()
        self._asks.setdefault(model, []).append(ask)
        ask.task = self._spawn(self._run_ask(model, ask))
        return ask

    def _leave(self, model: str, ask: _Ask, rider: asyncio.Future[LeaseUse | None]) -> None:
        """A rider was cancelled: hand back a share it got meanwhile; the last rider out
        cancels the grant request."""
        if rider.done() and not rider.cancelled() and rider.exception() is None:
            use = rider.result()
            if use is not None:
                use.end()
        if rider in ask.riders:
            ask.riders.remove(rider)
        if not any(not r.done() for r in ask.riders) and ask.task and not ask.task.done():
            ask.task.cancel()

    async def _run_ask(self, model: str, ask: _Ask) -> None:
        try:
            lease = await self._source.grant(model)
        except asyncio.CancelledError:
            self._fail_riders(ask, ManagerUnavailable("The proxy is shutting down", status=503))
            raise
        except Exception as exc:  # a task boundary: every rider gets the grant's error
            self._fail_riders(ask, exc)
            return
        finally:
            asks = self._asks.get(model, [])
            if ask in asks:
                asks.remove(ask)
            if not asks:
                self._asks.pop(model, None)
        self._settle(model, ask, lease)

    @staticmethod
    def _fail_riders(ask: _Ask, exc: BaseException) -> None:
        for rider in ask.riders:
            if not rider.done():
                rider.set_exception(exc)

    def _settle(self, model: str, ask: _Ask, lease: LeaseGrant) -> None:
        """A grant arrived: admit its riders in order, up to max_uses; make it current."""
        loop = asyncio.get_running_loop()
        max_uses = _uses(lease)
        self._hint[model] = max_uses
        shared = _Shared(lease, loop.time())
        self._live.add(shared)
        self._schedule_renewal(shared)
        if self._closed:
            self._fail_riders(ask, ManagerUnavailable("The proxy is shutting down", status=503))
            self._finish(shared)
            return
        for rider in ask.riders:
            if rider.done():
                continue  # cancelled
            rider.set_result(self._join(shared) if shared.uses < max_uses else None)
        current = self._current.get(model)
        if shared.uses >= max_uses:
            shared.open = False
        elif (
            current is None
            or not self._joinable(current, loop.time())
            or _uses(current.lease) - current.uses < max_uses - shared.uses
        ):
            if current is not None:
                self._retire(current)
            self._current[model] = shared
        else:
            shared.open = False  # the current lease has more room: this one only drains
        if shared.refs == 0:
            self._idle(shared)

    def _joinable(self, shared: _Shared, now: float) -> bool:
        return (
            shared.open
            and not shared.done
            and shared.uses < _uses(shared.lease)
            and now < shared.expires_at
        )

    def _join(self, shared: _Shared) -> LeaseUse:
        if shared.linger is not None:
            shared.linger.cancel()
            shared.linger = None
        shared.uses += 1
        shared.refs += 1
        return LeaseUse(self, shared)

    def _drop(self, shared: _Shared) -> None:
        shared.refs -= 1
        if shared.refs == 0:
            self._idle(shared)

    def _idle(self, shared: _Shared) -> None:
        """No request holds `shared`: linger while it may still be joined, else release."""
        joinable = self._current.get(shared.lease.model) is shared and self._joinable(
            shared, asyncio.get_running_loop().time()
        )
        if joinable and self.linger > 0 and not self._closed:
            shared.linger = asyncio.get_running_loop().call_later(
                self.linger, self._linger_over, shared
            )
        else:
            self._finish(shared)

    def _linger_over(self, shared: _Shared) -> None:
        shared.linger = None
        if shared.refs == 0:
            self._finish(shared)

    def _retire(self, shared: _Shared) -> None:
        """Nobody joins `shared` any more; released when its last request ends."""
        shared.open = False
        if self._current.get(shared.lease.model) is shared:
            del self._current[shared.lease.model]
        if shared.refs == 0:
            self._finish(shared)

    def _finish(self, shared: _Shared) -> None:
        """Release `shared` to the manager (once; not when lost)."""
        if shared.done:
            return
        shared.done = True
        shared.open = False
        for timer in (shared.linger, shared.renewal):
            if timer is not None:
                timer.cancel()
        shared.linger = shared.renewal = None
        if self._current.get(shared.lease.model) is shared:
            del self._current[shared.lease.model]
        self._live.discard(shared)
        if not shared.lost:
            self._spawn(self._source.release(shared.lease.lease_id))

    # -- renewals ---------------------------------------------------------------

    def _schedule_renewal(self, shared: _Shared, ttl: float | None = None) -> None:
        ttl = shared.lease.ttl if ttl is None else ttl
        if ttl > 0 and not shared.done:
            shared.renewal = asyncio.get_running_loop().call_later(
                ttl / 2, lambda: self._spawn(self._renew(shared))
            )

    async def _renew(self, shared: _Shared) -> None:
        shared.renewal = None
        if shared.done:
            return
        lease = shared.lease
        ttl = lease.ttl
        try:
            ttl = await self._source.renew(lease.lease_id)
            shared.expires_at = asyncio.get_running_loop().time() + ttl if ttl > 0 else float("inf")
        except ManagerRefused as exc:
            if exc.status == 404:
                log.warning("lease %s for %s is gone at the manager", lease.lease_id, lease.model)
                shared.lost = True
                self._retire(shared)
                return
            log.warning("renewing lease %s for %s failed: %s", lease.lease_id, lease.model, exc)
            self._retire(shared)
        except ManagerUnreachable as exc:
            # The manager is away (restarting): keep the lease and try again soon; the
            # restarted manager still knows it (leases persist, docs/architecture.md).
            log.warning(
                "renewing lease %s for %s: manager away: %s", lease.lease_id, lease.model, exc
            )
            if not shared.done:
                self._schedule_renewal(shared, min(ttl, RENEW_RETRY * 2))
            return
        except ManagerUnavailable as exc:
            log.warning("renewing lease %s for %s failed: %s", lease.lease_id, lease.model, exc)
            self._retire(shared)
        if not shared.done:
            self._schedule_renewal(shared, ttl)

    # -- plumbing ---------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def stats(self) -> dict[str, int]:
        """Leases held now and grant requests in flight (for tests and metrics)."""
        return {"leases": len(self._live), "asks": sum(len(a) for a in self._asks.values())}

    async def close(self) -> None:
        """Stop sharing: fail waiting requests (503), release every lease, wait (at most
        `RELEASE_WAIT` seconds) for releases and renewals. Idempotent."""
        self._closed = True
        for asks in list(self._asks.values()):
            for ask in asks:
                if ask.task is not None:
                    ask.task.cancel()
        for shared in list(self._live):
            self._finish(shared)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=RELEASE_WAIT)


def _uses(lease: LeaseGrant) -> int:
    """Requests the pool lets share `lease` in all; an unbounded lease (``max_uses`` 0)
    is treated as `max_concurrent` uses for now."""
    return lease.max_uses or lease.max_concurrent
