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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from huey.constants import EmptyData  # type: ignore[import-untyped]
from huey.storage import (  # type: ignore[import-untyped]
    BaseStorage,
    RedisStorage,
    SqliteStorage,
)

from proxy.jobs.records import (
    BatchListed,
    BatchRecord,
    Event,
    EventName,
    FileRecord,
    Job,
    JobSummary,
    R,
    decode,
    encode,
)
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


class QuotaExceeded(Exception):
    """Storing a file would pass a quota: `which` is ``key`` or ``total``."""

    def __init__(self, which: str, limit: int, used: int) -> None:
        super().__init__(f"{which} file quota {limit} bytes; {used} in use")
        self.which, self.limit, self.used = which, limit, used


def _usage_key(owner: str | None) -> str:
    return "usage:" + ("\x00none" if owner is None else owner)


TOTAL_USAGE = "usage-total"
FILE_CHUNK = 1024 * 1024
"""A stored file's content is kept in pieces of this many bytes (``data:<id>:<n>``), so
a download reads one piece at a time; files stored before were one ``data:<id>``."""


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
        self.summaries = self._make("homelab_summaries")
        """Each job's `JobSummary` (no request body), rewritten with its record."""
        self.index = self._make("homelab_index")
        """The listing index: per list, one ordered key per record (`ListIndex`)."""
        self._backfill_index()

    def close(self) -> None:
        for storage in (
            self.jobs,
            self.events,
            self.results,
            self.claims,
            self.files,
            self.alive,
            self.queue_owners,
            self.summaries,
            self.index,
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
        self._index("tasks", job.owner, job.created_at, job.id)  # first: never unlisted
        self.jobs.put_data(job.id, encode(job))
        self.summaries.put_data(job.id, encode(JobSummary.of(job)))

    def get_job(self, job_id: str) -> Job | None:
        raw = self.jobs.peek_data(job_id)
        return None if raw is EmptyData else decode(raw, Job)

    def _read(self, storage: BaseStorage, ids: list[str], kind: type[R]) -> dict[str, R]:
        """Those of `ids` that `storage` holds, decoded as `kind`, 500 at a time."""
        out: dict[str, R] = {}
        for start in range(0, len(ids), 500):
            for key, raw in storage.peek_many(ids[start : start + 500]).items():
                out[key.decode() if isinstance(key, bytes) else key] = decode(raw, kind)
        return out

    def get_jobs(self, ids: list[str]) -> dict[str, Job]:
        return self._read(self.jobs, ids, Job)

    def get_summaries(self, ids: list[str]) -> dict[str, JobSummary]:
        """The summaries of those of `ids` that exist: never a request body (a job
        written before summaries existed is read whole and summed up)."""
        out = self._read(self.summaries, ids, JobSummary)
        missing = [i for i in ids if i not in out]
        if missing:
            out |= {i: JobSummary.of(job) for i, job in self.get_jobs(missing).items()}
        return out

    def jobs_where(self, keep: Callable[[Job], bool]) -> list[Job]:
        """The jobs `keep` passes, read a few hundred at a time (never every job in
        memory at once: the recovery and expiry passes want the few unfinished or old)."""
        return [job for _, raw in self._scan(self.jobs) if keep(job := decode(raw, Job))]

    def delete_job(self, job_id: str) -> None:
        """Forget a job, its result, its claims' leftovers and its events."""
        job = self.get_job(job_id)
        if job is not None:
            self._unindex("tasks", job.owner, job.created_at, job.id)
        last = self.last_event(job_id)
        for seq in range(1, last + 1):
            self.events.delete_data(f"{job_id}:{seq}")
        self.events.delete_counter(job_id)
        self.results.delete_data(job_id)
        self.jobs.delete_data(job_id)
        self.summaries.delete_data(job_id)

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

    def put_file(
        self, meta: FileRecord, content: bytes, quota: tuple[int, int] | None = None
    ) -> None:
        """Store a file. `quota` (per key, in total): raise QuotaExceeded instead when the
        file would pass either; the usage counters are reserved atomically first, so
        two uploads at once cannot both pass. Without `quota` (a batch's output) the
        file is counted but never refused."""
        size = len(content)
        mine = self.count(_usage_key(meta.owner), size)
        total = self.count(TOTAL_USAGE, size)
        if quota is not None and (mine > quota[0] or total > quota[1]):
            self.count(_usage_key(meta.owner), -size)
            self.count(TOTAL_USAGE, -size)
            if mine > quota[0]:
                raise QuotaExceeded("key", quota[0], mine - size)
            raise QuotaExceeded("total", quota[1], total - size)
        for n, start in enumerate(range(0, size, FILE_CHUNK)):
            self.put_file_piece(meta.id, n, content[start : start + FILE_CHUNK])
        self._list_file(meta)

    def put_file_piece(self, file_id: str, n: int, piece: bytes) -> None:
        """Write piece `n` of a file being made (`FILE_CHUNK` bytes, the last one less);
        `finish_file` then lists it."""
        self.files.put_data(f"data:{file_id}:{n}", piece)

    def finish_file(self, meta: FileRecord) -> None:
        """List a file whose pieces `put_file_piece` wrote, counted in its owner's usage
        (never refused: a batch's output)."""
        self.count(_usage_key(meta.owner), meta.bytes)
        self.count(TOTAL_USAGE, meta.bytes)
        self._list_file(meta)

    def _list_file(self, meta: FileRecord) -> None:
        self._index("files", meta.owner, meta.created_at, meta.id)
        self.files.put_data("meta:" + meta.id, encode(meta))

    def get_file(self, file_id: str) -> FileRecord | None:
        raw = self.files.peek_data("meta:" + file_id)
        return None if raw is EmptyData else decode(raw, FileRecord)

    def file_content(self, file_id: str) -> bytes | None:
        """A file's whole content (a batch's input, audio to transcribe); None if none."""
        meta = self.get_file(file_id)
        if meta is None:
            return None
        return b"".join(self.file_piece(file_id, n) for n in range(self.file_pieces(meta)))

    def file_pieces(self, meta: FileRecord) -> int:
        """How many pieces `file_piece` gives for the file (a file stored before pieces:
        one)."""
        if self.files.has_data_for_key("data:" + meta.id):
            return 1
        return -(-meta.bytes // FILE_CHUNK)

    def file_piece(self, file_id: str, n: int) -> bytes:
        """Piece `n` of a file's content (b"" once it is gone)."""
        raw = self.files.peek_data(f"data:{file_id}:{n}")
        if raw is EmptyData and n == 0:
            raw = self.files.peek_data("data:" + file_id)  # stored before pieces
        return b"" if raw is EmptyData else bytes(raw)

    def get_files(self, ids: list[str]) -> dict[str, FileRecord]:
        """The metadata of those of `ids` that exist (never their bytes)."""
        found = self.files.peek_many(["meta:" + i for i in ids]) if ids else {}
        return {
            (k.decode() if isinstance(k, bytes) else k)[5:]: decode(v, FileRecord)
            for k, v in found.items()
        }

    def delete_file(self, file_id: str) -> bool:
        meta = self.get_file(file_id)
        if meta is not None:
            self._unindex("files", meta.owner, meta.created_at, meta.id)
        self.files.delete_data("data:" + file_id)
        for n in range(-(-meta.bytes // FILE_CHUNK) if meta is not None else 0):
            self.files.delete_data(f"data:{file_id}:{n}")
        gone = bool(self.files.delete_data("meta:" + file_id))
        if gone and meta is not None:  # only the one caller that deleted it uncounts it
            self.count(_usage_key(meta.owner), -meta.bytes)
            self.count(TOTAL_USAGE, -meta.bytes)
        return gone

    def file_usage(self, owner: str | None) -> tuple[int, int]:
        """Bytes of files kept for `owner`, and for everyone."""
        return self.count(_usage_key(owner), 0), self.count(TOTAL_USAGE, 0)

    def sweep_files(self, now: float, chunk: int = 500) -> int:
        """Delete the files expired at `now`, a chunk of metadata at a time. Returns how
        many."""
        gone = 0
        cursor: str | None = None
        while True:
            found, cursor = self.list_page(
                "files", None, cursor, chunk, lambda f: f.expired(now), budget=chunk * 10
            )
            for meta in found:
                gone += self.delete_file(meta.id)
            if cursor is None:
                return gone

    # -- batches (records in the files namespace) -------------------------------

    def put_batch(self, batch: BatchRecord) -> None:
        self._index("batches", batch.owner, batch.created_at, batch.id)
        self.files.put_data("batch:" + batch.id, encode(batch))

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        raw = self.files.peek_data("batch:" + batch_id)
        return None if raw is EmptyData else decode(raw, BatchRecord)

    def get_batches(self, ids: list[str]) -> dict[str, BatchListed]:
        """Those of `ids` that exist, without their job ids, read a few at a time (a
        stored batch holds up to ``HOMELAB_MAX_BATCH_LINES`` ids)."""
        out: dict[str, BatchListed] = {}
        for start in range(0, len(ids), 16):
            found = self.files.peek_many(["batch:" + i for i in ids[start : start + 16]])
            for key, raw in found.items():
                out[(key.decode() if isinstance(key, bytes) else key)[6:]] = decode(
                    raw, BatchListed
                )
        return out

    # -- the listing index (keyset pages, newest first) ------------------------

    @staticmethod
    def _lists(kind: str, owner: str | None) -> tuple[str, str]:
        """The two lists a record is in: everyone's (an admin's view) and its owner's."""
        return f"{kind}\x1fall", (f"{kind}\x1fnone" if owner is None else f"{kind}\x1fo:{owner}")

    @staticmethod
    def sort_key(created_at: float, record_id: str) -> str:
        """A record's place in its lists: creation time (microseconds), then its id."""
        return f"{round(created_at * 1_000_000):017d}:{record_id}"

    def _index(self, kind: str, owner: str | None, created_at: float, record_id: str) -> None:
        key = self.sort_key(created_at, record_id)
        for name in self._lists(kind, owner):
            if self.shared:
                self.index.conn.zadd("homelab_index:" + name, {key: 0})
            else:
                self.index.put_data(f"{name}\x1f{key}", b"")

    def _unindex(self, kind: str, owner: str | None, created_at: float, record_id: str) -> None:
        key = self.sort_key(created_at, record_id)
        for name in self._lists(kind, owner):
            if self.shared:
                self.index.conn.zrem("homelab_index:" + name, key)
            else:
                self.index.delete_data(f"{name}\x1f{key}")

    def page(self, kind: str, owner: str | None, before: str | None, limit: int) -> list[str]:
        """Up to `limit` sort keys of list (`kind`, `owner`; None: everyone's), newest
        first, each older than `before` (a sort key; None: from the newest). Reads
        only the index: one range query (SQLite ``ORDER BY key DESC LIMIT``, Redis
        ``ZREVRANGEBYLEX``), whatever the list's length."""
        name = f"{kind}\x1fall" if owner is None else self._lists(kind, owner)[1]
        if self.shared:
            top = "(" + before if before else "+"
            keys = self.index.conn.zrevrangebylex(
                "homelab_index:" + name, top, "-", start=0, num=limit
            )
            return [k.decode() if isinstance(k, bytes) else k for k in keys]
        low, high = name + "\x1f", name + "\x1f" + (before if before else "\x7f")
        rows = self.index.sql(
            "SELECT key FROM kv WHERE queue = ? AND key > ? AND key < ? ORDER BY key DESC LIMIT ?",
            (self.index.name, low, high, limit),
            results=True,
        )
        return [row[0][len(low) :] for row in rows]

    def list_page(
        self,
        kind: str,
        owner: str | None,
        before: str | None,
        limit: int,
        keep: Callable[[Any], bool] | None = None,
        budget: int = 5000,
    ) -> tuple[list[Any], str | None]:
        """One page of list (`kind`, `owner`), newest first, after the sort key `before`:
        up to `limit` records (`keep`: only those it passes), and the cursor of the next
        page (the sort key of the last record looked at; None at the list's end). Looks
        at most `budget` index entries, so a filter that matches little still ends; the
        records are read by id, a chunk at a time (never a whole namespace)."""
        load: Callable[[list[str]], Mapping[str, Any]]
        if kind == "tasks":
            load = self.get_summaries
        else:
            load = self.get_files if kind == "files" else self.get_batches
        out: list[Any] = []
        cursor = before
        looked = 0
        while True:
            want = limit - len(out)
            chunk = want + 1 if keep is None else min(max(want * 2, 100), 500)
            keys = self.page(kind, owner, cursor, chunk)
            found = load([k.split(":", 1)[1] for k in keys])
            for n, key in enumerate(keys):
                if len(out) == limit:
                    return out, cursor  # more keys follow this page
                looked += 1
                cursor = key
                record = found.get(key.split(":", 1)[1])
                if record is not None and (keep is None or keep(record)):
                    out.append(record)
                if looked >= budget and n + 1 < len(keys):
                    return out, cursor
            if len(keys) < chunk:
                return out, None  # the list's end
            if looked >= budget:
                return out, cursor

    def find(self, kind: str, record_id: str) -> Job | FileRecord | BatchRecord | None:
        """The task, file's metadata or batch with that id."""
        if kind == "tasks":
            return self.get_job(record_id)
        return self.get_file(record_id) if kind == "files" else self.get_batch(record_id)

    def list_size(self, kind: str, owner: str | None) -> int:
        """How many records list (`kind`, `owner`) holds, counted in the index."""
        name = f"{kind}\x1fall" if owner is None else self._lists(kind, owner)[1]
        if self.shared:
            return int(self.index.conn.zcard("homelab_index:" + name))
        low = name + "\x1f"
        rows = self.index.sql(
            "SELECT COUNT(*) FROM kv WHERE queue = ? AND key > ? AND key < ?",
            (self.index.name, low, low + "\x7f"),
            results=True,
        )
        return int(rows[0][0])

    def _scan(self, storage: BaseStorage, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        """(key, value) of a namespace's keys starting with `prefix`, a few hundred at a
        time (never the whole namespace in memory)."""
        if self.shared:
            for key, value in storage.conn.hscan_iter(storage.result_key, prefix + "*", 500):
                yield (key.decode() if isinstance(key, bytes) else key), bytes(value)
            return
        after = prefix
        while True:
            rows = storage.sql(
                "SELECT key, value FROM kv WHERE queue = ? AND key > ? AND key < ? "
                "ORDER BY key LIMIT 500",
                (storage.name, after, prefix + "\x7f"),
                results=True,
            )
            yield from ((k, bytes(v)) for k, v in rows)
            if len(rows) < 500:
                return
            after = rows[-1][0]

    def _backfill_index(self) -> None:
        """Index records written before the index existed, and sum up jobs written
        before summaries did (once per store each)."""
        if self.index.peek_data("summaries-v1") is EmptyData:
            for job_id, raw in self._scan(self.jobs):
                if self.summaries.peek_data(job_id) is EmptyData:
                    self.summaries.put_data(job_id, encode(JobSummary.of(decode(raw, Job))))
            self.index.put_data("summaries-v1", b"1")
        if self.index.peek_data("indexed-v1") is not EmptyData:
            return
        for _, raw in self._scan(self.jobs):
            job = decode(raw, Job)
            self._index("tasks", job.owner, job.created_at, job.id)
        for _, raw in self._scan(self.files, "meta:"):
            meta = decode(raw, FileRecord)
            self._index("files", meta.owner, meta.created_at, meta.id)
            self.count(_usage_key(meta.owner), meta.bytes)
            self.count(TOTAL_USAGE, meta.bytes)
        for _, raw in self._scan(self.files, "batch:"):
            batch = decode(raw, BatchRecord)
            self._index("batches", batch.owner, batch.created_at, batch.id)
        self.index.put_data("indexed-v1", b"1")

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
        self.get_summaries = _threaded(store.get_summaries)
        self.jobs_where = _threaded(store.jobs_where)
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
        self.put_file_piece = _threaded(store.put_file_piece)
        self.finish_file = _threaded(store.finish_file)
        self.get_file = _threaded(store.get_file)
        self.file_content = _threaded(store.file_content)
        self.file_pieces = _threaded(store.file_pieces)
        self.file_piece = _threaded(store.file_piece)
        self.get_files = _threaded(store.get_files)
        self.file_usage = _threaded(store.file_usage)
        self.sweep_files = _threaded(store.sweep_files)
        self.delete_file = _threaded(store.delete_file)
        self.put_batch = _threaded(store.put_batch)
        self.get_batch = _threaded(store.get_batch)
        self.get_batches = _threaded(store.get_batches)
        self.page = _threaded(store.page)
        self.list_size = _threaded(store.list_size)
        self.list_page = _threaded(store.list_page)
        self.find = _threaded(store.find)
        self.count = _threaded(store.count)
        self.lock_once = _threaded(store.lock_once)
