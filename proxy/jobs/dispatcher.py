"""The job dispatcher: accepts jobs, runs them in swap-aware order, recovers lost ones.

One `Dispatcher` per proxy process (built in the lifespan). `workers` asyncio tasks
each pick a model with `order.pick_model` (resident first, grouped by model,
interactive requests first), then an owner with `order.pick_owner` (the fair share
between keys: class, then an equal share of the workers, then round robin), pop that
owner's oldest job id on that model from the store, claim it and run it through
`runner.run_job`. Every state change goes through `Job.move_to`
(refused unless `proxy.jobs.state.TASK_TRANSITIONS` has it) and is written to the store
before it is announced, so a reader on any proxy sees the same events.

Crashes: a job is claimed under `(id, attempt)` by this process's `instance` id
before it starts. `recover()` (at start-up; with Redis also every
`RECOVER_INTERVAL` seconds) requeues jobs whose claiming instance is gone (embedded
store: any other instance, since only one proxy uses the file; Redis: one whose
heartbeat is older than `DEAD_AFTER`), and jobs accepted but missing from their
queue. Completion pops the claim first (`JobStore.take_claim`), so a job is
completed by exactly one attempt even when a stalled worker comes back.

Shutdown cancels running forwards and leaves their claims: the next start requeues
them (attempt + 1). A `STARTED` event with ``attempt`` > 1 tells a stream reader that
the tokens of the earlier attempt are void.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from proxy.context import ProxyContext
from proxy.errors import ProxyError
from proxy.jobs.order import fair_position, pick_model, pick_owner
from proxy.jobs.records import (
    EndEvent,
    EventName,
    Job,
    Position,
    ProgressEvent,
    StateEvent,
    TokenEvent,
)
from proxy.jobs.runner import Outcome, job_principal, run_job
from proxy.jobs.state import TaskState
from proxy.jobs.store import AsyncJobStore
from proxy.jobs.watch import TaskWatchers
from proxy.keys import Principal, PriorityClass
from proxy.settings import ProxySettings
from proxy.speech import Segment
from wire.models import ModelStatus

log = logging.getLogger("proxy.jobs")

HEARTBEAT = 2.0
DEAD_AFTER = 10.0
RECOVER_INTERVAL = 5.0
SWEEP_INTERVAL = 60.0
IDLE_POLL = 2.0
"""An idle worker looks at the queues this often (a local submission, a finished job or a
model state change wakes it at once; this only matters for other proxies' jobs)."""
TOKEN_FLUSH = 0.1
CANCEL_POLL = 0.5
BUSY_RETRY = 2.0
AWAY = frozenset({"manager_unavailable", "manager_shutting_down"})
"""Error codes that mean the job's hosts are away: it is requeued, not failed."""


class JobNotFound(Exception):
    pass


class JobFinished(Exception):
    """The job already reached a terminal state (cannot be cancelled)."""


CHEAP_STATES = ("ready", "starting", "waking")
"""States in which a model holds or is taking the GPU: waking from host memory (the warm
tier) is as good as resident, so batches may follow it. A model still asleep is not: its
jobs would make the manager swap it in while others run."""


def residents_of(models: Mapping[str, ModelStatus]) -> set[str]:
    """The models that hold (or are taking) GPU memory: ready, starting, or waking from
    host memory (`CHEAP_STATES`)."""
    return {name for name, info in models.items() if info.state in CHEAP_STATES}


def new_id(prefix: str = "task") -> str:
    return f"{prefix}_{secrets.token_urlsafe(18)}"


class Dispatcher:
    def __init__(
        self,
        ctx: ProxyContext,
        store: AsyncJobStore,
        *,
        workers: int = ProxySettings.default("job_workers"),
        ttl: float = ProxySettings.default("job_ttl"),
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.workers = workers
        self.ttl = ttl
        self.instance = secrets.token_hex(8)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        self._running_models: dict[str, str] = {}
        """job id -> model, from dequeue until the job is finished (for `pick_model`)."""
        self._running_owners: dict[str, str] = {}
        """job id -> owner, from dequeue until the job is finished (for `pick_owner`)."""
        self._served: dict[str, int] = {}
        """owner -> the turn at which a worker last took one of its jobs (`pick_owner`)."""
        self._turn = 0
        self._cancelled: set[str] = set()
        self._last_model: str | None = None
        self._known_models: list[str] = []
        """Model names from the manager's last list: whose queues to look at."""
        self._listeners: dict[str, set[asyncio.Event]] = {}
        self.watchers = TaskWatchers(self)
        """One watcher per task with a `/stream` open here (`proxy.jobs.watch`)."""
        self._suspects: set[str] = set()
        self.on_finished: list[Callable[[Job], Awaitable[None]]] = []
        """Callbacks `await cb(job)` after a job reached a terminal state (batches)."""

    # -- life -------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.heartbeat(self.instance)
        await self.recover(startup=True)
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"job-worker-{i}"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="job-housekeeping"))
        self._tasks.append(asyncio.create_task(self._cancel_watch(), name="job-cancel-watch"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.store.forget_instance(self.instance)  # others may requeue at once

    # -- notifications (local readers of /stream) --------------------------------

    def listen(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._listeners.setdefault(job_id, set()).add(event)
        return event

    def unlisten(self, job_id: str, event: asyncio.Event) -> None:
        listeners = self._listeners.get(job_id)
        if listeners is not None:
            listeners.discard(event)
            if not listeners:
                del self._listeners[job_id]

    async def emit(self, job_id: str, event: EventName, data: Any) -> int:
        """Store one event (a `StateEvent`, `TokenEvent`, `EndEvent` or a result) and wake
        this proxy's readers of the job's stream."""
        seq = await self.store.append_event(job_id, event, data)
        for listener in self._listeners.get(job_id, ()):
            listener.set()
        return seq

    def wake(self) -> None:
        self._wake.set()

    # -- the API the routes use -------------------------------------------------

    async def submit(
        self,
        *,
        method: str,
        model: str,
        endpoint: str,
        body: dict[str, Any],
        url_base: str | None = None,
        batch_id: str | None = None,
        custom_id: str | None = None,
        job_id: str | None = None,
        owner: str,
    ) -> Job:
        """Accept a job for `owner` (a key's name): written (record, PENDING event, queue
        entry) before this returns."""
        job = Job(
            owner=owner,
            id=job_id or new_id(),
            method=method,
            model=model,
            endpoint=endpoint,
            body=body,
            url_base=url_base,
            batch_id=batch_id,
            custom_id=custom_id,
        )
        await self.store.put_job(job)
        await self.emit(job.id, "state", StateEvent(TaskState.PENDING, model=model))
        await self.store.enqueue(model, job.id, owner)
        if model not in self._known_models:
            self._known_models = sorted({*self._known_models, model})
        self.wake()
        return job

    async def get(self, job_id: str, who: Principal | None = None) -> Job:
        """The job; raises JobNotFound when there is none, or when `who` (if given) does
        not own it (`Principal.owns`): another key's job does not exist for it."""
        job = await self.store.get_job(job_id)
        if job is None or (who is not None and not who.owns(job.owner)):
            raise JobNotFound(job_id)
        return job

    async def position(self, job: Job) -> Position:
        """Where a PENDING job stands: its place in its model's line under the fair order
        (`order.fair_position`: how many jobs this proxy would start on the model before
        it, plus one, if no more came) and what must load."""
        place = await self._place(job)
        residents = await self._residents()
        return Position(place, None if job.model in residents else job.model)

    async def _place(self, job: Job) -> int | None:
        owner = job.owner or ""
        queued = await self.store.queued(job.model, owner)
        if job.id not in queued:
            return None
        sizes = await self.store.owner_sizes(job.model)
        return fair_position(
            owner,
            queued.index(job.id) + 1,
            sizes,
            classes=self._classes(sizes),
            running=self._running_counts(),
            served=self._served,
        )

    async def cancel(self, job_id: str, who: Principal | None = None) -> Job:
        """Cancel a queued or running job (one `who` owns, if given). Raises JobNotFound,
        JobFinished."""
        job = await self.get(job_id, who)
        if job.state.terminal:
            raise JobFinished(job_id)
        await self.store.claim(job_id, 0, "cancel")  # the cancel flag: claims[id:0]
        task = self._running.get(job_id)
        if task is not None:
            self._cancelled.add(job_id)
            task.cancel()
            return await self.get(job_id)
        if job.state is TaskState.PENDING:
            await self._finish(
                job, TaskState.CANCELLED, error={"message": "cancelled while queued"}
            )
        # STARTED on another proxy: its cancel watch sees the flag within CANCEL_POLL.
        return await self.get(job_id)

    # -- the workers ------------------------------------------------------------

    async def _residents(self) -> set[str]:
        try:
            return residents_of(await self.ctx.manager.models(wait=False))
        except ProxyError:
            return set()

    async def _choose(self) -> str | None:
        # The queues first (a local read): an idle proxy does not ask the manager anything.
        if self._known_models and not await self.store.queue_sizes(self._known_models):
            return None
        router = self.ctx.model_calls.router
        try:
            models = await self.ctx.manager.models(wait=False)
        except ProxyError:
            if not router.remote:
                return None
            models = {}  # the remote models' jobs run while the manager is away
        if router.remote:  # the proxy catalogue's: always "ready", they hold no GPU
            models = {**models, **router.statuses()}
        self._known_models = sorted(models)
        queued = await self.store.queue_sizes(self._known_models)
        if not queued:
            return None
        residents = residents_of(models)
        oldest: dict[str, float] = {}
        for model in queued:
            if model not in residents and model != self._last_model:
                oldest[model] = float("inf")
                for owner in await self.store.owner_sizes(model):
                    head_id = await self.store.head(model, owner)
                    head = await self.store.get_job(head_id) if head_id else None
                    if head is not None:
                        oldest[model] = min(oldest[model], head.created_at)
        running: dict[str, int] = {}
        for model in self._running_models.values():
            running[model] = running.get(model, 0) + 1
        return pick_model(
            queued,
            residents=residents,
            interactive_waiting=self.ctx.interactive_waiting,
            last=self._last_model,
            running=running,
            oldest=oldest,
        )

    def _classes(self, owners: Iterable[str]) -> dict[str, PriorityClass]:
        """Each owner's priority class, from the key ring now (a revoked key: normal)."""
        out: dict[str, PriorityClass] = {}
        for owner in owners:
            principal = job_principal(self.ctx.ring, owner or None)
            out[owner] = principal.priority if principal is not None else "normal"
        return out

    def _running_counts(self) -> dict[str, int]:
        running: dict[str, int] = {}
        for owner in self._running_owners.values():
            running[owner] = running.get(owner, 0) + 1
        return running

    async def _choose_owner(self, model: str) -> str | None:
        sizes = await self.store.owner_sizes(model)
        return pick_owner(
            sizes,
            classes=self._classes(sizes),
            running=self._running_counts(),
            served=self._served,
        )

    async def _worker(self) -> None:
        while True:
            try:
                model = await self._choose()
                owner = await self._choose_owner(model) if model else None
                job_id = (
                    await self.store.dequeue(model, owner) if model and owner is not None else None
                )
                if model is None or owner is None or job_id is None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), IDLE_POLL)
                    continue
                self._last_model = model
                self._turn += 1
                self._served[owner] = self._turn
                self._running_models[job_id] = model
                self._running_owners[job_id] = owner
                try:
                    await self._run(job_id)
                finally:
                    self._running_models.pop(job_id, None)
                    self._running_owners.pop(job_id, None)
                    self.wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job worker error; continuing")
                await asyncio.sleep(1.0)

    async def _run(self, job_id: str) -> None:
        job = await self.store.get_job(job_id)
        if job is None or job.state is not TaskState.PENDING:
            return  # cancelled while queued, expired, or a stale queue entry
        attempt = job.attempt + 1
        await self.store.claim(job_id, attempt, self.instance)
        if await self.store.claim_owner(job_id, 0) is not None:  # cancelled meanwhile
            if await self.store.take_claim(job_id, attempt) == self.instance:
                await self._finish(
                    job, TaskState.CANCELLED, error={"message": "cancelled while queued"}
                )
            return
        job.move_to(TaskState.STARTED)
        job.attempt, job.started_at, job.worker = attempt, time.time(), self.instance
        await self.store.put_job(job)
        await self.emit(job_id, "state", StateEvent(TaskState.STARTED, attempt=attempt))

        pending: list[str] = []
        progress: ProgressEvent | None = None
        """A transcription's latest segment not yet written (written after its text)."""
        flusher: asyncio.Task[None] | None = None

        async def flush() -> None:
            await asyncio.sleep(TOKEN_FLUSH)
            nonlocal flusher, progress
            flusher = None
            if pending:
                text = "".join(pending)
                pending.clear()
                await self.emit(job_id, "token", TokenEvent(text, attempt))
            if progress is not None:
                said, progress = progress, None
                await self.emit(job_id, "progress", said)

        def on_delta(text: str) -> None:
            nonlocal flusher
            pending.append(text)
            if flusher is None:
                flusher = asyncio.create_task(flush())

        def on_segment(segment: Segment, fraction: float | None) -> None:
            nonlocal flusher, progress
            progress = ProgressEvent(fraction, vars(segment), attempt)
            if flusher is None:
                flusher = asyncio.create_task(flush())

        task = asyncio.create_task(run_job(self.ctx, job, on_delta, on_segment))
        self._running[job_id] = task
        cancelled = False
        outcome: Outcome | None = None
        try:
            try:
                outcome = await task
            except asyncio.CancelledError:
                if job_id not in self._cancelled:
                    task.cancel()
                    raise  # shutdown: leave the claim, the next start requeues the job
                cancelled = True
            except Exception as exc:  # a bug in the runner must not lose the job
                log.exception("job %s failed in the proxy", job_id)
                outcome = Outcome(status=500, error={"message": f"internal error: {exc!r}"})
        finally:
            self._running.pop(job_id, None)
            self._cancelled.discard(job_id)
        if flusher is not None:
            flusher.cancel()
        if pending:
            await self.emit(job_id, "token", TokenEvent("".join(pending), attempt))
            pending.clear()
        if progress is not None:
            await self.emit(job_id, "progress", progress)
            progress = None
        if await self.store.take_claim(job_id, attempt) != self.instance:
            log.warning("job %s attempt %d was taken over; dropping its outcome", job_id, attempt)
            return
        if cancelled or outcome is None:
            await self._finish(
                job, TaskState.CANCELLED, error={"message": "cancelled while running"}
            )
        elif (
            outcome.error is not None
            and outcome.status == 429
            and outcome.error.get("source") in ("manager", None)
        ):
            await asyncio.sleep(BUSY_RETRY)  # the manager's queue is full: try again later
            await self._requeue(job, reason="manager busy")
        elif outcome.error is not None and outcome.error.get("code") in AWAY:
            # every host that serves the model is away (or asleep and not up yet): the job
            # was accepted against the last known catalogue and runs when one is back
            await asyncio.sleep(BUSY_RETRY)
            await self._requeue(job, reason="hosts away")
        elif outcome.ok:
            await self.store.put_result(job_id, outcome.result)
            await self._finish(job, TaskState.SUCCESS, status=outcome.status, result=outcome.result)
        else:
            await self.store.put_result(job_id, {"error": outcome.error})
            await self._finish(job, TaskState.FAILURE, status=outcome.status, error=outcome.error)

    async def _finish(
        self,
        job: Job,
        state: TaskState,
        *,
        status: int | None = None,
        result: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        job.move_to(state)
        job.finished_at, job.status_code, job.error = time.time(), status, error
        await self.store.put_job(job)
        if state is TaskState.SUCCESS:
            await self.emit(job.id, "result", result)
        await self.emit(job.id, "state", StateEvent(state, error=error))
        await self.emit(job.id, "end", EndEvent(state))
        for callback in self.on_finished:
            try:
                await callback(job)
            except Exception:
                log.exception("job-finished callback failed for %s", job.id)

    async def _requeue(self, job: Job, *, reason: str) -> None:
        job.move_to(TaskState.PENDING)
        job.worker, job.started_at = None, None
        await self.store.put_job(job)
        await self.emit(
            job.id, "state", StateEvent(TaskState.PENDING, model=job.model, requeued=reason)
        )
        await self.store.enqueue(job.model, job.id, job.owner or "")
        self.wake()

    # -- recovery, cancel watch, housekeeping ----------------------------------

    async def recover(self, *, startup: bool = False) -> int:
        """Requeue jobs lost by dead instances (and accepted jobs missing from their queue).
        Returns how many were requeued."""
        now = time.time()
        alive = await self.store.instances()
        shared = self.store.shared

        def dead(instance: str | None) -> bool:
            if instance == self.instance:
                return False
            if not shared:
                return True  # the embedded store has one proxy: any other one is gone
            return instance is None or alive.get(instance, 0.0) < now - DEAD_AFTER

        jobs = await self.store.jobs_where(
            lambda j: j.state in (TaskState.STARTED, TaskState.PENDING)
        )
        queued: dict[tuple[str, str], set[str]] = {}
        requeued = 0
        suspects: set[str] = set()
        for job in jobs:
            if job.state is TaskState.STARTED and dead(job.worker):
                owner = await self.store.take_claim(job.id, job.attempt)
                if owner is not None and owner != job.worker and not dead(owner):
                    await self.store.claim(job.id, job.attempt, owner)  # not ours to take
                    continue
                await self._requeue(job, reason="its proxy stopped")
                requeued += 1
            elif job.state is TaskState.PENDING:
                model, owner = job.model, job.owner or ""
                if (model, owner) not in queued:
                    queued[model, owner] = set(await self.store.queued(model, owner))
                if job.id in queued[model, owner]:
                    continue
                # Missing from its queue: a worker may be between dequeue and claim
                # (Redis: another proxy), so only act when seen twice in a row.
                if startup and not shared or job.id in self._suspects:
                    fresh = await self.store.get_job(job.id)
                    if fresh and fresh.state is TaskState.PENDING:
                        await self.store.enqueue(model, job.id, owner)
                        requeued += 1
                else:
                    suspects.add(job.id)
        self._suspects = suspects
        if requeued:
            log.warning("requeued %d job(s) left by a stopped proxy", requeued)
            self.wake()
        return requeued

    async def _cancel_watch(self) -> None:
        """Cancel local running jobs whose cancel flag another proxy set."""
        while True:
            await asyncio.sleep(CANCEL_POLL)
            for job_id, task in list(self._running.items()):
                try:
                    flagged = await self.store.claim_owner(job_id, 0)
                except Exception:
                    log.exception("cancel watch failed")
                    break
                if flagged is not None and not task.done():
                    self._cancelled.add(job_id)
                    task.cancel()

    async def _housekeeping(self) -> None:
        last_recover = last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self.store.heartbeat(self.instance)
                now = time.monotonic()
                if self.store.shared and now - last_recover >= RECOVER_INTERVAL:
                    last_recover = now
                    await self.recover()
                if now - last_sweep >= self.sweep_interval():
                    last_sweep = now
                    await self.sweep()
                    with contextlib.suppress(ProxyError):  # models added to models.json
                        self._known_models = sorted(await self.ctx.manager.models(wait=False))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job housekeeping failed; retrying")

    def sweep_interval(self) -> float:
        """Seconds between sweeps: SWEEP_INTERVAL, or half the shorter of the job and
        file TTLs when that is less (so nothing outlives its TTL by more than half)."""
        file_ttl = self.ctx.settings.file_ttl
        return max(HEARTBEAT, min(SWEEP_INTERVAL, self.ttl / 2, file_ttl / 2))

    async def sweep(self) -> int:
        """Forget finished jobs older than the TTL, and delete expired files
        (``HOMELAB_FILE_TTL``). Returns how many jobs and files."""
        cutoff = time.time() - self.ttl
        gone = await self.store.sweep_files(time.time())
        old = await self.store.jobs_where(
            lambda j: j.state.terminal and (j.finished_at or 0) < cutoff
        )
        for job in old:
            await self.store.delete_job(job.id)
            gone += 1
        return gone
