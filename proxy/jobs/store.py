"""The durable job store, on huey's storage layer: one SQLite file, or a Redis server.

Everything a job is lives here, so a proxy restart (or another proxy on the same
Redis) picks it up: the job record, its numbered event log (what `/stream` replays),
its result, and one FIFO queue of job ids per model and owner (the key's name; the
dispatcher chooses between owners, docs/jobs.md "Fair share between keys"). huey's storages give the same
operations on both engines, each atomic on its own: `enqueue` / `dequeue` (pop one
id), `put_data` / `peek_data` / `pop_data` (a key-value hash), `put_if_empty` and
`incr`. Namespaces are separate huey storages (``jobs``, ``events``, ``results``,
``claims``, ``files``, ``alive``, ``queue_owners`` (which (model, owner) queues
exist) and one queue per model and owner). With SQLite (WAL), every
commit survives a crash of the proxy; job records and queues are also fsynced on each
commit (they survive a power loss), the rest (events, results, claims) are not, which
keeps a job's dozen small writes cheap.

Claims make "run at most once to completion" hold across crashes: a worker that
dequeues a job writes ``claims[id:attempt] = instance``; completing the job means
popping that key (`win`). A recovery pass that finds the claim's instance dead pops
it first and requeues the job with the next attempt, so exactly one of the two
proceeds.

All methods block (SQLite, a Redis round trip): call them through `asyncio.to_thread`
(the `AsyncJobStore` wrapper does).
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from huey.constants import EmptyData  # type: ignore[import-untyped]
from huey.storage import (  # type: ignore[import-untyped]
    BaseStorage,
    RedisStorage,
    SqliteStorage,
)

from proxy.jobs.records import BatchRecord, Event, EventName, FileRecord, Job, decode, encode
from wire.private import private_dir, private_file

P = ParamSpec("P")
T = TypeVar("T")


class StoreInUse(RuntimeError):
    """The embedded store's file is locked by another running proxy."""


def _queue_name(model: str, owner: str) -> str:
    # Redis storage names drop everything but [A-Za-z0-9_]; hex keeps names distinct.
    # (Stores written before owners had one queue per model, "homelab_q_<model hex>":
    # recovery puts their pending jobs into these queues.)
    return f"homelab_q_{model.encode().hex()}_{owner.encode().hex()}"


def _owner_key(model: str, owner: str) -> str:
    return f"{model.encode().hex()}.{owner.encode().hex()}"


