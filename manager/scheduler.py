"""The scheduler: the single owner of every model's lifecycle, queues and leases.

Everything runs on one asyncio event loop. State is only read and changed
between awaits, so no lock is needed: each event (a request arrives, is
withdrawn, a lease is released or expires, a start or stop finishes, a
housekeeping tick) updates the records and calls `_pump()`, which asks the pure
`policy.decide()` what to do and applies the answer (grant leases, begin a
stop, begin a start) until the answer is "wait". Starts and stops run as
background tasks that report back through `_pump()`.

The scheduler touches model servers only through the `ContainerRuntime` and
`ReadinessProbe` protocols: no Docker, no HTTP here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from manager import adoption, policy
from manager.errors import (
    BusyError,
    GpuMemoryNotReleased,
    ManagerError,
    RuntimeFailure,
    ShuttingDown,
    StartFailed,
    UnknownModelError,
)
from manager.events import EventBus
from manager.lease_store import LeaseStore
from manager.leases import Lease, LeaseTable
from manager.probe import GpuReleaseCheck, ReadinessProbe
from manager.runtime import ContainerRuntime, Instance, Spec, spec_hash
from manager.settings import ManagerSettings
from manager.spec import Catalogue, ImageModel
from manager.state import ModelState, transition
from wire.events import ContentionEvent, StateEvent, SwapEvent
from wire.models import ModelStatus

log = logging.getLogger(__name__)

RETRY_AFTER_BUSY = 5.0
"""Retry-After (seconds) when the wanted model is ready but the queue is full."""
RETRY_AFTER_SWAP = 30.0
"""Retry-After (seconds) when the wanted model still has to be started."""


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's knobs; `from_settings` maps the HOMELAB_* settings onto them."""

    queue_limit: int = 64
    queue_timeout: float = 900.0
    batch_bound: int = 8
    lease_ttl: float = 300.0
    stop_timeout: float = 30.0
    gpu_release_timeout: float = 60.0
    liveness_interval: float = 10.0
    advertise_host: str | None = None
    stop_attempts: int = 3
    stop_backoff: float = 0.5

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
            advertise_host=settings.advertised_host(),
        )


