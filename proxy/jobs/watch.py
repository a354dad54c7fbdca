"""One watcher per task, fanning its events out to every `/stream` of it (`wire.fanout`).

A stream no longer reads the store on its own: the first `/stream/{taskId}` of a task on
this proxy starts a `TaskWatcher`, which reads the task's new events from the store (woken
at once by this proxy's `Dispatcher.emit`, else every `POLL` seconds for another proxy's
events on a shared Redis store) and publishes each once, with the waiting task's place in
line, to a `wire.fanout.Fanout`; every stream of the task subscribes to it. The last
stream to leave stops the watcher. A hundred streams of one task cost one store read per
event, not a hundred per poll.

A stream first replays the stored events after its `Last-Event-ID` from the store (its
own bounded reads, once), then follows the fan-out, skipping what it already sent; a
stream that fell so far behind that the fan-out dropped its oldest items replays the gap
from the store. Streams per key are capped (``HOMELAB_MAX_STREAMS_PER_KEY``, 429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.jobs.records import Event, Position
from proxy.jobs.state import TaskState
from proxy.jobs.store import AsyncJobStore
from wire.fanout import Fanout, Subscription

if TYPE_CHECKING:
    from proxy.jobs.dispatcher import Dispatcher

log = logging.getLogger("proxy.jobs.watch")

POLL = 0.25
"""Seconds between a watcher's store reads when no local notification comes (events
written by another proxy on a shared store)."""
GAP_GRACE = 2.0
"""An event id handed out but never written (its writer died) is skipped after this."""
QUEUE = 1024
"""Items a stream may fall behind the watcher by before it replays from the store."""


@dataclass(frozen=True)
class Stored:
    """A stored event, with its id."""

    seq: int
    event: Event


Item = Stored | Position
"""What a watcher publishes: stored events, and the waiting task's place in line."""


class TaskWatcher:
    """Reads one task's events from the store and publishes them to its `fanout`."""

    def __init__(self, watchers: TaskWatchers, job_id: str, after: int) -> None:
        self.watchers, self.job_id = watchers, job_id
        self.fanout: Fanout[Item] = Fanout(queue_size=QUEUE)
        self.last = after
        self.task: asyncio.Task[None] | None = None
        self.position: Position | None = None
        """The waiting task's place in line, as last published (None: not waiting)."""

    async def run(self) -> None:
        jobs = self.watchers.jobs
        store: AsyncJobStore = jobs.store
        job_id = self.job_id
        wake = jobs.listen(job_id)
        stuck_since: float | None = None
        last_position: Position | None = None
        try:
            while True:
                wake.clear()
                events = await store.events_after(job_id, self.last)
                for seq, ev in events:
                    self.last = seq
                    self.fanout.publish(Stored(seq, ev))
                    if ev.event == "end":
                        return
                if events:
                    stuck_since = None
                    continue
                if await store.last_event(job_id) > self.last:
                    now = time.monotonic()
                    stuck_since = stuck_since or now
                    if now - stuck_since > GAP_GRACE:
                        self.last += 1  # a writer died between numbering and writing: skip
                        stuck_since = None
                        continue
                job = await store.get_job(job_id)
                if job is None:
                    return  # expired meanwhile
                if job.state is TaskState.PENDING:
                    position = await jobs.position(job)
                    if position != last_position:
                        last_position = self.position = position
                        self.fanout.publish(position)
                else:
                    self.position = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the watcher of task %s failed; its streams end", job_id)
        finally:
            jobs.unlisten(job_id, wake)
            self.fanout.close()  # streams drain what is queued, then replay and end
            self.watchers._gone(self)


class TaskWatchers:
    """The watchers of this proxy's streams, one per task, and the streams per key."""

    def __init__(self, jobs: Dispatcher) -> None:
        self.jobs = jobs
        self._watchers: dict[str, TaskWatcher] = {}
        self._per_key: dict[str, int] = {}

    @property
    def watching(self) -> int:
        """Watchers running now (one per task with a stream open here)."""
        return len(self._watchers)

    @property
    def streams(self) -> int:
        """Streams open now, all keys."""
        return sum(self._per_key.values())

    def open(self, key: str, cap: int) -> bool:
        """Count a stream of `key` in; False when `cap` of its streams are open already."""
        if self._per_key.get(key, 0) >= cap:
            return False
        self._per_key[key] = self._per_key.get(key, 0) + 1
        return True

    def close(self, key: str) -> None:
        left = self._per_key.get(key, 0) - 1
        if left > 0:
            self._per_key[key] = left
        else:
            self._per_key.pop(key, None)

    def subscribe(self, job_id: str, after: int) -> Subscription[Item]:
        """A subscription to the task's watcher, started if none runs. Everything stored
        after the watcher's own start point reaches it; the caller replays from the
        store what came before (`Stored.seq` tells what to skip)."""
        watcher = self._watchers.get(job_id)
        if watcher is None:
            watcher = self._watchers[job_id] = TaskWatcher(self, job_id, after)
            sub = watcher.fanout.subscribe()
            watcher.task = asyncio.create_task(watcher.run(), name=f"watch-{job_id}")
            return sub
        return watcher.fanout.subscribe()

    def position(self, job_id: str) -> Position | None:
        """The task's place in line as its watcher last saw it (for a stream that joins
        after it was published)."""
        watcher = self._watchers.get(job_id)
        return None if watcher is None else watcher.position

    def unsubscribe(self, job_id: str, sub: Subscription[Item]) -> None:
        """Leave; the last subscriber to leave stops the watcher."""
        sub.close()
        watcher = self._watchers.get(job_id)
        if watcher is not None and watcher.fanout.subscriber_count == 0:
            self._watchers.pop(job_id, None)
            if watcher.task is not None:
                watcher.task.cancel()

    def _gone(self, watcher: TaskWatcher) -> None:
        if self._watchers.get(watcher.job_id) is watcher:
            del self._watchers[watcher.job_id]
