"""The proxy's lease pool: manager leases per model, shared by concurrent requests.

Built by the app (proxy/app.py) above the manager's HTTP API (`proxy.manager_client`),
and used by the one module that calls model servers (`proxy.modelcall`).

Asking the manager for a lease and releasing it costs two HTTP round trips per
request; the pool makes that one pair for as long as the manager lets a lease be
shared. Each lease says how (`wire.lease.LeaseGrant`, docs/architecture.md, "Leases"):

* ``max_uses``: how many proxy requests it may admit in all. 0 = no limit: no other
  model waited at grant time, and the pool keeps sharing it until the manager says
  contention began: a ``contention`` event naming the model (`retire_model`, called by
  `proxy.events.handle_event`) or ``contended`` in a renewal's answer. Under
  contention it is 1, so the manager's fairness between models still counts requests.
* ``max_concurrent``: how many requests may hold it at once (the model's room at grant
  time, at most the manager's batch bound).

Leases are shared only among requests of one API key (`Key`: its name and priority
class, `proxy.keys.Principal`): a grant request tells the manager whose it is
(`wire.lease.LeaseRequest.key_name`, never the key), so the manager can order its waiters
fairly between keys and charge each lease's hold time to one key (docs/architecture.md,
"Fair share"). One key's burst still costs one grant; several keys at once cost one
grant each.

How a request gets its share (`LeasePool.acquire`):

* It joins the first *open* lease of its model and key with a free slot: not retired (by
  contention, a failed renewal, a lost lease or a broken model server), not past its
  expiry, fewer than ``max_concurrent`` requests on it now and, when bounded, fewer
  than ``max_uses`` admitted in all. A lease that is spent (expired, or every use
  admitted) is retired on the way.
* Otherwise it rides on a grant request already in flight for its model and key when
  that one has room (fewer riders than the model's last grant could take at once), or
  starts a new one. When the grant arrives its riders are admitted in arrival order
  while it has slots; the ones left over try again. A refused grant (429, 503, ...)
  fails all its riders with the manager's error. A grant request whose riders have
  all gone (clients disconnected) is cancelled, which withdraws it from the manager's
  queue.
* When a request ends its share of an open lease and requests of the same key are
  waiting on a grant for that model, the slot goes straight to the oldest of them: a model whose room
  at the manager is spent (``max_in_flight``) keeps serving from the leases it holds
  instead of waiting for a release that would never come while they stay busy. (When
  another key waits for that room at the manager, the manager says ``contention`` and
  the leases are retired, so the room goes back to its fair order.)
* The request ends its share with `LeaseUse.end()` (or `discard()` when the model
  server could not be reached or broke off: nobody joins that lease any more).
  When a lease's last share ends it is released to the manager, after ``linger``
  seconds without a new request when it is still open (0: at once); a spent or
  retired lease is released as soon as it drains.

An unbounded lease granted before contention began but answered after the pool heard
of it (the grant and the event travel on different connections) admits the riders it
came for and is retired at once, so contention is never missed that way.

The linger (`HOMELAB_LEASE_LINGER`, default 0.5 s): an idle lease still counts as held
at the manager, so while it lingers its model cannot be stopped (an explicit stop or
its idle timeout waits) and, with several proxies, its slots are not free for the
others. A swap does not wait for it: the contention event retires an idle lease at
once. Only when that event is lost (the event stream reconnecting) does a swap wait,
for at most the linger (or, for a lease kept busy, until its next renewal says
``contended``). Half a second keeps all those delays small beside a model start and
still spares the round trips of a client that sends its next request within it.

Each live lease has one renewal timer (at half its ttl). A renewal refused with
404 means the manager no longer knows the lease (expired): it is retired and not
released; while the manager cannot be reached (restarting) the renewal is tried
again every `RENEW_RETRY` seconds and the lease kept; any other renewal failure, or
an answer saying ``contended``, retires it (requests in flight go on, new ones get a
fresh lease) and renewals go on. `close()` (proxy shutdown) fails the waiting riders,
releases every lease and waits for the releases (bounded).

Everything runs on one event loop; state changes happen between awaits, so no lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from proxy.errors import ManagerRefused, ManagerUnavailable, ManagerUnreachable
from proxy.manager_client import ManagerClient
from proxy.settings import ProxySettings
from wire.lease import LeaseGrant

log = logging.getLogger("proxy.leases")

RELEASE_WAIT = 5.0
"""Seconds `close()` waits for releases and renewals still running."""
RENEW_RETRY = 2.0
"""Seconds between renewal attempts while the manager cannot be reached."""
DEFAULT_LINGER: float = ProxySettings.default("lease_linger")
"""Seconds an idle open lease is kept for the next request (module docstring;
HOMELAB_LEASE_LINGER's default)."""


Key = tuple[str, str]
"""Whose requests may share a lease: an API key's (name, priority class). A plain tuple:
it is made once per request on the hot path."""
NO_KEY: Key = ("", "normal")


class _Shared:
    """One manager lease and the requests sharing it."""

    __slots__ = (
        "key",
        "lease",
        "refs",
        "uses",
        "open",
        "lost",
        "done",
        "expires_at",
        "linger",
        "renewal",
    )

    def __init__(self, lease: LeaseGrant, now: float, key: Key) -> None:
        self.key = key
        self.lease = lease
        self.refs = 0
        """Requests holding a share now (never more than `lease.max_concurrent`)."""
        self.uses = 0
        """Requests admitted in all (never more than `lease.max_uses` when that is not 0)."""
        self.open = True
        """False once retired: requests in flight go on, nobody joins."""
        self.lost = False
        """The manager no longer knows it (renewal answered 404): nothing to release."""
        self.done = False
        """Released (or lost and drained)."""
        self.expires_at = now + lease.ttl if lease.ttl > 0 else float("inf")
        self.linger: asyncio.TimerHandle | None = None
        self.renewal: asyncio.TimerHandle | None = None

    def spent(self, now: float) -> bool:
        """Nobody may join it again: retired, released, expired or every use admitted."""
        return (
            not self.open
            or self.done
            or now >= self.expires_at
            or (self.lease.max_uses > 0 and self.uses >= self.lease.max_uses)
        )

    def has_slot(self, now: float) -> bool:
        """A request may join it now."""
        return self.refs < self.lease.max_concurrent and not self.spent(now)


def _capacity(lease: LeaseGrant) -> int:
    """How many requests one grant of this kind can take at once."""
    if lease.max_uses == 0:
        return lease.max_concurrent
    return max(1, min(lease.max_uses, lease.max_concurrent))


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

    __slots__ = ("model", "key", "task", "riders", "epoch")

    def __init__(self, model: str, key: Key, epoch: int) -> None:
        self.model = model
        self.key = key
        self.task: asyncio.Task[None] | None = None
        self.riders: list[asyncio.Future[LeaseUse | None]] = []
        self.epoch = epoch
        """The model's contention count when the ask was sent (`LeasePool.retire_model`)."""


class LeasePool:
    """Shares manager leases among concurrent requests. Use on one event loop."""

    def __init__(self, manager: ManagerClient, *, linger: float = DEFAULT_LINGER) -> None:
        """`manager`: the manager's HTTP API, for grants, renewals and releases."""
        self._manager = manager
        self.linger = linger
        self._open: dict[str, list[_Shared]] = {}
        """Per model: the leases requests may still join, oldest grant first."""
        self._live: set[_Shared] = set()
        self._asks: dict[str, list[_Ask]] = {}
        self._hint: dict[str, int] = {}
        """Per model: how many requests its last grant could take at once (how many riders
        one ask may carry)."""
        self._epoch: dict[str, int] = {}
        """Per model: how many times the manager said contention began (`retire_model`)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.granted: Counter[str] = Counter()
        """Leases granted by the manager, per model, since start (for metrics)."""
        self.released: Counter[str] = Counter()
        """Leases released to the manager, per model, since start (for metrics)."""

    # -- requests ---------------------------------------------------------------

    async def acquire(self, model: str, key: Key = NO_KEY) -> LeaseUse:
        """A share of a lease on `model` for API key `key`: joined at once when possible,
        else after a grant (or a slot another request of that key hands back meanwhile).

        Raises what the grant raises (ManagerRefused, ManagerUnavailable) and
        ManagerUnavailable (503) once the pool is closed. Cancellable: a cancelled
        request takes no share (one handed to it at that instant is ended).
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ManagerUnavailable("The proxy is shutting down", status=503)
            shared = self._find(model, key, loop.time())
            if shared is not None:
                return self._join(shared)
            ask = self._ask_for(model, key)
            rider: asyncio.Future[LeaseUse | None] = loop.create_future()
            ask.riders.append(rider)
            try:
                use = await rider
            except asyncio.CancelledError:
                self._leave(ask, rider)
                raise
            if use is not None:
                return use
            # The grant had no room left for this request: try again.

    def retire_model(self, model: str) -> None:
        """Another model waits for `model`'s memory (the manager's ``contention`` event):
        stop sharing `model`'s leases. Requests on them go on; nobody joins them; each
        is released as soon as its requests end (an idle one at once). An unbounded grant
        still in flight is retired when it arrives. Never blocks or raises."""
        self._epoch[model] = self._epoch.get(model, 0) + 1
        for shared in list(self._open.get(model, ())):
            self._retire(shared)

    def _find(self, model: str, key: Key, now: float) -> _Shared | None:
        """The first open lease of `model` and `key` with a free slot; spent ones are
        retired."""
        leases = self._open.get(model)
        if not leases:
            return None
        for shared in list(leases):
            if shared.spent(now):
                self._retire(shared)
            elif shared.refs < shared.lease.max_concurrent and shared.key == key:
                return shared
        return None

    def _ask_for(self, model: str, key: Key) -> _Ask:
        room = self._hint.get(model, 1)
        for ask in self._asks.get(model, ()):
            if len(ask.riders) < room and ask.key == key:
                return ask
        ask = _Ask(model, key, self._epoch.get(model, 0))
        self._asks.setdefault(model, []).append(ask)
        ask.task = self._spawn(self._run_ask(model, ask))
        return ask

    def _leave(self, ask: _Ask, rider: asyncio.Future[LeaseUse | None]) -> None:
        """A rider was cancelled: hand back a share it got meanwhile; the last rider out
        cancels the grant request."""
        if rider.done() and not rider.cancelled() and rider.exception() is None:
            use = rider.result()
            if use is not None:
                use.end()
        if rider in ask.riders:
            ask.riders.remove(rider)
        if not any(not r.done() for r in ask.riders) and ask.task and not ask.task.done():
            # Nobody may join it now: a task cancelled before it ran would never answer them.
            self._unlist_ask(ask)
            ask.task.cancel()

    def _unlist_ask(self, ask: _Ask) -> None:
        asks = self._asks.get(ask.model, [])
        if ask in asks:
            asks.remove(ask)
        if not asks:
            self._asks.pop(ask.model, None)

    async def _run_ask(self, model: str, ask: _Ask) -> None:
        try:
            lease = await self._manager.grant(model, *ask.key)
        except asyncio.CancelledError:
            self._fail_riders(ask, ManagerUnavailable("The proxy is shutting down", status=503))
            raise
        except Exception as exc:  # a task boundary: every rider gets the grant's error
            self._fail_riders(ask, exc)
            return
        finally:
            self._unlist_ask(ask)
        self._settle(model, ask, lease)

    @staticmethod
    def _fail_riders(ask: _Ask, exc: BaseException) -> None:
        for rider in ask.riders:
            if not rider.done():
                rider.set_exception(exc)

    def _settle(self, model: str, ask: _Ask, lease: LeaseGrant) -> None:
        """A grant arrived: admit its riders in order while it has slots; keep it open for
        more unless it is spent or contention began while it was asked for."""
        now = asyncio.get_running_loop().time()
        self.granted[model] += 1
        self._hint[model] = _capacity(lease)
        shared = _Shared(lease, now, ask.key)
        self._live.add(shared)
        self._schedule_renewal(shared)
        if self._closed:
            self._fail_riders(ask, ManagerUnavailable("The proxy is shutting down", status=503))
            self._finish(shared)
            return
        for rider in ask.riders:
            if rider.done():
                continue  # cancelled
            rider.set_result(self._join(shared) if shared.has_slot(now) else None)
        stale = lease.max_uses == 0 and ask.epoch != self._epoch.get(model, 0)
        if stale or shared.spent(now):
            shared.open = False
        else:
            self._open.setdefault(model, []).append(shared)
        if shared.refs == 0:
            self._idle(shared)

    def _join(self, shared: _Shared) -> LeaseUse:
        if shared.linger is not None:
            shared.linger.cancel()
            shared.linger = None
        shared.uses += 1
        shared.refs += 1
        return LeaseUse(self, shared)

    def _drop(self, shared: _Shared) -> None:
        shared.refs -= 1
        if self._asks.get(shared.lease.model) and self._hand_over(shared):
            return
        if shared.refs == 0:
            self._idle(shared)

    def _hand_over(self, shared: _Shared) -> bool:
        """Give `shared`'s freed slot to the oldest request of its key waiting on a grant
        for its model; whether one got it. The grant request goes on even when nobody waits on it
        any more (cancelling it could leave a lease granted meanwhile held at the manager
        until its ttl): its lease serves later requests or is released after the linger."""
        if self._closed or not shared.has_slot(asyncio.get_running_loop().time()):
            return False
        for ask in self._asks.get(shared.lease.model, ()):
            if ask.key != shared.key:
                continue
            for rider in ask.riders:
                if not rider.done():
                    ask.riders.remove(rider)
                    rider.set_result(self._join(shared))
                    return True
        return False

    def _idle(self, shared: _Shared) -> None:
        """No request holds `shared`: linger while it may still be joined, else release."""
        joinable = shared in self._open.get(shared.lease.model, ()) and not shared.spent(
            asyncio.get_running_loop().time()
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

    def _unlist(self, shared: _Shared) -> None:
        leases = self._open.get(shared.lease.model)
        if leases is not None and shared in leases:
            leases.remove(shared)
            if not leases:
                del self._open[shared.lease.model]

    def _retire(self, shared: _Shared) -> None:
        """Nobody joins `shared` any more; released when its last request ends."""
        shared.open = False
        self._unlist(shared)
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
        self._unlist(shared)
        self._live.discard(shared)
        if not shared.lost:
            self.released[shared.lease.model] += 1
            self._spawn(self._manager.release(shared.lease.lease_id))

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
            renewal = await self._manager.renew(lease.lease_id)
            ttl = renewal.ttl
            shared.expires_at = asyncio.get_running_loop().time() + ttl if ttl > 0 else float("inf")
            if renewal.contended:  # another model waits: as on a contention event
                self.retire_model(lease.model)
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

    def riding(self, model: str) -> int:
        """This proxy's requests for `model` waiting on a grant besides the grant requests
        themselves (which the manager counts in its queue): what placement adds to that
        host's queue (`proxy.hosts.Fleet.views`)."""
        return sum(
            max(0, sum(1 for r in ask.riders if not r.done()) - 1)
            for ask in self._asks.get(model, ())
        )

    def stats(self) -> dict[str, int]:
        """Leases held now and grant requests in flight (for tests and metrics)."""
        return {"leases": len(self._live), "asks": sum(len(a) for a in self._asks.values())}

    async def close(self) -> None:
        """Stop sharing: fail waiting requests (503), release every lease, wait (at most
        `RELEASE_WAIT` seconds) for releases and renewals. Idempotent."""
        self._closed = True
        for asks in list(self._asks.values()):
            for ask in asks:
                # Failed here too: a task cancelled before it ran never reaches its handler.
                self._fail_riders(ask, ManagerUnavailable("The proxy is shutting down", status=503))
                if ask.task is not None:
                    ask.task.cancel()
        for shared in list(self._live):
            self._finish(shared)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=RELEASE_WAIT)