class JobStore:
    """Jobs, events, results, claims, files and per-(model, owner) queues on one engine.

    `url`: ``redis://host:port/db`` (or ``rediss://``) for a Redis server, otherwise
    a file path (optionally ``sqlite:`` in front) for the embedded SQLite store.
    """

    def __init__(self, url: str, *, tighten_folder: bool = True) -> None:
        self.url = url
        self.shared = url.startswith(("redis://", "rediss://", "unix://"))
        """Whether several proxies may use this store (Redis) or only this one (SQLite)."""
        self._lock_fd: int | None = None
        if self.shared:
            first = RedisStorage(name="homelab_jobs", url=url, blocking=False)
            pool = first.pool

            def make(name: str) -> BaseStorage:
                return RedisStorage(name=name, connection_pool=pool, blocking=False)

            self._make: Callable[[str], BaseStorage] = make
            self._make_queue = make
            self.jobs: BaseStorage = first
        else:
            path = Path(url.removeprefix("sqlite:"))
            # Prompts, answers and batch files: 0600 in a 0700 folder (`wire.private`).
            # SQLite gives its -wal and -shm files the database file's mode; files an
            # earlier proxy made 0644 are made 0600 here.
            private_dir(path.parent, tighten=tighten_folder)
            for extra in ("", "-wal", "-shm"):
                if extra == "" or Path(f"{path}{extra}").exists():
                    private_file(f"{path}{extra}")
            self.path = path
            lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            os.fchmod(lock_fd, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(lock_fd)
                raise StoreInUse(
                    f"another proxy uses the job store {path}: give each proxy its own "
                    "HOMELAB_JOBS_URL, or share a Redis server (redis://...)"
                ) from exc
            self._lock_fd = lock_fd

            def make_sqlite(name: str, *, sync: bool = False) -> BaseStorage:
                # WAL: a commit survives a crash of the proxy either way; `sync` also
                # fsyncs each commit, so it survives a power loss.
                return SqliteStorage(name=name, filename=str(path), fsync=sync)

            self._make = make_sqlite
            self._make_queue = functools.partial(make_sqlite, sync=True)
            self.jobs = make_sqlite("homelab_jobs", sync=True)
        self.events = self._make("homelab_events")
        self.results = self._make("homelab_results")
        self.claims = self._make("homelab_claims")
        self.files = self._make("homelab_files")
        self.alive = self._make("homelab_alive")
        self.queue_owners = self._make("homelab_queue_owners")
        """``<model hex>.<owner hex>`` for every (model, owner) queue ever used."""
        self._queues: dict[tuple[str, str], BaseStorage] = {}
        self._registered: set[tuple[str, str]] = set()

    def close(self) -> None:
        for storage in (
            self.jobs,
            self.events,
            self.results,
            self.claims,
            self.files,
            self.alive,
            self.queue_owners,
            *self._queues.values(),
        ):
            storage.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _queue(self, model: str, owner: str) -> BaseStorage:
        queue = self._queues.get((model, owner))
        if queue is None:
            queue = self._queues[model, owner] = self._make_queue(_queue_name(model, owner))
        return queue

    # -- jobs -------------------------------------------------------------------

    def put_job(self, job: Job) -> None:
        self.jobs.put_data(job.id, encode(job))

    def get_job(self, job_id: str) -> Job | None:
        raw = self.jobs.peek_data(job_id)
        return None if raw is EmptyData else decode(raw, Job)

    def get_jobs(self, ids: list[str]) -> dict[str, Job]:
        out: dict[str, Job] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for key, raw in self.jobs.peek_many(chunk).items():
                name = key.decode() if isinstance(key, bytes) else key
                out[name] = decode(raw, Job)
        return out

    def all_jobs(self) -> list[Job]:
        return [decode(raw, Job) for raw in self.jobs.result_items().values()]

    def delete_job(self, job_id: str) -> None:
        """Forget a job, its result, its claims' leftovers and its events."""
        last = self.last_event(job_id)
        for seq in range(1, last + 1):
            self.events.delete_data(f"{job_id}:{seq}")
        self.events.delete_counter(job_id)
        self.results.delete_data(job_id)
        self.jobs.delete_data(job_id)

    # -- queues -----------------------------------------------------------------

    def enqueue(self, model: str, job_id: str, owner: str = "") -> None:
        """Append `job_id` to the queue of (`model`, `owner`)."""
        queue = self._queue(model, owner)
        if (model, owner) not in self._registered:  # written once per process
            self.queue_owners.put_data(_owner_key(model, owner), b"1")
            self._registered.add((model, owner))
        queue.enqueue(job_id.encode())

    def dequeue(self, model: str, owner: str = "") -> str | None:
        raw = self._queue(model, owner).dequeue()
        return None if raw is None else bytes(raw).decode()

    def queued(self, model: str, owner: str = "") -> list[str]:
        return [bytes(raw).decode() for raw in self._queue(model, owner).enqueued_items()]

    def head(self, model: str, owner: str = "") -> str | None:
        """The id the next `dequeue(model, owner)` would return, or None."""
        items = self._queue(model, owner).enqueued_items(limit=1)
        return bytes(items[0]).decode() if items else None

    def owners(self) -> dict[str, set[str]]:
        """Per model, the owners that have (or had) a queue for it."""
        out: dict[str, set[str]] = {}
        for key in self.queue_owners.result_items():
            model, _, owner = (key.decode() if isinstance(key, bytes) else key).partition(".")
            out.setdefault(bytes.fromhex(model).decode(), set()).add(bytes.fromhex(owner).decode())
        return out

    def owner_sizes(self, model: str) -> dict[str, int]:
        """Queued jobs per owner for `model` (owners with none left out)."""
        owners = self.owners().get(model, set())
        return {o: n for o in sorted(owners) if (n := self._queue(model, o).queue_size())}

    def queue_sizes(self, models: Iterable[str]) -> dict[str, int]:
        """Queued jobs per model, all owners together (models with none left out)."""
        owners = self.owners()
        out: dict[str, int] = {}
        for m in models:
            n = sum(self._queue(m, o).queue_size() for o in owners.get(m, ()))
            if n:
                out[m] = n
        return out

    # -- events -----------------------------------------------------------------

    def append_event(self, job_id: str, event: EventName, data: Any) -> int:
        """Append one event; returns its id (1, 2, ...; unique per job). `data` is a
        record (`StateEvent`, ...) or any JSON value (a `result`)."""
        seq = int(self.events.incr(job_id))
        self.events.put_data(f"{job_id}:{seq}", encode(Event(event, data, time.time())))
        return seq

    def last_event(self, job_id: str) -> int:
        """The highest event id handed out for the job (0: none)."""
        return int(self.events.incr(job_id, 0))

    def events_after(self, job_id: str, after: int, limit: int = 500) -> list[tuple[int, Event]]:
        """Events with ids after `after`, in order, stopping at the first not yet written."""
        keys = [f"{job_id}:{seq}" for seq in range(after + 1, after + 1 + limit)]
        found = self.events.peek_many(keys)
        found = {(k.decode() if isinstance(k, bytes) else k): v for k, v in found.items()}
        out = []
        for seq, key in enumerate(keys, start=after + 1):
            raw = found.get(key)
            if raw is None:
                break
            out.append((seq, decode(raw, Event)))
        return out

    # -- results ----------------------------------------------------------------

    def put_result(self, job_id: str, result: Any) -> None:
        """`result`: a JSON value (the model's answer, or ``{"error": ...}``)."""
        self.results.put_data(job_id, orjson.dumps(result))

    def get_result(self, job_id: str) -> Any:
        raw = self.results.peek_data(job_id)
        return None if raw is EmptyData else orjson.loads(bytes(raw))

    # -- claims and liveness ----------------------------------------------------

    def claim(self, job_id: str, attempt: int, instance: str) -> None:
        self.claims.put_data(f"{job_id}:{attempt}", instance.encode())

    def claim_owner(self, job_id: str, attempt: int) -> str | None:
        raw = self.claims.peek_data(f"{job_id}:{attempt}")
        return None if raw is EmptyData else bytes(raw).decode()

    def take_claim(self, job_id: str, attempt: int) -> str | None:
        """Pop the claim (atomic): the one caller that gets it back owns the outcome."""
        raw = self.claims.pop_data(f"{job_id}:{attempt}")
        return None if raw is EmptyData else bytes(raw).decode()

    def heartbeat(self, instance: str) -> None:
        self.alive.put_data(instance, orjson.dumps(time.time()))

    def forget_instance(self, instance: str) -> None:
        self.alive.delete_data(instance)

    def instances(self) -> dict[str, float]:
        return {
            (k.decode() if isinstance(k, bytes) else k): float(orjson.loads(bytes(v)))
            for k, v in self.alive.result_items().items()
        }

    # -- files (batch input and output) ----------------------------------------

    def put_file(self, meta: FileRecord, content: bytes) -> None:
        self.files.put_data("data:" + meta.id, content)
        self.files.put_data("meta:" + meta.id, encode(meta))

    def get_file(self, file_id: str) -> FileRecord | None:
        raw = self.files.peek_data("meta:" + file_id)
        return None if raw is EmptyData else decode(raw, FileRecord)

    def file_content(self, file_id: str) -> bytes | None:
        raw = self.files.peek_data("data:" + file_id)
        return None if raw is EmptyData else bytes(raw)

    def all_files(self) -> list[FileRecord]:
        return [
            decode(v, FileRecord)
            for k, v in self.files.result_items().items()
            if (k.decode() if isinstance(k, bytes) else k).startswith("meta:")
        ]

    def delete_file(self, file_id: str) -> bool:
        self.files.delete_data("data:" + file_id)
        return bool(self.files.delete_data("meta:" + file_id))

    # -- batches (records in the files namespace) -------------------------------

    def put_batch(self, batch: BatchRecord) -> None:
        self.files.put_data("batch:" + batch.id, encode(batch))

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        raw = self.files.peek_data("batch:" + batch_id)
        return None if raw is EmptyData else decode(raw, BatchRecord)

    def all_batches(self) -> list[BatchRecord]:
        return [
            decode(v, BatchRecord)
            for k, v in self.files.result_items().items()
            if (k.decode() if isinstance(k, bytes) else k).startswith("batch:")
        ]

    def count(self, key: str, amount: int = 1) -> int:
        """Add `amount` to the counter `key` (atomic) and return its new value."""
        return int(self.files.incr(key, amount))

    def lock_once(self, key: str) -> bool:
        """True for the first caller ever to ask for `key` (put_if_empty)."""
        return bool(self.files.put_if_empty("lock:" + key, b"1"))


def _threaded(method: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """`method` run in a worker thread (`asyncio.to_thread`), typed as it is."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(method, *args, **kwargs)

    return call


class AsyncJobStore:
    """`JobStore` with every method run in a worker thread (never blocks the loop),
    each typed as the `JobStore` method it wraps."""

    def __init__(self, store: JobStore) -> None:
        self.sync = store
        self.shared = store.shared
        self.put_job = _threaded(store.put_job)
        self.get_job = _threaded(store.get_job)
        self.get_jobs = _threaded(store.get_jobs)
        self.all_jobs = _threaded(store.all_jobs)
        self.delete_job = _threaded(store.delete_job)
        self.enqueue = _threaded(store.enqueue)
        self.dequeue = _threaded(store.dequeue)
        self.queued = _threaded(store.queued)
        self.head = _threaded(store.head)
        self.owners = _threaded(store.owners)
        self.owner_sizes = _threaded(store.owner_sizes)
        self.queue_sizes = _threaded(store.queue_sizes)
        self.append_event = _threaded(store.append_event)
        self.last_event = _threaded(store.last_event)
        self.events_after = _threaded(store.events_after)
        self.put_result = _threaded(store.put_result)
        self.get_result = _threaded(store.get_result)
        self.claim = _threaded(store.claim)
        self.claim_owner = _threaded(store.claim_owner)
        self.take_claim = _threaded(store.take_claim)
        self.heartbeat = _threaded(store.heartbeat)
        self.forget_instance = _threaded(store.forget_instance)
        self.instances = _threaded(store.instances)
        self.put_file = _threaded(store.put_file)
        self.get_file = _threaded(store.get_file)
        self.file_content = _threaded(store.file_content)
        self.all_files = _threaded(store.all_files)
        self.delete_file = _threaded(store.delete_file)
        self.put_batch = _threaded(store.put_batch)
        self.get_batch = _threaded(store.get_batch)
        self.all_batches = _threaded(store.all_batches)
        self.count = _threaded(store.count)
        self.lock_once = _threaded(store.lock_once)
