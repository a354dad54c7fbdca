"""The scheduler: the single owner of every model's lifecycle, queues and leases.

Several models may be resident at once, as long as their declared GPU memory fits the
budget (`manager.budget`); without declarations or a budget, one at a time.
Everything runs on one asyncio event loop. State is only read and changed
between awaits, so no lock is needed: each event (a request arrives, is
withdrawn, a lease is released or expires, a start or stop finishes, a
housekeeping tick) updates the records and calls `_pump()`, which asks the pure
`policy.decide()` what to do and applies the answer (grant leases, begin a
stop, begin a start) until the answer is "wait". Starts and stops run as
background tasks that report back through `_pump()`.

The scheduler touches model servers only through the `ContainerRuntime`,
`ReadinessProbe` and `manager.warm.WarmControl` protocols: no Docker, no HTTP here.

The warm tier (docs/architecture.md, "Three tiers"): with a `WarmControl` and a host
memory budget, the policy may put an idle model that opts in (models.json ``warm``) to
sleep instead of stopping it (`ready -> falling_asleep -> sleeping`), and wake it for
the next request (`sleeping -> waking -> ready`). A sleep that fails leaves the model
`failed` (it is then stopped); a wake that fails too, and its waiters stay queued: the
policy stops the server and cold-starts the model for them. Cold-start and wake times
and each sleeping server's host memory are learned (`manager.warm.SwapTimes`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from manager import adoption, policy
from manager.budget import GpuBudget
from manager.errors import (
    BusyError,
    GpuMemoryNotReleased,
    ManagerError,
    RuntimeFailure,
    ShuttingDown,
    StartFailed,
    UnknownModelError,
)
from manager.fairshare import Usage
from manager.footprints import FootprintStore, GpuUsed
from manager.lease_store import LeaseStore
from manager.leases import Lease, LeaseTable
from manager.probe import GpuReleaseCheck, ReadinessProbe
from manager.runtime import (
    ContainerRuntime,
    HostMemoryRuntime,
    Instance,
    PreparingRuntime,
    Spec,
    spec_hash,
)
from manager.settings import ManagerSettings
from manager.spec import AudioModel, Catalogue, ImageModel, TextModel
from manager.state import ModelState, transition
from manager.warm import (
    DEFAULT_LOAD_S,
    DEFAULT_WAKE_S,
    SwapTimes,
    WarmControl,
    WarmFailure,
    host_mib_of,
)
from wire.events import ContentionEvent, Event, StateEvent, SwapEvent, event_frame
from wire.fanout import Fanout
from wire.lease import CLASS_RANK
from wire.models import Backend, ModelStatus

log = logging.getLogger(__name__)

RETRY_AFTER_BUSY = 5.0
"""Retry-After (seconds) when the wanted model is ready but the queue is full."""
RETRY_AFTER_SWAP = 30.0
"""Retry-After (seconds) when the wanted model still has to be started."""


_DEFAULT = ManagerSettings.default


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's knobs; `from_settings` maps the HOMELAB_* settings onto them. The
    defaults are the settings' own (manager.settings, written there once)."""

    queue_limit: int = _DEFAULT("queue_limit")
    queue_timeout: float = _DEFAULT("queue_timeout")
    batch_bound: int = _DEFAULT("batch_bound")
    lease_ttl: float = _DEFAULT("lease_ttl")
    stop_timeout: float = _DEFAULT("stop_timeout")
    gpu_release_timeout: float = _DEFAULT("gpu_release_timeout")
    liveness_interval: float = _DEFAULT("liveness_interval")
    fair_share_half_life: float = _DEFAULT("fair_share_half_life")
    advertise_host: str | None = None
    """The host in lease base_urls (`ManagerSettings.advertised_host()`); None: the runtime's."""
    stop_attempts: int = 3
    stop_backoff: float = 0.5
    standby: bool = _DEFAULT("standby")
    """Keep every model that is not resident prepared (`PreparingRuntime.prepare`; Docker:
    a standby container), after adoption and after each stop."""

    @classmethod
    def from_settings(cls, settings: ManagerSettings) -> SchedulerConfig:
        return cls(
            queue_limit=settings.queue_limit,
            queue_timeout=settings.queue_timeout,
            batch_bound=settings.batch_bound,
            lease_ttl=settings.lease_ttl,
            stop_timeout=settings.stop_timeout,
            gpu_release_timeout=settings.gpu_release_timeout,
            liveness_interval=settings.liveness_interval,
            fair_share_half_life=settings.fair_share_half_life,
            advertise_host=settings.advertised_host(),
            standby=settings.standby,
        )


@dataclass(eq=False)
class _Waiter:
    model: str
    ticket: int
    """Arrival order across all models (strictly increasing): the FIFO key."""
    future: asyncio.Future[Lease]
    key_name: str = ""
    """The API key's name it waits for (`wire.lease.LeaseRequest.key_name`)."""
    key_class: str = "normal"


@dataclass(eq=False)
class _Record:
    name: str
    spec: Spec
    since: float
    last_active: float
    """Monotonic time of the last grant, release or ready: the idle timer's origin."""
    state: ModelState = ModelState.STOPPED
    last_error: str | None = None
    last_used: float | None = None
    stop_requested: bool = False
    waiters: deque[_Waiter] = field(default_factory=deque)
    stop_futures: list[asyncio.Future[ModelState]] = field(default_factory=list)
    api_key: str | None = field(default=None, repr=False)
    """The running server's upstream key, as its runtime reported it once it was ready."""
    granted_since_blocked: int = 0
    """Grants that counted against the batch bound since another model became blocked."""
    overtaken: int = 0
    """Starts of other models that went ahead of its waiters (reset when it starts)."""
    observed_mib: int | None = None
    """GPU memory it was seen to take when it last became ready (`manager.footprints`)."""
    gpu_free: bool = False
    """It fell asleep and has not begun to wake: its GPU memory is given back."""
    host_held: bool = False
    """Its weights are (or are going) into host memory: from falling asleep until it is
    awake again or its server is gone."""
    sleep_broken: bool = False
    """Its server failed to sleep or wake: it is not put to sleep again until restarted."""