@dataclass(eq=False)
class _Waiter:
    model: str
    ticket: int
    """Arrival order across all models (strictly increasing): the FIFO key."""
    future: asyncio.Future[Lease]


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
        events: EventBus | None = None,
        gpu_released: GpuReleaseCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        lease_store: LeaseStore | None = None,
    ) -> None:
        """`lease_store`: where the lease table is kept across restarts
        (`manager.lease_store`); None keeps leases in memory only."""
        self.catalogue = catalogue
        self.runtime = runtime
        self.probe = probe
        self.config = config or SchedulerConfig()
        self.events = events or EventBus()
        self._gpu_released = gpu_released
        self._clock = clock
        self._wall = wall_clock
        now, wall = clock(), wall_clock()
        self._records = {
            name: _Record(name, spec, since=wall, last_active=now)
            for name, spec in catalogue.models.items()
        }
        self.leases = LeaseTable(
            self.config.lease_ttl, clock, store=lease_store, wall_clock=wall_clock
        )
        """Every live lease (`manager.leases`)."""
        self._resident: str | None = None
        self._last_resident: str | None = None
        self._grants_since_contention = 0
        self._contended = False
        """Whether other models than the resident had waiters at the last pump."""
        self._gpu_dirty = False
        self._tickets = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        self._closed = False
        self.adopted = False
        """Whether adoption has run (it is retried by `tick()` until it has)."""
        self.swaps = 0
        """How many starts the scheduler has begun (adoption excluded)."""
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
    def resident(self) -> str | None:
        """The model that may hold the GPU now (starting, ready, stopping or failed), or None."""
        return self._resident

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

    async def acquire(self, model: str, timeout: float | None = None) -> Lease:  # noqa: ASYNC109
        """Wait until `model` is ready and return a lease on it.

        Blocks (queued behind other models as the policy says) for at most
        `timeout` seconds (default: `queue_timeout`). Raises UnknownModelError,
        BusyError (queue full, or the wait timed out; `retry_after` set),
        StartFailed (the start this request waited for failed), RuntimeFailure
        (the scheduler is closed). Cancellable: a cancelled wait leaves the
        queue, and a lease granted at that instant is released.
        """
        rec = self._record(model)
        self._check_open()
        waiter = _Waiter(model, next(self._tickets), asyncio.get_running_loop().create_future())
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
        if self._resident != model:
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

    def waiting_count(self) -> int:
        return sum(len(rec.waiters) for rec in self._records.values())

    def _new_lease(self, rec: _Record, max_uses: int = 1, max_concurrent: int = 1) -> Lease:
        lease = self.leases.grant(
            rec.name,
            rec.spec.type,
            self.base_url(rec.name),
            max_uses,
            max_concurrent=max_concurrent,
            api_key=rec.api_key,
        )
        self._touch(rec)
        return lease

    def _drop_lease(self, lease: Lease) -> None:
        self.leases.drop(lease)
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
        ready = rec.state is ModelState.READY and self._resident == rec.name
        wait = RETRY_AFTER_BUSY if ready else RETRY_AFTER_SWAP
        return float(max(1, math.ceil(min(wait, self.config.queue_timeout))))

    # ----------------------------------------------------------------- the pump

    def _view(self) -> policy.View:
        now = self._clock()
        resident = self._records[self._resident] if self._resident else None
        stop_requested = bool(resident and (resident.stop_requested or self._idle(resident, now)))
        return policy.View(
            resident=self._resident,
            resident_state=resident.state if resident else None,
            in_flight=self.leases.in_flight(),
            waiters={
                name: [w.ticket for w in rec.waiters]
                for name, rec in self._records.items()
                if rec.waiters
            },
            grants_since_contention=self._grants_since_contention,
            batch_bound=self.config.batch_bound,
            stop_requested=stop_requested,
            room=self._room(resident) if resident else None,
        )

    def _room(self, rec: _Record) -> int:
        """How many more requests `rec`'s server may be given: its `max_in_flight` minus
        the uses its leases in flight may admit."""
        return max(0, rec.spec.max_in_flight - self.leases.uses(rec.name))

    def _idle(self, rec: _Record, now: float) -> bool:
        ttl = rec.spec.idle_ttl
        return (
            ttl is not None
            and rec.state is ModelState.READY
            and not self.leases.held(rec.name)
            and not rec.waiters
            and now - rec.last_active >= ttl
        )

    def _pump(self) -> None:
        """Apply policy decisions until the policy says wait. Synchronous; never raises."""
        if self._closed:
            return
        for _ in range(10_000):
            if not self._others_waiting():
                self._grants_since_contention = 0
                self._contended = False
            elif not self._contended:
                # Contention begins: requests that may still join the resident's shared
                # leases (granted before anyone else waited) count against the bound.
                self._contended = True
                self._grants_since_contention = self._shareable_uses()
                if self._resident is not None and self.leases.held(self._resident):
                    # Proxies stop sharing its leases (and release idle ones at once).
                    self.events.publish(ContentionEvent(models=[self._resident], at=self._wall()))
            decision = policy.decide(self._view())
            if decision.is_wait:
                return
            if decision.grant:
                assert self._resident is not None  # the policy grants to the resident only
                self._grant(self._records[self._resident], decision.grant)
                self._grants_since_contention += decision.counted
            elif decision.stop:
                self._begin_stop(self._records[decision.stop])
            elif decision.start:
                self._begin_start(self._records[decision.start])
        log.error("scheduler pump did not settle; state: %s", self._view())

    def _others_waiting(self) -> bool:
        return any(rec.waiters for name, rec in self._records.items() if name != self._resident)

    def contended(self, model: str) -> bool:
        """Whether `model` is resident and other models have waiters (a renewal's
        ``contended``: the proxy stops sharing the lease)."""
        return self._resident == model and self._others_waiting()

    def _shareable_uses(self) -> int:
        """Uses the resident's leases in flight may still admit (at most `batch_bound`):
        an upper bound, since the manager does not see the proxy's joins."""
        if self._resident is None:
            return 0
        return min(self.config.batch_bound, self.leases.spare_uses(self._resident))

    def _grant(self, rec: _Record, count: int) -> None:
        """Grant `count` (<= room) waiters; each lease may hold at most the room left after
        the rest of this batch got one use each at once. No other model waiting: unbounded
        (`max_uses` 0) until contention; else 1 use."""
        unbounded = not self._others_waiting()
        share = self.config.batch_bound if unbounded else 1
        for i in range(count):
            room_left = self._room(rec) - (count - 1 - i)
            width = max(1, min(share, room_left))
            waiter = rec.waiters.popleft()
            waiter.future.set_result(self._new_lease(rec, 0 if unbounded else width, width))

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
        self._resident = rec.name
        rec.stop_requested = False
        self._grants_since_contention = 0
        if not adopted:
            self.swaps += 1
            self.events.publish(
                SwapEvent(from_model=self._last_resident, to=rec.name, at=self._wall())
            )
        self._spawn(self._run_start(rec, adopted), name=f"start {rec.name}")

    async def _run_start(self, rec: _Record, adopted: bool) -> None:
        """Launch (unless adopted) and wait for ready; record the outcome. Cancelled by close()."""
        try:
            if not adopted:
                await self._wait_gpu_released()
                await self.runtime.start(rec.name, rec.spec)
            rec.api_key = None
            await self.probe.wait_ready(rec.name, rec.spec, self.runtime)
            instance = await self.runtime.inspect(rec.name, rec.spec)
            rec.api_key = instance.api_key if instance is not None else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a task boundary: every failure becomes StartFailed
            if adopted:  # leases kept from the previous manager cannot be honoured
                for lease in self.leases.of(rec.name):
                    self._drop_lease(lease)
            self._start_failed(rec, _as_start_failed(rec.name, exc))
        else:
            self._set_state(rec, ModelState.READY)
            rec.last_active = self._clock()
        self._pump()

    async def _wait_gpu_released(self) -> None:
        if self._gpu_dirty and self._gpu_released and self.config.gpu_release_timeout > 0:
            await self._gpu_released(self.config.gpu_release_timeout)
        self._gpu_dirty = False

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
            rec.stop_requested = False
            self._resident = None
            self._last_resident = rec.name
            self._gpu_dirty = True
            self._settle_stops(rec)
        self._pump()

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
        if not self._closed and self._resident == name:
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
        name = self._resident
        if only is not None and name != only:
            return
        if name is None or self._records[name].state is not ModelState.READY:
            return
        rec = self._records[name]
        try:
            reason = await self.probe.check_alive(name, rec.spec, self.runtime)
        except Exception as exc:  # the probe should not raise; never let it kill housekeeping
            log.warning("liveness check of %s raised %r; ignoring this round", name, exc)
            return
        if reason and self._resident == name and rec.state is ModelState.READY:
            self._set_state(rec, ModelState.FAILED, error=f"server died: {reason}")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.liveness_interval)
            try:
                await self.tick()
            except Exception:  # keep the loop alive whatever happens
                log.exception("housekeeping pass failed")

    # ----------------------------------------------------------------- life of the scheduler

    async def start(self) -> None:
        """Adopt running servers, then begin periodic housekeeping. Call once. Never raises:
        if the runtime cannot list its servers yet (Docker Desktop still starting), adoption
        is retried on every housekeeping pass until it succeeds."""
        await self._try_adopt()
        if self._housekeeper is None:
            self._housekeeper = asyncio.get_running_loop().create_task(
                self._housekeeping(), name="scheduler housekeeping"
            )

    async def _try_adopt(self) -> None:
        try:
            await self.adopt()
        except ManagerError as exc:
            log.warning("adopting running servers failed, will retry: %s", exc)

    async def adopt(self) -> None:
        """Take over servers this runtime owns, found at start-up.

        `manager.adoption.plan` decides: a running server of a known model with the
        current spec hash is adopted as `starting` and health-checked (the first such,
        in catalogue order; at most one stays resident). Every other owned server
        (stopped or exited, an unknown model, an outdated spec, or an extra one) is
        stopped and removed; a failure to remove one is logged, not raised. Raises
        RuntimeFailure if the runtime cannot list its servers.
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
        decided = adoption.plan(
            owned, candidates, resident=self._resident, leased=set(self.leases.in_flight())
        )
        for inst, why in decided.remove:
            await self._remove_owned(inst, why)
        keep = decided.keep
        if keep is not None:
            rec = self._records[keep.model]
            if self._resident is None and rec.state is ModelState.STOPPED:
                log.info("adopting running server of %s", keep.model)
                self._begin_start(rec, adopted=True)
            else:  # a request started a model while others were being removed
                await self._remove_owned(keep, "extra or outdated")
        for lease in [lease for m in self.leases.in_flight() for lease in self.leases.of(m)]:
            if lease.model != self._resident:  # a kept lease whose server is not running
                log.warning("dropping lease %s: %s is not running", lease.lease_id, lease.model)
                self._drop_lease(lease)

    async def _remove_owned(self, inst: Instance, why: str) -> None:
        rec = self._records.get(inst.model)
        if rec is not None and self._resident == inst.model:
            return  # never remove the server this scheduler is using
        log.info("removing owned server of %s (%s)", inst.model, why)
        try:
            await self._stop_with_retry(inst.model, rec.spec if rec else None)
        except Exception as exc:  # adoption goes on; the next start replaces it
            log.error("could not remove owned server of %s: %s", inst.model, exc)

    async def close(self) -> None:
        """Stop housekeeping and background tasks; fail waiters; end event streams;
        call the probe's and runtime's `aclose()` where they have one.

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
        for part in (self.probe, self.runtime):
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
            vision=None if isinstance(rec.spec, ImageModel) else rec.spec.vision,
        )


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