class Scheduler:
    """Owns model lifecycle, the wait queue and leases. Construct it anywhere; use it on
    one event loop (it is not thread-safe).

    Call `start()` once (adopts running servers, starts housekeeping) and
    `close()` at the end. Model servers are left running on close, so the next
    manager adopts them.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        runtime: ContainerRuntime,
        probe: ReadinessProbe,
        config: SchedulerConfig | None = None,
        *,
        events: Fanout[Event] | None = None,
        gpu_released: GpuReleaseCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        lease_store: LeaseStore | None = None,
        budget: GpuBudget | None = None,
        gpu_used: GpuUsed | None = None,
        footprints: FootprintStore | None = None,
        warm: WarmControl | None = None,
        host_budget_mib: int | None = None,
        swap_times: SwapTimes | None = None,
    ) -> None:
        """`lease_store`: where the lease table is kept across restarts
        (`manager.lease_store`); None keeps leases in memory only. `budget`: the GPU
        memory the models share (`manager.budget`; None: one model at a time); the
        catalogue is expected to have been through `manager.budget.apply`. `gpu_used`
        reads the GPU's used memory (NVML) to learn each model's footprint into
        `footprints` (`manager.footprints`); None: footprints are not measured. `warm`
        puts servers to sleep and wakes them (`manager.warm`), within `host_budget_mib`
        of host memory; either None: no model is kept warm. `swap_times` keeps the
        learned cold-start and wake times (None: in memory only)."""
        self.catalogue = catalogue
        self.runtime = runtime
        self.probe = probe
        self.config = config or SchedulerConfig()
        self.events: Fanout[Event] = events or Fanout(encode=event_frame)
        """State, swap and contention events, for `GET /v1/events` (`wire.fanout`)."""
        self._gpu_released = gpu_released
        self.budget = budget or GpuBudget(None, None, "none")
        self._gpu_used = gpu_used
        self._footprints = footprints
        self._warm = warm
        self.host_budget_mib = host_budget_mib if warm is not None else None
        """Host memory sleeping models may take together (None: no warm tier)."""
        self.swap_times = swap_times or SwapTimes()
        self._gpu_generation = 0
        """Bumped at every start and every finished stop: a footprint is only taken when
        nothing else started or stopped during the model's start."""
        self._clock = clock
        self._wall = wall_clock
        now, wall = clock(), wall_clock()
        self._records = {
            name: _Record(name, spec, since=wall, last_active=now)
            for name, spec in catalogue.models.items()
        }
        if footprints is not None:
            for name, mib in footprints.observed().items():
                if name in self._records:
                    self._records[name].observed_mib = mib
        self.leases = LeaseTable(
            self.config.lease_ttl, clock, store=lease_store, wall_clock=wall_clock
        )
        """Every live lease (`manager.leases`)."""
        self.usage = Usage(self.config.fair_share_half_life, clock)
        """Recent GPU-seconds per API key name: the hold time of its ended leases
        (`manager.fairshare`)."""
        self._overtaken: dict[tuple[str, str], int] = {}
        """(model, key name) -> newer requests of other keys granted on the model since
        that key's last grant there, while it waited (`policy.MAX_WAITER_OVERTAKES`)."""
        self._room_contended: set[str] = set()
        """Ready models whose room is spent while requests of several keys wait or hold
        leases on them (their leases are for one request each, and not shared)."""
        self._blocked: str | None = None
        """The waiting model that does not fit until residents make room, at the last pump."""
        self._last_stopped: str | None = None
        """The model whose stop finished last, until the next start (the swap's `from`)."""
        self._gpu_dirty = False
        self._tickets = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        self._closed = False
        self.adopted = False
        """Whether adoption has run (it is retried by `tick()` until it has)."""
        self.swaps = 0
        """How many starts and wakes the scheduler has begun (adoption excluded)."""
        self.evictions = 0
        """How many ready models it stopped or put to sleep to make room for another."""
        self.sleeps = 0
        """How many times it put a model to sleep."""
        self.wakes = 0
        """How many times it began waking a model."""
        watch = getattr(runtime, "watch_exits", None)
        if watch is not None:
            watch(self._server_exited)

    # ----------------------------------------------------------------- lookups

    def spec(self, model: str) -> Spec:
        """The catalogue entry for `model`. Raises UnknownModelError (listing the known ones)."""
        return self._record(model).spec

    def _record(self, model: str) -> _Record:
        rec = self._records.get(model)
        if rec is None:
            raise UnknownModelError(model, self.catalogue.names())
        return rec

    @property
    def residents(self) -> list[str]:
        """The models that may hold GPU memory now (starting, ready, stopping, failed,
        falling asleep or waking; not those whose GPU memory went with their sleep), in
        catalogue order."""
        return [name for name, rec in self._records.items() if _on_gpu(rec)]

    @property
    def sleepers(self) -> list[str]:
        """The models whose weights are (or are going) into host memory, in catalogue order."""
        return [name for name, rec in self._records.items() if rec.host_held]

    def contended(self, model: str) -> bool:
        """Whether another model waits for memory that `model` may have to give up: its
        leases should not be shared any more (`wire.lease.LeaseRenewal.contended`)."""
        rec = self._record(model)
        if model in self._room_contended:
            return True
        return self._blocked is not None and _on_gpu(rec) and not rec.spec.pinned

    def state(self, model: str) -> ModelState:
        return self._record(model).state

    def lease(self, lease_id: str) -> Lease:
        """The live lease `lease_id`. Raises LeaseNotFound."""
        return self.leases.get(lease_id)

    def base_url(self, model: str) -> str:
        """Where the proxy reaches `model`'s server (the advertised host, else the runtime's)."""
        spec = self.spec(model)
        if self.config.advertise_host:
            host = self.config.advertise_host
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            return f"http://{host}:{spec.port}"
        return self.runtime.base_url(spec)

    # ----------------------------------------------------------------- leases

    async def acquire(
        self,
        model: str,
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        key_name: str = "",
        key_class: str = "normal",
    ) -> Lease:
        """Wait until `model` is ready and return a lease on it, for the API key named
        `key_name` of priority class `key_class` (its place in the fair order).

        Blocks (queued behind other models as the policy says) for at most
        `timeout` seconds (default: `queue_timeout`). Raises UnknownModelError,
        BusyError (queue full, or the wait timed out; `retry_after` set),
        StartFailed (the start this request waited for failed), RuntimeFailure
        (the scheduler is closed). Cancellable: a cancelled wait leaves the
        queue, and a lease granted at that instant is released.
        """
        rec = self._record(model)
        self._check_open()
        waiter = _Waiter(
            model,
            next(self._tickets),
            asyncio.get_running_loop().create_future(),
            key_name,
            key_class if key_class in CLASS_RANK else "normal",
        )
        rec.waiters.append(waiter)
        self._pump()
        if not waiter.future.done() and self.waiting_count() > self.config.queue_limit:
            self._abandon(waiter)
            raise BusyError(
                f"the manager's queue is full ({self.config.queue_limit} waiting); retry later",
                self._retry_after(rec),
            )
        wait = self.config.queue_timeout if timeout is None else timeout
        try:
            done, _ = await asyncio.wait({waiter.future}, timeout=wait)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if not done:
            self._abandon(waiter)
            raise BusyError(
                f"model {model!r} was not ready within {wait:g} s (state: {rec.state.value}); "
                "retry later",
                self._retry_after(rec),
            )
        return waiter.future.result()

    def release(self, lease_id: str) -> None:
        """End a lease. Raises LeaseNotFound. Never blocks."""
        lease = self.lease(lease_id)
        self._drop_lease(lease)
        self._pump()

    def renew(self, lease_id: str) -> Lease:
        """Push a lease's expiry `lease_ttl` seconds from now. Raises LeaseNotFound."""
        return self.leases.renew(lease_id)

    async def ensure(self, model: str, timeout: float | None = None) -> tuple[ModelState, str]:  # noqa: ASYNC109
        """Make `model` resident and wait until it is ready, holding nothing afterwards.

        Queues like `acquire` (same errors) and returns (state, base_url).
        """
        lease = await self.acquire(model, timeout)
        state = self._record(model).state
        self.release(lease.lease_id)
        return state, lease.base_url

    async def stop(self, model: str) -> ModelState:
        """Stop `model` once its leases in flight are released; return its final state.

        Returns at once if the model is not resident. New requests for the model
        queue meanwhile and start it again afterwards. Raises UnknownModelError,
        RuntimeFailure (the runtime could not stop it). Cancelling the caller does
        not cancel the stop: it was asked for and goes ahead.
        """
        rec = self._record(model)
        self._check_open()
        if not _has_server(rec):
            return rec.state
        future: asyncio.Future[ModelState] = asyncio.get_running_loop().create_future()
        rec.stop_futures.append(future)
        rec.stop_requested = True
        self._pump()
        return await future

    async def logs(self, model: str, tail: int) -> str:
        """The last `tail` lines of `model`'s server output. Raises UnknownModelError, RuntimeFailure."""
        rec = self._record(model)
        return await self.runtime.logs(model, rec.spec, tail)

    def waiting_by_key(self) -> dict[tuple[str, str, str], int]:
        """Waiters now per (model, key class, key name) (metrics)."""
        out: dict[tuple[str, str, str], int] = {}
        for rec in self._records.values():
            for w in rec.waiters:
                k = (rec.name, w.key_class, w.key_name)
                out[k] = out.get(k, 0) + 1
        return out

    def leases_by_key(self) -> dict[tuple[str, str, str], int]:
        """Live leases now per (model, key class, key name) (metrics)."""
        out: dict[tuple[str, str, str], int] = {}
        for lease in self.leases.all():
            k = (lease.model, lease.key_class, lease.key_name)
            out[k] = out.get(k, 0) + 1
        return out

    def waiting_count(self) -> int:
        return sum(len(rec.waiters) for rec in self._records.values())

    def _new_lease(
        self,
        rec: _Record,
        max_uses: int = 1,
        max_concurrent: int = 1,
        waiter: _Waiter | None = None,
    ) -> Lease:
        lease = self.leases.grant(
            rec.name,
            rec.spec.type,
            self.base_url(rec.name),
            max_uses,
            max_concurrent=max_concurrent,
            api_key=rec.api_key,
            key_name=waiter.key_name if waiter else "",
            key_class=waiter.key_class if waiter else "normal",
        )
        self._touch(rec)
        return lease

    def _drop_lease(self, lease: Lease) -> None:
        if self.leases.drop(lease):
            self.usage.charge(lease.key_name, self._clock() - lease.granted_at)
        self._touch(self._records[lease.model])

    def _touch(self, rec: _Record) -> None:
        rec.last_used = self._wall()
        rec.last_active = self._clock()

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter gives up: leave the queue, or hand back a lease granted meanwhile."""
        rec = self._records[waiter.model]
        if waiter in rec.waiters:
            rec.waiters.remove(waiter)
        if waiter.future.done():
            if not waiter.future.cancelled() and waiter.future.exception() is None:
                lease = waiter.future.result()
                if lease.lease_id in self.leases:
                    self._drop_lease(lease)
        else:
            waiter.future.cancel()
        self._pump()

    def _retry_after(self, rec: _Record) -> float:
        ready = rec.state is ModelState.READY
        wait = RETRY_AFTER_BUSY if ready else RETRY_AFTER_SWAP
        return float(max(1, math.ceil(min(wait, self.config.queue_timeout))))

    # ----------------------------------------------------------------- the pump

    def _used_now(self) -> dict[str, float] | None:
        """Recent GPU-seconds of every key name that waits (ended leases, decayed, plus
        the hold time so far of its live ones); None when fewer than two names wait (the
        fair order is then the arrival order)."""
        names = {w.key_name for rec in self._records.values() for w in rec.waiters}
        if len(names) < 2:
            return None
        used = {name: self.usage.used(name) for name in names}
        now = self._clock()
        for lease in self.leases.all():
            if lease.key_name in used:
                used[lease.key_name] += now - lease.granted_at
        return used

    def _shares(self, rec: _Record, used: dict[str, float] | None) -> list[policy.Share]:
        if used is None:
            return []
        out, seen = [], set()
        for w in rec.waiters:
            first = w.key_name not in seen
            seen.add(w.key_name)
            overtaken = self._overtaken.get((rec.name, w.key_name), 0) if first else 0
            out.append(policy.Share(CLASS_RANK[w.key_class], used[w.key_name], overtaken))
        return out

    def _view(self) -> policy.View:
        now = self._clock()
        used = self._used_now()
        return policy.View(
            now=now,
            host_capacity=self.host_budget_mib,
            models={
                name: policy.ModelView(
                    warm=rec.spec.warm is not None and not rec.sleep_broken,
                    host_cost=host_mib_of(rec.spec, self.swap_times, name),
                    gpu_free=rec.gpu_free,
                    host_held=rec.host_held,
                    wake_s=self._usual_wake(rec),
                    load_s=self._usual_load(rec),
                    state=rec.state,
                    cost=self.budget.cost(rec.spec),
                    in_flight=self.leases.held(name),
                    waiters=[w.ticket for w in rec.waiters],
                    priority=rec.spec.priority,
                    pinned=rec.spec.pinned,
                    last_used=rec.last_active,
                    room=self._room(rec) if rec.state is ModelState.READY else None,
                    stop_requested=rec.stop_requested or self._idle(rec, now),
                    granted_since_blocked=rec.granted_since_blocked,
                    overtaken=rec.overtaken,
                    shares=self._shares(rec, used),
                )
                for name, rec in self._records.items()
            },
            capacity=self.budget.mib,
            batch_bound=self.config.batch_bound,
        )

    def _usual_wake(self, rec: _Record) -> float:
        learned = self.swap_times.usual(rec.name, "wake_s")
        if learned is not None:
            return learned
        return DEFAULT_WAKE_S[rec.spec.warm.level if rec.spec.warm else 1]

    def _usual_load(self, rec: _Record) -> float:
        learned = self.swap_times.usual(rec.name, "load_s")
        return DEFAULT_LOAD_S if learned is None else learned

    def _room(self, rec: _Record) -> int:
        """How many more requests `rec`'s server may be given: its `max_in_flight` minus
        the uses its leases in flight may carry at once."""
        return max(0, rec.spec.max_in_flight - self.leases.uses(rec.name))

    def _idle(self, rec: _Record, now: float) -> bool:
        """`rec` has been unused for its `idle_ttl`: ready, or asleep (a sleeping model
        gives its host memory back then too)."""
        ttl = rec.spec.idle_ttl
        return (
            ttl is not None
            and not rec.spec.pinned
            and rec.state in (ModelState.READY, ModelState.SLEEPING)
            and not self.leases.held(rec.name)
            and not rec.waiters
            and now - rec.last_active >= ttl
        )

    def _pump(self) -> None:
        """Apply policy decisions until the policy says wait. Synchronous; never raises."""
        if self._closed:
            return
        for _ in range(10_000):
            view = self._view()
            self._note_blocked(policy.blocked(view))
            decision = policy.decide(view)
            if decision.is_wait:
                self._note_room_contention()
                return
            if decision.grant:
                rec = self._records[decision.grant]
                self._grant(rec, decision.picks)
                rec.granted_since_blocked += decision.counted
            elif decision.stop:
                rec = self._records[decision.stop]
                if rec.state is ModelState.READY and not view.models[rec.name].stop_requested:
                    self.evictions += 1
                self._begin_stop(rec)
            elif decision.start:
                self._begin_start(self._records[decision.start])
            elif decision.sleep:
                self.evictions += 1
                self._begin_sleep(self._records[decision.sleep])
            elif decision.wake:
                self._begin_wake(self._records[decision.wake])
        log.error("scheduler pump did not settle; state: %s", self._view())

    def _note_blocked(self, blocked: str | None) -> None:
        """Track when a waiting model starts or stops being blocked by the residents.

        When the blocking begins, requests that may still join the residents' shared
        leases (granted before) count against the bound, and the proxies are told to stop
        sharing those leases (`wire.events.ContentionEvent`)."""
        was, self._blocked = self._blocked, blocked
        if blocked is not None and blocked != was and not _has_server(self._records[blocked]):
            self._prepare(self._records[blocked])
        if blocked is None:
            if was is not None:
                for rec in self._records.values():
                    rec.granted_since_blocked = 0
            return
        if was is not None:
            return
        told = []
        for rec in self._records.values():
            if _on_gpu(rec) and not rec.spec.pinned:
                rec.granted_since_blocked = min(
                    self.config.batch_bound,
                    self.leases.spare_uses(rec.name, unbounded=self.config.batch_bound),
                )
                if self.leases.held(rec.name):
                    told.append(rec.name)
        if told:
            self.events.publish(ContentionEvent(models=told, at=self._wall()))

    def _several_keys(self, rec: _Record, waiters: Sequence[_Waiter]) -> bool:
        """Whether requests of more than one key wait among `waiters` or hold `rec`'s
        leases."""
        names = self.leases.holders(rec.name)
        names.update(w.key_name for w in waiters)
        return len(names) > 1

    def _note_room_contention(self) -> None:
        """After a pump: a ready model whose waiters wait for room (its `max_in_flight`
        spent) while several keys wait or hold leases on it is *room-contended*: its
        leases are no longer shared (a ``contention`` event and ``contended`` renewals,
        as for a blocked model), so room comes back to the manager's fair order one
        request at a time instead of being handed on inside one key's lease. One key
        alone keeps its shared leases (its burst costs one grant)."""
        now = {
            rec.name
            for rec in self._records.values()
            if rec.waiters
            and rec.state is ModelState.READY
            and self._several_keys(rec, rec.waiters)
        }
        if now == self._room_contended:
            return
        told = sorted(n for n in now - self._room_contended if self.leases.held(n))
        self._room_contended = now
        if told:
            self.events.publish(ContentionEvent(models=told, at=self._wall()))

    def _prepare(self, rec: _Record) -> None:
        """Let the runtime do ahead what `rec`'s start needs (Docker: a standby container),
        so the start costs only the launch: while residents make room for `rec`, and
        (`config.standby`) for every model not resident, after adoption and each stop."""
        if isinstance(self.runtime, PreparingRuntime):
            self._spawn(self._run_prepare(rec), name=f"prepare {rec.name}")

    async def _run_prepare(self, rec: _Record) -> None:
        assert isinstance(self.runtime, PreparingRuntime)
        try:
            await self.runtime.prepare(rec.name, rec.spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # only an optimisation: the start does it all again
            log.info("preparing %s failed (its start will do it): %s", rec.name, exc)

    def _grant(self, rec: _Record, picks: Sequence[int]) -> None:
        """Grant the waiters at `picks` (indices into its queue, in fair order; no more
        than its room). Unless the model may have to make room for a blocked one, or
        requests of other keys will still wait for its room afterwards, each lease is
        unbounded (`max_uses` 0) and may carry at once the room left after the rest of
        this batch got one each, at most the batch bound; else each lease is for one
        request. The waiters left behind count the newer ones that went first."""
        chosen = [rec.waiters[i] for i in picks]
        for waiter in chosen:
            rec.waiters.remove(waiter)
        shared = (self._blocked is None or rec.spec.pinned) and not (
            rec.waiters and self._several_keys(rec, [*rec.waiters, *chosen])
        )
        count = len(chosen)
        for i, waiter in enumerate(chosen):
            room_left = self._room(rec) - (count - 1 - i)
            if shared:
                at_once = max(1, min(self.config.batch_bound, room_left))
                lease = self._new_lease(rec, max_uses=0, max_concurrent=at_once, waiter=waiter)
            else:
                lease = self._new_lease(rec, waiter=waiter)
            waiter.future.set_result(lease)
        self._count_overtakes(rec, chosen)

    def _count_overtakes(self, rec: _Record, chosen: Sequence[_Waiter]) -> None:
        """Each key still waiting on `rec` counts the newer requests of other keys just
        granted; a key just granted starts again from 0."""
        granted = {w.key_name for w in chosen}
        oldest: dict[str, int] = {}
        for w in rec.waiters:
            oldest.setdefault(w.key_name, w.ticket)
        counts = self._overtaken
        for name in granted:
            counts.pop((rec.name, name), None)
        for name, ticket in oldest.items():
            if name not in granted:
                n = sum(1 for w in chosen if w.ticket > ticket)
                if n:
                    counts[(rec.name, name)] = counts.get((rec.name, name), 0) + n
        for key in [k for k in counts if k[0] == rec.name and k[1] not in oldest]:
            del counts[key]

    def _set_state(self, rec: _Record, new: ModelState, error: str | None = None) -> None:
        previous = rec.state
        rec.state = transition(previous, new)
        rec.since = self._wall()
        if error is not None:
            rec.last_error = error
        log.info("model %s: %s -> %s%s", rec.name, previous, new, f" ({error})" if error else "")
        self.events.publish(
            StateEvent(
                model=rec.name, state=new.wire, previous=previous.wire, at=rec.since, error=error
            )
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------- starting

    def _begin_start(self, rec: _Record, *, adopted: bool = False) -> None:
        self._set_state(rec, ModelState.STARTING)
        self._going_first(rec, swap=not adopted)
        self._spawn(self._run_start(rec, adopted), name=f"start {rec.name}")

    def _going_first(self, rec: _Record, *, swap: bool) -> None:
        """A start or wake of `rec` begins: the waiting models it goes ahead of count it,
        and (unless adopted) a swap event names what left the GPU last."""
        rec.stop_requested = False
        rec.granted_since_blocked = 0
        self._gpu_generation += 1
        first = rec.waiters[0].ticket if rec.waiters else math.inf
        for other in self._records.values():
            if other is not rec and _startable(other) and other.waiters:
                if other.waiters[0].ticket < first:
                    other.overtaken += 1
        rec.overtaken = 0
        if swap:
            self.swaps += 1
            self.events.publish(
                SwapEvent(from_model=self._last_stopped, to=rec.name, at=self._wall())
            )
        self._last_stopped = None

    # ----------------------------------------------------------------- sleeping and waking

    def _begin_sleep(self, rec: _Record) -> None:
        self._set_state(rec, ModelState.FALLING_ASLEEP)
        rec.host_held = True
        self.sleeps += 1
        self._spawn(self._run_sleep(rec), name=f"sleep {rec.name}")

    async def _run_sleep(self, rec: _Record) -> None:
        """Ask the server to sleep; record the outcome. Cancelled by close()."""
        assert self._warm is not None
        try:
            await self._warm.sleep(rec.spec, self.runtime.base_url(rec.spec), rec.api_key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a task boundary: a server that cannot sleep is stopped
            rec.sleep_broken = True
            self._set_state(rec, ModelState.FAILED, error=f"sleep failed: {exc}")
        else:
            rec.gpu_free = True
            self._gpu_dirty = True
            self._gpu_generation += 1
            self._last_stopped = rec.name
            self._set_state(rec, ModelState.SLEEPING)
            # Measured aside: Docker's stats take a second or two, the pump must not wait.
            self._spawn(self._learn_host_memory(rec), name=f"host memory of {rec.name}")
        self._pump()

    async def _learn_host_memory(self, rec: _Record) -> None:
        """Read what the sleeping server holds in host memory (where the runtime can say)
        and keep it; warn when it is over its declaration. Cancelled by close()."""
        if not isinstance(self.runtime, HostMemoryRuntime):
            return
        try:
            mib = await self.runtime.host_memory_mib(rec.name, rec.spec)
        except Exception as exc:  # only a measurement
            log.info("could not read the host memory of %s: %s", rec.name, exc)
            return
        if mib is None:
            return
        self.swap_times.record(rec.name, "host_mib", mib)
        declared = rec.spec.warm.host_memory_mib if rec.spec.warm else None
        if declared is not None and mib > declared:
            log.warning(
                "model %s holds %d MiB of host memory asleep, more than the %d MiB "
                "models.json declares (warm.host_memory_mib)",
                rec.name,
                mib,
                declared,
            )

    def _begin_wake(self, rec: _Record) -> None:
        self._set_state(rec, ModelState.WAKING)
        rec.gpu_free = False
        self.wakes += 1
        self._going_first(rec, swap=True)
        self._spawn(self._run_wake(rec), name=f"wake {rec.name}")

    async def _run_wake(self, rec: _Record) -> None:
        """Wait for GPU room, wake the server, check it answers; record the outcome. A
        failed wake leaves the model `failed` with its waiters queued: the policy stops
        it and cold-starts it for them. Cancelled by close()."""
        assert self._warm is not None
        try:
            await self._wait_gpu_room(rec)
            began = self._clock()
            await self._warm.wake(rec.spec, self.runtime.base_url(rec.spec), rec.api_key)
            reason = await self.probe.check_alive(rec.name, rec.spec, self.runtime)
            if reason:
                raise WarmFailure(f"the server does not answer after waking: {reason}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a task boundary: fall back to a cold start
            rec.sleep_broken = True
            self._set_state(
                rec, ModelState.FAILED, error=f"wake failed: {exc}; it is cold-started instead"
            )
        else:
            self.swap_times.record(rec.name, "wake_s", self._clock() - began)
            rec.host_held = False
            self._set_state(rec, ModelState.READY)
            rec.last_active = self._clock()
        self._pump()

    async def _run_start(self, rec: _Record, adopted: bool) -> None:
        """Launch (unless adopted) and wait for ready; record the outcome. Cancelled by close()."""
        before: int | None = None
        try:
            if not adopted:
                await self._wait_gpu_room(rec)
                generation = self._gpu_generation
                before = await self._gpu_used() if self._gpu_used else None
                began = self._clock()
                await self.runtime.start(rec.name, rec.spec)
            rec.api_key = None
            await self.probe.wait_ready(rec.name, rec.spec, self.runtime)
            instance = await self.runtime.inspect(rec.name, rec.spec)
            rec.api_key = instance.api_key if instance is not None else None
            if before is not None and self._gpu_used and generation == self._gpu_generation:
                await self._learn_footprint(rec, before)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a task boundary: every failure becomes StartFailed
            if adopted:  # leases kept from the previous manager cannot be honoured
                for lease in self.leases.of(rec.name):
                    self._drop_lease(lease)
            self._start_failed(rec, _as_start_failed(rec.name, exc))
        else:
            if not adopted:
                self.swap_times.record(rec.name, "load_s", self._clock() - began)
            rec.sleep_broken = False
            self._set_state(rec, ModelState.READY)
            rec.last_active = self._clock()
        self._pump()

    async def _wait_gpu_room(self, rec: _Record) -> None:
        """Before a start: confirm from NVML that the GPU has room. A model that runs alone
        waits (after a stop) until the GPU is all but empty; a declared one until the
        GPU's free memory covers its declaration."""
        timeout = self.config.gpu_release_timeout
        if self._gpu_released is None or timeout <= 0:
            return
        need = self.budget.cost(rec.spec)
        if need is None:
            if self._gpu_dirty:
                await self._gpu_released(timeout)
            self._gpu_dirty = False
        elif need > 0:
            await self._gpu_released(timeout, need_mib=need)

    async def _learn_footprint(self, rec: _Record, before: int) -> None:
        """Record what `rec` was seen to take (used memory after ready minus before its
        start); warn when it is over its declaration."""
        assert self._gpu_used is not None
        after = await self._gpu_used()
        if after is None:
            return
        observed = max(0, after - before)
        rec.observed_mib = observed
        declared = rec.spec.gpu_memory_mib
        estimated = rec.name in self.catalogue.estimated
        if declared is not None and observed > declared and estimated:
            log.warning(
                "model %s takes %d MiB of GPU memory, more than the %d MiB it was planned "
                "with (%s): it is planned with what was seen from now on",
                rec.name,
                observed,
                declared,
                self.catalogue.estimated[rec.name],
            )
        elif declared is not None and observed > declared:
            log.warning(
                "model %s takes %d MiB of GPU memory, more than the %d MiB models.json "
                "declares: raise gpu_memory_mib or the budget may be overrun",
                rec.name,
                observed,
                declared,
            )
        if self._footprints is not None:
            self._footprints.record(
                rec.name, observed, None if estimated else declared, self._wall()
            )
        if estimated:
            # Planned from a table (or an older reading): what was seen plans it from now on.
            seen = max(self._footprints.readings(rec.name) if self._footprints else [observed])
            if self.budget.mib is None or seen <= self.budget.mib:
                rec.spec = rec.spec.model_copy(update={"gpu_memory_mib": seen})

    def _start_failed(self, rec: _Record, failure: StartFailed) -> None:
        self._set_state(rec, ModelState.FAILED, error=_describe(failure))
        waiters, rec.waiters = list(rec.waiters), deque()
        for waiter in waiters:
            waiter.future.set_exception(
                StartFailed(
                    failure.model, failure.reason, exit_code=failure.exit_code, logs=failure.logs
                )
            )

    # ----------------------------------------------------------------- stopping

    def _begin_stop(self, rec: _Record) -> None:
        self._set_state(rec, ModelState.STOPPING)
        self._spawn(self._run_stop(rec), name=f"stop {rec.name}")

    async def _run_stop(self, rec: _Record) -> None:
        """Stop the server (retrying runtime failures); record the outcome. Cancelled by close()."""
        try:
            await self._stop_with_retry(rec.name, rec.spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a task boundary: report, keep the model resident
            error = f"stop failed: {exc}"
            rec.stop_requested = False
            self._set_state(rec, ModelState.FAILED, error=error)
            self._settle_stops(rec, error=RuntimeFailure(f"model {rec.name!r}: {error}"))
        else:
            self._set_state(rec, ModelState.STOPPED)
            rec.gpu_free = rec.host_held = False
            rec.stop_requested = False
            self._last_stopped = rec.name
            self._gpu_dirty = True
            self._gpu_generation += 1
            self._settle_stops(rec)
        self._pump()
        if self.config.standby and rec.state is ModelState.STOPPED:
            self._prepare(rec)  # a standby container for its next start

    async def _stop_with_retry(self, name: str, spec: Spec | None) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.stop_attempts),
            wait=wait_exponential(multiplier=self.config.stop_backoff, max=10),
            retry=retry_if_exception_type(RuntimeFailure),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.runtime.stop(name, spec, self.config.stop_timeout)

    def _settle_stops(self, rec: _Record, error: Exception | None = None) -> None:
        futures, rec.stop_futures = rec.stop_futures, []
        for future in futures:
            if future.done():
                continue
            if error is None:
                future.set_result(rec.state)
            else:
                future.set_exception(RuntimeFailure(str(error)))

    # ----------------------------------------------------------------- housekeeping

    async def tick(self) -> None:
        """One housekeeping pass: adopt (if not done yet), expire leases, check the ready
        model is alive, stop idle ones.

        Blocks only on the liveness probe. Never raises (probe errors are logged).
        """
        if not self.adopted:
            await self._try_adopt()
        self._expire_leases()
        await self._check_liveness()
        self._pump()

    def _expire_leases(self) -> None:
        for lease in self.leases.expired():
            log.warning("lease %s on %s expired without release", lease.lease_id, lease.model)
            self._drop_lease(lease)

    def _server_exited(self, name: str) -> None:
        """The runtime saw `name`'s server exit: check it now, not at the next housekeeping."""
        rec = self._records.get(name)
        if not self._closed and rec is not None and _has_server(rec):
            self._spawn(self._check_now(name), name=f"check {name}")

    async def _check_now(self, name: str) -> None:
        await self._check_liveness(name)
        self._pump()

    async def check(self, model: str) -> ModelStatus:
        """Check now whether `model`'s server is alive (a proxy could not reach it); a dead
        ready server goes `ready -> failed`, so no lease is granted on it. Returns the
        model's status afterwards. Raises UnknownModelError."""
        self._record(model)
        self._check_open()
        await self._check_now(model)
        return self.model_status(model)

    async def _check_liveness(self, only: str | None = None) -> None:
        names = [only] if only is not None else list(self._records)
        watched = (ModelState.READY, ModelState.SLEEPING)
        ready = [n for n in names if self._records[n].state in watched]
        if ready:
            await asyncio.gather(*(self._check_one(name) for name in ready))

    async def _check_one(self, name: str) -> None:
        rec = self._records[name]
        try:
            reason = await self.probe.check_alive(name, rec.spec, self.runtime)
        except Exception as exc:  # the probe should not raise; never let it kill housekeeping
            log.warning("liveness check of %s raised %r; ignoring this round", name, exc)
            return
        if reason and rec.state is ModelState.READY:
            self._set_state(rec, ModelState.FAILED, error=f"server died: {reason}")
        elif reason and rec.state is ModelState.SLEEPING:
            rec.host_held = False  # its process, and the weights it held, are gone
            self._set_state(rec, ModelState.FAILED, error=f"server died while asleep: {reason}")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.liveness_interval)
            try:
                await self.tick()
            except Exception:  # keep the loop alive whatever happens
                log.exception("housekeeping pass failed")

    # ----------------------------------------------------------------- life of the scheduler

    async def start(self) -> None:
        """Adopt running servers, start the pinned models, then begin periodic
        housekeeping. Call once. Never raises:
        if the runtime cannot list its servers yet (Docker Desktop still starting), adoption
        is retried on every housekeeping pass until it succeeds."""
        await self._try_adopt()
        if self._housekeeper is None:
            self._housekeeper = asyncio.get_running_loop().create_task(
                self._housekeeping(), name="scheduler housekeeping"
            )

    async def _try_adopt(self) -> None:
        """Adopt, then start the pinned models (only once adoption has run, so a pinned
        model's running server is adopted rather than started twice)."""
        try:
            await self.adopt()
        except ManagerError as exc:
            log.warning("adopting running servers failed, will retry: %s", exc)
            return
        self._start_pinned()
        if self.config.standby:
            for rec in self._records.values():
                if rec.state is ModelState.STOPPED:
                    self._prepare(rec)

    async def adopt(self) -> None:
        """Take over servers this runtime owns, found at start-up.

        `manager.adoption.plan` decides: running servers of known models with the current
        spec hash are adopted as `starting` and health-checked, in catalogue order while
        they fit the GPU budget together (without one: the first only). Every other
        owned server (stopped or exited, an unknown model, an outdated spec, one that
        does not fit) is stopped and removed; a failure to remove one is logged, not
        raised. Raises RuntimeFailure if the runtime cannot list its servers.
        """
        owned = await self.runtime.list_owned()
        self.adopted = True
        for lease in self.leases.restore(
            lambda model: rec.spec.type if (rec := self._records.get(model)) else None
        ):
            log.info("kept lease %s on %s from the previous manager", lease.lease_id, lease.model)
        candidates = {
            name: adoption.Candidate(spec_hash(rec.spec), rec.state is ModelState.STOPPED)
            for name, rec in self._records.items()
        }
        asleep = await self._asleep(owned)
        decided = adoption.plan(
            owned,
            candidates,
            fits=self._fit_together,
            residents=[n for n, r in self._records.items() if _has_server(r)],
            leased=set(self.leases.in_flight()),
            asleep=asleep,
            fits_host=self._fit_host,
        )
        for inst, why in decided.remove:
            await self._remove_owned(inst, why)
        for keep in decided.keep:
            rec = self._records[keep.model]
            if (
                keep.model in asleep
                and rec.state is ModelState.STOPPED
                and self._fit_host([*self.sleepers, keep.model])
            ):
                log.info("adopting the sleeping server of %s (kept warm)", keep.model)
                rec.api_key = keep.api_key
                rec.gpu_free = rec.host_held = True
                self._set_state(rec, ModelState.SLEEPING)
            elif (
                keep.model not in asleep
                and rec.state is ModelState.STOPPED
                and self._fit_together([*self.residents, keep.model])
            ):
                log.info("adopting running server of %s", keep.model)
                self._begin_start(rec, adopted=True)
            else:  # a request started a model while others were being removed
                await self._remove_owned(keep, "extra or outdated")
        for lease in [lease for m in self.leases.in_flight() for lease in self.leases.of(m)]:
            if not _on_gpu(self._records[lease.model]):  # its server is not running
                log.warning("dropping lease %s: %s is not running", lease.lease_id, lease.model)
                self._drop_lease(lease)

    async def _asleep(self, owned: Sequence[Instance]) -> set[str]:
        """The running owned servers of warm models that say they sleep."""
        if self._warm is None or self.host_budget_mib is None:
            return set()
        found: set[str] = set()
        for inst in owned:
            rec = self._records.get(inst.model)
            if rec is None or not inst.running or rec.spec.warm is None:
                continue
            base_url = self.runtime.base_url(rec.spec)
            if await self._warm.is_sleeping(rec.spec, base_url, inst.api_key):
                found.add(inst.model)
        return found

    def _fit_host(self, names: Sequence[str]) -> bool:
        """Whether `names` fit the host-memory budget together asleep."""
        capacity = self.host_budget_mib
        if capacity is None:
            return False
        costs = [host_mib_of(self._records[n].spec, self.swap_times, n) for n in set(names)]
        return sum(capacity if c is None else c for c in costs) <= capacity

    def _fit_together(self, names: Sequence[str]) -> bool:
        """Whether `names` fit the budget together (without one: at most one model)."""
        capacity = self.budget.mib
        if capacity is None:
            return len(set(names)) <= 1
        costs = [self.budget.cost(self._records[n].spec) for n in set(names)]
        return sum(capacity if c is None else c for c in costs) <= capacity

    def _start_pinned(self) -> None:
        """Start the pinned models that are not resident, as far as they fit."""
        for rec in self._records.values():
            if rec.spec.pinned and rec.state is ModelState.STOPPED:
                if self._fit_together([*self.residents, rec.name]):
                    log.info("starting pinned model %s", rec.name)
                    self._begin_start(rec)
                else:
                    log.warning(
                        "pinned model %s does not fit beside %s now; it starts when asked for",
                        rec.name,
                        ", ".join(self.residents),
                    )

    async def _remove_owned(self, inst: Instance, why: str) -> None:
        rec = self._records.get(inst.model)
        if rec is not None and _has_server(rec):
            return  # never remove a server this scheduler is using
        log.info("removing owned server of %s (%s)", inst.model, why)
        try:
            await self._stop_with_retry(inst.model, rec.spec if rec else None)
        except Exception as exc:  # adoption goes on; the next start replaces it
            log.error("could not remove owned server of %s: %s", inst.model, exc)

    async def close(self) -> None:
        """Stop housekeeping and background tasks; fail waiters; end event streams;
        call the probe's, runtime's and warm control's `aclose()` where they have one.

        Model servers are left as they are (the next manager adopts them).
        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks) + ([self._housekeeper] if self._housekeeper else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        closed = ShuttingDown("the manager is shutting down")
        for rec in self._records.values():
            for waiter in rec.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(ShuttingDown(str(closed)))
            rec.waiters.clear()
            self._settle_stops(rec, error=closed)
        self.events.close()
        for part in (self.probe, self.runtime, self._warm):
            aclose = getattr(part, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception as exc:  # shutting down: report, go on
                    log.warning("closing %s failed: %s", type(part).__name__, exc)

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown("the manager is shutting down")

    # ----------------------------------------------------------------- status

    def status(self) -> list[ModelStatus]:
        """A snapshot of every model, in catalogue order. Synchronous."""
        return [self._status(rec) for rec in self._records.values()]

    def model_status(self, model: str) -> ModelStatus:
        return self._status(self._record(model))

    def _status(self, rec: _Record) -> ModelStatus:
        image = rec.spec if isinstance(rec.spec, ImageModel) else None
        text = rec.spec if isinstance(rec.spec, TextModel) else None
        return ModelStatus(
            id=rec.name,
            type=rec.spec.type,
            state=rec.state.wire,
            last_error=rec.last_error,
            last_used=rec.last_used,
            since=rec.since,
            in_flight=self.leases.held(rec.name),
            waiting=len(rec.waiters),
            description=rec.spec.description,
            sizes=list(image.sizes) if image else None,
            max_n=image.max_n if image else None,
            vision=text.vision if text else None,
            tools=text.tool_calls is not None if text else None,
            gpu_memory_mib=rec.spec.gpu_memory_mib,
            observed_gpu_memory_mib=rec.observed_mib,
            priority=rec.spec.priority,
            pinned=rec.spec.pinned,
            backend=_backend(rec.spec),
            warm_level=rec.spec.warm.level if rec.spec.warm else None,
            host_memory_mib=host_mib_of(rec.spec, self.swap_times, rec.name),
            wake_seconds=self.swap_times.usual(rec.name, "wake_s"),
            load_seconds=self.swap_times.usual(rec.name, "load_s"),
        )


def _backend(spec: object) -> Backend:
    """Who serves `spec` (`wire.models.Backend`)."""
    if isinstance(spec, TextModel):
        return spec.backend
    if isinstance(spec, ImageModel):
        return "diffusers"
    if isinstance(spec, AudioModel):
        return "audio"
    return "vllm"


def _as_start_failed(model: str, exc: Exception) -> StartFailed:
    if isinstance(exc, StartFailed):
        return exc
    if isinstance(exc, GpuMemoryNotReleased):
        return StartFailed(model, f"GPU memory was not released by the previous model: {exc}")
    if isinstance(exc, ManagerError):
        return StartFailed(model, str(exc))
    log.exception("unexpected error while starting %s", model, exc_info=exc)
    return StartFailed(model, f"unexpected error: {exc!r}")


def _describe(failure: StartFailed) -> str:
    text = failure.reason
    if failure.exit_code is not None:
        text += f" (exit code {failure.exit_code})"
    return text


def _has_server(rec: _Record) -> bool:
    """Whether `rec`'s server runs (or may): any state but stopped."""
    return rec.state is not ModelState.STOPPED


def _on_gpu(rec: _Record) -> bool:
    """Whether `rec` may hold GPU memory now: its state is on the GPU, and it did not
    give its memory back by falling asleep."""
    return rec.state.on_gpu and not rec.gpu_free


def _startable(rec: _Record) -> bool:
    """Off the GPU, so a waiter makes it start (stopped) or wake (sleeping)."""
    return rec.state in (ModelState.STOPPED, ModelState.SLEEPING)
